"""Read one or several sweep folders (runs.parquet + epochs.parquet) into pandas, checked against sweep.schema.

Rules:
- A folder must hold `runs.parquet` and `epochs.parquet` (a file, or a folder of Parquet parts). Either one
  missing, or a file missing one of the columns analysis needs (`REQUIRED_RUNS`, `REQUIRED_EPOCHS`), raises
  `SweepLoadError` naming the file and the columns.
- Other schema columns that a file lacks (an older schema version) are added as typed nulls, and every
  schema column is cast to the schema's type, so sweeps written by different versions concatenate.
- The `sweep` column of both frames names the folder a row came from (unique across the folders loaded); the
  value the sweep recorded in runs.parquet is kept as `sweep_recorded`. Runs and epochs join on
  (`sweep`, `config_hash`).
"""

from __future__ import annotations

import os
import posixpath
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from sweep.schema import EPOCHS_SCHEMA, RUN_STATUSES, RUNS_SCHEMA, STAGES

RUNS_FILE = "runs.parquet"
EPOCHS_FILE = "epochs.parquet"

# What the tables and plots cannot do without; the rest of the schema is filled with nulls when absent.
REQUIRED_RUNS = ("config_hash", "status", "dataset", "nu", "rho", "q", "method", "records", "mixup", "oracle_la",
                 "seed", "epochs_done", "epochs_total", "final_top1", "best_top1")
REQUIRED_EPOCHS = ("config_hash", "stage", "epoch", "top1")


class SweepLoadError(ValueError):
    """A sweep folder or one of its files cannot be read as a sweep; the message names the file."""


@dataclass
class Sweep:
    """The two frames of one or more sweeps. Unpacks as `runs, epochs = load_sweep(...)`."""

    runs: pd.DataFrame
    epochs: pd.DataFrame
    sources: list[str]

    def __iter__(self) -> Iterator[pd.DataFrame]:
        return iter((self.runs, self.epochs))


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it: local paths, any URI pyarrow knows, else fsspec's."""
    if "://" not in location:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        pass
    try:
        import fsspec  # only needed for schemes pyarrow lacks (memory://, http://, ...)
    except ImportError as err:
        raise SweepLoadError(f"{location}: pyarrow does not know this URI scheme and fsspec is not installed") from err
    try:
        fs, path = fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as err:
        raise SweepLoadError(f"{location}: cannot open this URI: {err}") from err
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _join(location: str, name: str) -> str:
    return posixpath.join(location.rstrip("/"), name) if "://" in location else os.path.join(location, name)


def _read(fs: pafs.FileSystem, path: str, shown: str, schema: pa.Schema, required: Sequence[str]) -> pa.Table:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SweepLoadError(f"{shown}: not found (a sweep folder holds {RUNS_FILE} and {EPOCHS_FILE})")
    try:
        table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    except (pa.ArrowException, OSError) as err:
        raise SweepLoadError(f"{shown}: not a readable Parquet file: {err}") from err
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise SweepLoadError(f"{shown}: missing required column(s) {missing}; "
                             f"is this a sweep's {posixpath.basename(shown)}?")
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(table), field.type))
            continue
        i = table.schema.get_field_index(field.name)
        if table.schema.field(i).type != field.type:
            try:
                table = table.set_column(i, field, table.column(i).cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise SweepLoadError(f"{shown}: column {field.name!r} has type {table.schema.field(i).type}, "
                                     f"expected {field.type}: {err}") from err
    return table


def _check_values(df: pd.DataFrame, column: str, allowed: Sequence[str], shown: str) -> None:
    bad = sorted(set(df[column].dropna().astype(str)) - set(allowed))
    if bad:
        raise SweepLoadError(f"{shown}: unknown {column} value(s) {bad}; expected one of {list(allowed)}")


def _labels(locations: Sequence[str]) -> list[str]:
    """Short, unique names for the folders: the last path component, or the whole location on a clash."""
    short = [posixpath.basename(loc.replace("\\", "/").rstrip("/")) or loc for loc in locations]
    return [s if short.count(s) == 1 else loc for s, loc in zip(short, locations)]


def _load_one(location: str, label: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    fs, root = _filesystem(location)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise SweepLoadError(f"{location}: no such sweep folder")
    runs_t = _read(fs, _join(root, RUNS_FILE), _join(location, RUNS_FILE), RUNS_SCHEMA, REQUIRED_RUNS)
    epochs_t = _read(fs, _join(root, EPOCHS_FILE), _join(location, EPOCHS_FILE), EPOCHS_SCHEMA, REQUIRED_EPOCHS)
    runs, epochs = runs_t.to_pandas(), epochs_t.to_pandas()
    _check_values(runs, "status", RUN_STATUSES, _join(location, RUNS_FILE))
    _check_values(epochs, "stage", STAGES, _join(location, EPOCHS_FILE))
    runs = runs.rename(columns={"sweep": "sweep_recorded"})
    runs.insert(0, "sweep", label)
    epochs.insert(0, "sweep", label)
    return runs, epochs


def load_sweep(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> Sweep:
    """Load one sweep folder, or several (concatenated, told apart by the `sweep` column).

    `paths`: a local folder or any URI pyarrow or fsspec accepts (file://, s3://, gs://, memory://, ...).
    Raises SweepLoadError with the file and the reason when a folder is not a readable sweep.
    """
    locations = [os.fspath(paths)] if isinstance(paths, str | os.PathLike) else [os.fspath(p) for p in paths]
    if not locations:
        raise SweepLoadError("no sweep folder given")
    frames = [_load_one(loc, label) for loc, label in zip(locations, _labels(locations))]
    runs = pd.concat([r for r, _ in frames], ignore_index=True) if len(frames) > 1 else frames[0][0]
    epochs = pd.concat([e for _, e in frames], ignore_index=True) if len(frames) > 1 else frames[0][1]
    dup = runs[runs.duplicated(["sweep", "config_hash"], keep=False)]
    if len(dup):
        raise SweepLoadError(f"{dup['sweep'].iloc[0]}/{RUNS_FILE}: config_hash {dup['config_hash'].iloc[0]!r} "
                             "appears in more than one row")
    again = runs[(runs["status"] == "finished") & runs.duplicated("config_hash", keep=False)]
    if len(again):
        # The same cell finished in two folders would count its seed twice in a mean; say so, keep both.
        warnings.warn(f"{again['config_hash'].nunique()} config(s) finished in more than one sweep folder "
                      f"(e.g. {again['config_hash'].iloc[0]}); tables count each row; filter by `sweep` to avoid "
                      "counting a seed twice", stacklevel=2)
    return Sweep(runs=runs, epochs=epochs, sources=locations)



def read_manifest(location: str | os.PathLike) -> dict | None:
    """The sweep's own sweep.json (its cells and run settings), or None when the folder has none."""
    import json

    location = os.fspath(location)
    fs, root = _filesystem(location)
    path = _join(root, "sweep.json") if "://" not in location else root.rstrip("/") + "/sweep.json"
    try:
        with fs.open_input_stream(path) as fh:
            return json.loads(fh.read())
    except (FileNotFoundError, OSError, ValueError):
        return None
