"""A sweep's records and its Parquet files.

Layout of a sweep folder (local path or any URI pyarrow opens):
  sweep.json                  the cells and settings of the sweep (what --resume reads back)
  records/epochs/*.jsonl      append-only per-epoch rows, written in chunks by the driver as Tune reports them
  records/events/*.jsonl      append-only trial events: start, finish, error (with the message)
  train/cell-<hash>/          each cell's Ray Train run: its checkpoints (with the run's own epochs.parquet)
  tune-<time>/                Tune's experiment folder of each invocation
  runs.parquet, epochs.parquet   the results, rebuilt from the above and replaced atomically

Chunks are whole files, never appended to in place, so the record works on object stores too; rows are
de-duplicated by (config_hash, stage, epoch), the latest write winning. A resumed cell re-reports the epochs after its
checkpoint, and a cell whose reports never reached the driver still has its history in its last checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import trainables
from trainables.config import TrialConfig
from trainables.data.longtail import class_counts, shuffle_counts
from trainables.epoch_schema import epoch_row_schema
from trainables.history import epochs_table

from .schema import SCHEMA_VERSION, runs_schema

EPOCH_COLUMNS = [f.name for f in epoch_row_schema()]


class SweepStore:
    """The sweep folder on a pyarrow filesystem (local or remote)."""

    def __init__(self, storage: str, name: str):
        if "://" in storage:
            self.fs, root = pafs.FileSystem.from_uri(storage)
            self.uri = storage.rstrip("/") + "/" + name
        else:
            local = Path(storage).expanduser().resolve()
            self.fs, root = pafs.LocalFileSystem(), str(local)
            self.uri = str(local / name)
        self.root = root.rstrip("/") + "/" + name
        self._counter = 0  # with the pid and the clock, makes chunk names unique

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Whole-file write through a temporary name and a move: readers never see half a file."""
        final = self.path(rel)
        parent = final.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.tmp-{os.getpid()}-{time.time_ns()}-{rel.rsplit('/', 1)[-1]}"
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(data)
        self.fs.move(tmp, final)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return fh.read()

    def list_files(self, rel: str, suffix: str = "") -> list[str]:
        base = self.path(rel)
        if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
                      and "/.tmp-" not in i.path)

    def append_records(self, kind: str, rows: list[dict]) -> None:
        """One new chunk file under records/<kind>/ holding `rows` as JSON lines."""
        if not rows:
            return
        self._counter += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._counter:06d}.jsonl"
        blob = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows).encode()
        self.write_bytes(f"records/{kind}/{name}", blob)

    def read_records(self, kind: str) -> list[dict]:
        rows = []
        for path in self.list_files(f"records/{kind}", ".jsonl"):
            with self.fs.open_input_stream(path) as fh:
                for line in fh.read().decode().splitlines():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a torn line can only come from a foreign writer; skip it
        return rows


