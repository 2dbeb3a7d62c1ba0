"""The Arrow schemas of a sweep's Parquet files: the contract between the sweep and the analysis.

`runs.parquet`: one row per cell (trial). `epochs.parquet`: one row per (cell, stage, epoch).
Both are typed explicitly: pandas alone would write all-None columns as Arrow `null` and strings as
`large_string` (see RAY.md), which would make two sweeps' files disagree.
"""

from __future__ import annotations

import pyarrow as pa

from trainables.config import flat_fields
from trainables.epoch_schema import epoch_row_schema

SCHEMA_VERSION = 1

_PY_TO_ARROW = {
    "str": pa.string(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(),
    "str | None": pa.string(), "int | None": pa.int64(), "float | None": pa.float64(),
    "tuple[str, ...]": pa.string(),  # 'faithful' is stored comma-joined ("" = none)
}


def config_fields() -> list[pa.Field]:
    """One column per flat config key: the config's fields, then every registered method's parameters."""
    out = []
    for name, annotation in flat_fields():
        if annotation not in _PY_TO_ARROW:
            raise TypeError(f"config field {name}: no Arrow type for {annotation!r}")
        out.append(pa.field(name, _PY_TO_ARROW[annotation]))
    return out


# Status of a cell: pending (not started), running (started, not finished: the sweep was interrupted),
# finished, failed (error holds the message).
RUN_STATUSES = ("pending", "running", "finished", "failed")

_METRIC_SUMMARY = ("top1", "top1_raw", "top5", "many", "medium", "few", "many_raw", "medium_raw", "few_raw",
                   "prior_kl", "pseudo_label_acc", "mmc")

def runs_schema() -> pa.Schema:
    """runs.parquet's schema with the methods registered now (plug-ins add their parameter columns)."""
    return pa.schema(
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
            pa.field("nodes", pa.list_(pa.string())),  # Ray nodes ('ip/node-id') the cell ran on, in order
            pa.field("package_version", pa.string()),
            pa.field("git_rev", pa.string()),
            pa.field("started_at", pa.timestamp("ms", tz="UTC")),
            pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
            pa.field("schema_version", pa.int64()),
        ]
    )


RUNS_SCHEMA = runs_schema()  # as of import: built-in methods and those named in RECORDS_SWEEP_METHODS
EPOCHS_SCHEMA = epoch_row_schema()  # one row per (cell, stage, epoch); defined beside the run's own record

# Stage names in epochs.parquet: 'train' for the CORR family and SoLar's final stage, 'estimate' for SoLar's
# prior pre-estimation stage (its epochs restart at 0 in 'train').
STAGES = ("estimate", "train")


def describe(schema: pa.Schema) -> str:
    return "\n".join(f"{f.name}: {f.type}" for f in schema)
