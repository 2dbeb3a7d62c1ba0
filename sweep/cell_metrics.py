"""Each running cell's live epoch, top-1 and samples/s as Ray application metrics (`ray.util.metrics.Gauge`).

Rank 0 of a cell sets them after every epoch; Ray's metrics agent on that node serves them in Prometheus text
format on the node's metrics export port (`run_grid.py --metrics-export-port`, or `ray start --metrics-export-port`)
as `ray_records_cell_epoch`, `ray_records_cell_top1` and `ray_records_cell_samples_per_s`, tagged with the cell's
config hash and short name. A Prometheus that scrapes the cluster (and Grafana on it) charts them on the dashboard's
Metrics page; without one, `curl NODE:PORT/metrics` shows the latest values.
"""

from __future__ import annotations

GAUGES = {
    "records_cell_epoch": "epochs the cell has done (SoLar: estimation epochs first)",
    "records_cell_top1": "test top-1 (%) of the cell's last epoch",
    "records_cell_samples_per_s": "training samples per second in the cell's last epoch",
}
TAG_KEYS = ("config_hash", "cell")

_gauges: dict | None = None  # one set per worker process: Ray registers a metric name once per process


def export_epoch(config_hash: str, cell: str, step: int, top1: float, samples_per_s: float) -> None:
    """Set the cell's gauges (call on rank 0 after each epoch, inside a Ray worker)."""
    global _gauges
    from ray.util.metrics import Gauge

    if _gauges is None:
        _gauges = {name: Gauge(name, description=text, tag_keys=TAG_KEYS) for name, text in GAUGES.items()}
    tags = {"config_hash": config_hash, "cell": cell}
    for name, value in (("records_cell_epoch", step), ("records_cell_top1", top1),
                        ("records_cell_samples_per_s", samples_per_s)):
        _gauges[name].set(float(value), tags=tags)