def _json_default(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# Sweep metadata


def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class GridMismatch(ValueError):
    """A sweep name already holds a different grid."""


def grid_difference(saved: list[dict], cells: list[TrialConfig]) -> str | None:
    """None if `cells` are cells of the saved grid (all or some of them); else what differs: cell counts and, per
    config field, the values only one side has."""
    saved_cfgs = [TrialConfig.from_dict(c) for c in saved]
    saved_hashes = {c.config_hash for c in saved_cfgs}
    new = [c for c in cells if c.config_hash not in saved_hashes]
    if not new:
        return None
    fields = []
    for name in TrialConfig.__dataclass_fields__:
        before = {repr(getattr(c, name)) for c in saved_cfgs}
        after = {repr(getattr(c, name)) for c in cells}
        if before != after:
            fields.append(f"{name}: saved {', '.join(sorted(before))}; now {', '.join(sorted(after))}")
    return (f"{len(new)} of this grid's {len(cells)} cells are not among the saved {len(saved_cfgs)} "
            f"(e.g. {new[0].describe()} [{new[0].config_hash}])" + ("; " + " | ".join(fields) if fields else ""))


def write_sweep_manifest(store: SweepStore, cells: list[TrialConfig], settings: dict, extend: bool = False) -> dict:
    """Create sweep.json, or check `cells` against it: a different grid under the same name is refused (its cells
    would sit beside the old ones, with labels that clash) unless `extend` adds them on purpose."""
    if store.exists("sweep.json") and not extend:
        old = json.loads(store.read_bytes("sweep.json"))
        diff = grid_difference(old.get("cells", []), cells)
        if diff:
            raise GridMismatch(f"sweep {store.uri} holds a different grid: {diff}. To run this grid separately "
                               "choose another --name; to add its cells to this sweep on purpose pass --extend")
    manifest = {
        "cells": [c.to_dict() for c in cells],
        "settings": settings,
        "package_version": trainables.__version__,
        "git_rev": git_revision(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if store.exists("sweep.json"):  # keep the first creation time and any cells of earlier invocations
        old = json.loads(store.read_bytes("sweep.json"))
        manifest["created_at"] = old.get("created_at", manifest["created_at"])
        known = {TrialConfig.from_dict(c).config_hash for c in manifest["cells"]}
        extra = [c for c in old.get("cells", []) if TrialConfig.from_dict(c).config_hash not in known]
        manifest["cells"] = extra + manifest["cells"]
    store.write_bytes("sweep.json", json.dumps(manifest, indent=1).encode())
    return manifest


def read_sweep_manifest(store: SweepStore) -> dict:
    if not store.exists("sweep.json"):
        raise FileNotFoundError(f"no sweep at {store.uri} (sweep.json is missing): nothing to resume")
    return json.loads(store.read_bytes("sweep.json"))


# ---------------------------------------------------------------------------------------------------------------
# Building the tables


def total_epochs(cfg: TrialConfig) -> int:
    return cfg.epochs + cfg.spec.extra_epochs(cfg)


def epoch_step(cfg: TrialConfig, stage: str, epoch: int) -> int:
    """Epochs of the cell done after epoch `epoch` of `stage` (1-based; SoLar trains after its estimation stage):
    the trackers' step, the same for a fresh and a resumed cell."""
    # the method's extra epochs (SoLar's estimation stage) all come before its 'train' stage
    return epoch + 1 + (cfg.spec.extra_epochs(cfg) if stage == "train" else 0)


def training_counts(cfg: TrialConfig) -> list[int]:
    """Per-class training counts of a cell, from its config alone (the NU shuffle as the data builder keys it)."""
    counts = class_counts(cfg.head_class_size, cfg.num_classes, cfg.rho)
    return counts if cfg.nu_shuffle_seed is None else shuffle_counts(counts, cfg.nu_shuffle_seed)


def checkpoint_histories(store: SweepStore, hashes: Iterable[str]) -> list[dict]:
    """Rows from each cell's newest Train checkpoint (its epochs.parquet): the fallback for reports lost in transit."""
    rows = []
    for h in hashes:
        files = [p for p in store.list_files(f"train/cell-{h}", "epochs.parquet") if "/checkpoint_" in p]
        if not files:
            continue
        newest = max(files, key=lambda p: p.rsplit("/checkpoint_", 1)[1])
        with store.fs.open_input_file(newest) as fh:
            table = pq.read_table(fh)
        for row in table.to_pylist():
            row["_t"] = 0  # older than any live report
            rows.append(row)
    return rows


def merge_epoch_rows(rows: list[dict]) -> list[dict]:
    """De-duplicate by (config_hash, stage, epoch), keeping the latest record."""
    latest: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda r: r.get("_t", 0)):
        latest[(row["config_hash"], row["stage"], int(row["epoch"]))] = row
    stage_order = {"estimate": 0, "train": 1}
    return sorted(latest.values(), key=lambda r: (r["config_hash"], stage_order.get(r["stage"], 9), r["epoch"]))


def _ts(value) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(float(value), tz=UTC).replace(microsecond=0)


def runs_table(cells: list[TrialConfig], epoch_rows: list[dict], events: list[dict], manifest: dict) -> pa.Table:
    by_hash: dict[str, list[dict]] = {}
    for row in epoch_rows:
        by_hash.setdefault(row["config_hash"], []).append(row)
    ev_by_hash: dict[str, list[dict]] = {}
    for ev in sorted(events, key=lambda e: e.get("time", 0)):
        ev_by_hash.setdefault(ev["config_hash"], []).append(ev)
    settings = manifest.get("settings", {})
    out = []
    for cfg in cells:
        h = cfg.config_hash
        rows = by_hash.get(h, [])
        evs = ev_by_hash.get(h, [])
        done = len(rows)
        total = total_epochs(cfg)
        train_rows = [r for r in rows if r["stage"] == "train"]
        last_event = evs[-1]["event"] if evs else None
        if done >= total:
            status = "finished"
        elif last_event == "error":
            status = "failed"
        elif done > 0 or last_event in ("start", "finish"):
            status = "running"
        else:
            status = "pending"
        error = next((e.get("error") for e in reversed(evs) if e["event"] == "error"), None) \
            if status == "failed" else None
        final = train_rows[-1] if train_rows else {}
        best = max(train_rows, key=lambda r: r["top1"]) if train_rows else {}
        starts = [e["time"] for e in evs if e["event"] == "start"]
        finishes = [e["time"] for e in evs if e["event"] == "finish"]
        record = {
            "config_hash": h, "trial_id": next((e.get("trial_id") for e in reversed(evs)), None),
            "sweep": manifest.get("name"), "label": cfg.describe(),
            **{k: (",".join(v) if k == "faithful" else v) for k, v in cfg.to_dict().items()},
            "status": status, "error": error, "epochs_done": done, "epochs_total": total,
            **{f"final_{m}": final.get(m) for m in ("top1", "top1_raw", "top5", "many", "medium", "few",
                                                     "many_raw", "medium_raw", "few_raw", "prior_kl",
                                                     "pseudo_label_acc", "mmc")},
            "best_top1": best.get("top1"), "best_epoch": best.get("epoch"),
            "class_counts": training_counts(cfg),
            "final_prior_est": final.get("prior_est"), "final_per_class_acc": final.get("per_class_acc"),
            "wall_s": sum((r.get("epoch_s") or 0) + (r.get("eval_s") or 0) for r in rows) if rows else None,
            "images_per_s": (sum(r["images_per_s"] for r in rows) / len(rows)) if rows else None,
            "num_workers_per_trial": settings.get("workers_per_trial"),
            "device": settings.get("device"),
            "nodes": _nodes(rows),
            "package_version": manifest.get("package_version"), "git_rev": manifest.get("git_rev"),
            "started_at": _ts(min(starts)) if starts else None,
            "finished_at": _ts(max(finishes)) if finishes and status == "finished" else None,
            "schema_version": SCHEMA_VERSION,
        }
        out.append(record)
    schema = runs_schema()
    columns = {f.name: [r.get(f.name) for r in out] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def _nodes(rows: list[dict]) -> list[str] | None:
    """The Ray nodes ('ip/node-id') a cell's epochs ran on, in order of first use (more than one if it moved)."""
    seen = list(dict.fromkeys(r["node"] for r in rows if r.get("node")))
    return seen or None


def write_results(store: SweepStore, cells: list[TrialConfig] | None = None) -> tuple[pa.Table, pa.Table]:
    """Rebuild runs.parquet and epochs.parquet from the records (and checkpoints) and replace them atomically."""
    manifest = read_sweep_manifest(store)
    if cells is None:
        cells = [TrialConfig.from_dict(c) for c in manifest["cells"]]
    wanted = {c.config_hash for c in cells}
    rows = [r for r in store.read_records("epochs") if r.get("config_hash") in wanted]
    rows += checkpoint_histories(store, wanted)
    merged = merge_epoch_rows(rows)
    events = [e for e in store.read_records("events") if e.get("config_hash") in wanted]
    runs = runs_table(cells, merged, events, manifest)
    epochs = epochs_table(merged)
    for table, name in ((runs, "runs.parquet"), (epochs, "epochs.parquet")):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.write_bytes(name, buf.getvalue())
    return runs, epochs


def finished_hashes(store: SweepStore, cells: list[TrialConfig]) -> set[str]:
    """Cells whose every epoch is recorded (in the records or the last checkpoint)."""
    if not store.exists("records") and not store.exists("train"):
        return set()
    wanted = {c.config_hash for c in cells}
    rows = [r for r in store.read_records("epochs") if r.get("config_hash") in wanted]
    rows += checkpoint_histories(store, wanted)
    merged = merge_epoch_rows(rows)
    counts: dict[str, int] = {}
    for r in merged:
        counts[r["config_hash"]] = counts.get(r["config_hash"], 0) + 1
    return {c.config_hash for c in cells if counts.get(c.config_hash, 0) >= total_epochs(c)}

