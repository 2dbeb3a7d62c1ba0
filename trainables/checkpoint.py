"""Self-describing checkpoints: config, position, and every piece of state needed to continue bit for bit.

A checkpoint holds the model, the optimiser and schedule, the method's state (W, mu, ...), the metric history and the
config that produced them, so a run can be resumed or inspected without the code that wrote it. Randomness needs no
saved generator state: every draw is keyed on (seed, epoch, step or sample) (see data/loaders.py, methods/mixup.py),
so the position alone determines what comes next; the scheme is recorded in the file for readers.

Checkpoints travel (shared storage, downloaded runs), so reading one must never run code: the payload holds only
tensors, dicts, lists, tuples, str/int/float/bool/None, and is read with `torch.load(weights_only=True)`, whose
unpickler refuses every other global. The previous checkpoint is kept beside the latest (checkpoint.prev.pt) so a
torn or corrupted latest file costs one checkpoint interval, not the run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

FORMAT = "records-sweep-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"
PREV_FILENAME = "checkpoint.prev.pt"
RNG_SCHEME = ("derived: batch order from (seed, epoch); augmentation from (seed, epoch, sample); mixup from "
              "(seed, epoch, step[, rank]); model init from seed")


class CheckpointError(ValueError):
    """No checkpoint of a run could be read; the message names the file(s) and why."""


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stray_temps(folder: Path) -> list[Path]:
    """Delete temporary files a killed writer left in a run folder (atomic_write_bytes' `.NAME.*.tmp`); only the
    run's single writer calls this, before it writes."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def save_checkpoint(path: Path, *, config: dict, config_hash: str, stage: str, epoch: int, model: dict,
                    optimizer: dict, scheduler: dict, method: dict, history: list[dict], extra: dict | None = None,
                    package_version: str = "", keep_prev: bool = True) -> None:
    """`epoch` is the number of epochs completed in `stage` (the next epoch to run). With keep_prev, the file being
    replaced becomes PREV_FILENAME beside it."""
    path = Path(path)
    payload = {
        "format": FORMAT, "version": VERSION, "saved_at": time.time(), "package_version": package_version,
        "config": config, "config_hash": config_hash, "stage": stage, "epoch": epoch,
        "model": model, "optimizer": optimizer, "scheduler": scheduler, "method": method,
        "history": history, "rng": RNG_SCHEME, "extra": extra or {},
    }

    def write(fh):
        torch.save(payload, fh)
        # the new file is complete on disk before the old one is demoted: at every instant one of the two loads
        fh.flush()
        os.fsync(fh.fileno())
        if keep_prev and path.is_file():
            os.replace(path, path.with_name(PREV_FILENAME))

    atomic_write_bytes(path, write)


def _load_failure(err: Exception) -> str:
    """One line on why torch.load refused a file. For a refused global, torch's own first line suggests retrying
    with weights_only=False, the one thing never to do with a file that names code: say what it named instead."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        named = next((line for line in lines[1:] if "global" in line.lower()), "a Python object")
        return (f"it refers to code or objects no {FORMAT} holds ({named.rstrip('.')}); nothing in it was run. "
                "Treat it as untrusted: do not open it with weights_only=False")
    return lines[0] if lines else type(err).__name__


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one checkpoint file; any failure is a CheckpointError naming the file. Never executes code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torn file, foreign pickle (refused global), not a torch file at all
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(err)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not the supported {VERSION}")
    return payload


def load_latest(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """Load `path`, or, if it does not load, the previous checkpoint beside it (with a warning); returns the payload
    and the file it came from. Raises CheckpointError naming every file tried when none loads."""
    path = Path(path)
    candidates = [path, path.with_name(PREV_FILENAME)]
    failures = []
    for i, candidate in enumerate(candidates):
        if i > 0 and not candidate.is_file():
            continue
        try:
            payload = load_checkpoint(candidate, map_location)
        except CheckpointError as err:
            failures.append(str(err))
            continue
        if failures:
            # printed, not warnings.warn: one plain line in the CLI's output and in the Ray worker's log
            print(f"warning: {failures[0]}; continuing from the previous checkpoint {candidate} instead "
                  f"(epoch {payload['epoch']} of stage '{payload['stage']}')", file=sys.stderr, flush=True)
        return payload, candidate
    raise CheckpointError("; ".join(failures) + f". Nothing in {path.parent} can be resumed: move the folder aside "
                          "and start the run again, or choose another --out")
