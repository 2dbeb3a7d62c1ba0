"""A run folder's own record: config.json and epochs.parquet (one row per epoch, explicit Arrow schema)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .checkpoint import atomic_write_bytes
from .metrics import EPOCH_LISTS, EPOCH_SCALARS

# SoLar-only columns (null for the CORR family).
SOLAR_SCALARS = {
    "sinkhorn_row_residual": "max |row sum - 1| of the last Sinkhorn plan of the epoch",
    "sinkhorn_col_residual": "max |column sum - n r_k| / n of the last Sinkhorn plan of the epoch",
    "reliable_frac": "share of the epoch's samples selected as reliable",
}

EPOCH_ROW_SCHEMA = pa.schema(
    [pa.field("config_hash", pa.string(), nullable=False), pa.field("stage", pa.string(), nullable=False)]
    + [pa.field(name, pa.int64() if name == "epoch" else pa.float64()) for name in EPOCH_SCALARS]
    + [pa.field(name, pa.list_(pa.float64())) for name in EPOCH_LISTS]
    + [pa.field(name, pa.float64()) for name in SOLAR_SCALARS]
)


def epochs_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with the schema's keys; missing keys become null) -> a typed Arrow table."""
    columns = {f.name: [row.get(f.name) for row in rows] for f in EPOCH_ROW_SCHEMA}
    return pa.Table.from_pydict(columns, schema=EPOCH_ROW_SCHEMA)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    atomic_write_bytes(Path(path), lambda fh: pq.write_table(table, fh))


def write_run_files(out_dir: Path, config: dict, rows: list[dict]) -> None:
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "config.json", lambda fh: fh.write(json.dumps(config, indent=2).encode()))
    write_parquet_atomic(epochs_table(rows), out_dir / "epochs.parquet")
