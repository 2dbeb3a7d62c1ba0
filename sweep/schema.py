"""The Arrow schemas of a sweep's Parquet files: the contract between the sweep and the analysis.

`runs.parquet`: one row per cell (trial). `epochs.parquet`: one row per (cell, stage, epoch).
Both are typed explicitly: pandas alone would write all-None columns as Arrow `null` and strings as
`large_string` (see RAY.md), which would make two sweeps' files disagree.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from trainables.config import TrialConfig
from trainables.epoch_schema import EPOCH_ROW_SCHEMA

SCHEMA_VERSION = 1

_PY_TO_ARROW = {
    "str": pa.string(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(),
    "str | None": pa.string(), "int | None": pa.int64(), "float | None": pa.float64(),
    "tuple[str, ...]": pa.string(),  # 'faithful' is stored comma-joined ("" = none)
}


def config_fields() -> list[pa.Field]:
    hints = {f.name: f.type for f in dataclasses.fields(TrialConfig)}
    return [pa.field(name, _PY_TO_ARROW[str(t)]) for name, t in hints.items()]


# Status of a cell: pending (not started), running (started, not finished: the sweep was interrupted),
# finished, failed (error holds the message).
RUN_STATUSES = ("pending", "running", "finished", "failed")

_METRIC_SUMMARY = ("top1", "top1_raw", "top5", "many", "medium", "few", "many_raw", "medium_raw", "few_raw",
                   "prior_kl", "pseudo_label_acc", "mmc")

RUNS_SCHEMA = pa.schema(
    [pa.field("config_hash", pa.string(), nullable=False), pa.field("trial_id", pa.string()),
     pa.field("sweep", pa.string()), pa.field("label", pa.string())]
    + config_fields()
    + [
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("epochs_done", pa.int64()),
        pa.field("epochs_total", pa.int64()),
    ]
    + [pa.field(f"final_{m}", pa.float64()) for m in _METRIC_SUMMARY]
    + [
        pa.field("best_top1", pa.float64()),
        pa.field("best_epoch", pa.int64()),
        pa.field("class_counts", pa.list_(pa.int64())),
        pa.field("final_prior_est", pa.list_(pa.float64())),
        pa.field("final_per_class_acc", pa.list_(pa.float64())),
        pa.field("wall_s", pa.float64()),
        pa.field("images_per_s", pa.float64()),
        pa.field("num_workers_per_trial", pa.int64()),
        pa.field("device", pa.string()),
        pa.field("package_version", pa.string()),
        pa.field("git_rev", pa.string()),
        pa.field("started_at", pa.timestamp("ms", tz="UTC")),
        pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
        pa.field("schema_version", pa.int64()),
    ]
)

EPOCHS_SCHEMA = EPOCH_ROW_SCHEMA  # one row per (cell, stage, epoch); defined beside the run's own record

# Stage names in epochs.parquet: 'train' for the CORR family and SoLar's final stage, 'estimate' for SoLar's
# prior pre-estimation stage (its epochs restart at 0 in 'train').
STAGES = ("estimate", "train")


def describe(schema: pa.Schema) -> str:
    return "\n".join(f"{f.name}: {f.type}" for f in schema)


def _check_hints() -> None:  # fail at import if TrialConfig grows a type the mapping does not know
    for f in dataclasses.fields(TrialConfig):
        if str(f.type) not in _PY_TO_ARROW:
            raise TypeError(f"TrialConfig.{f.name}: no Arrow type for {f.type!r}")


_check_hints()
