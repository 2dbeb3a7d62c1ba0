"""A run folder's own record: config.json and epochs.parquet (one row per epoch, explicit Arrow schema)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .checkpoint import atomic_write_bytes
from .epoch_schema import epoch_row_schema


def epochs_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with the schema's keys; missing keys become null) -> a typed Arrow table."""
    schema = epoch_row_schema()
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    atomic_write_bytes(Path(path), lambda fh: pq.write_table(table, fh))


def write_run_files(out_dir: Path, config: dict, rows: list[dict]) -> None:
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "config.json", lambda fh: fh.write(json.dumps(config, indent=2).encode()))
    write_parquet_atomic(epochs_table(rows), out_dir / "epochs.parquet")
