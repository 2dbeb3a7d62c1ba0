"""A hand-made sweep folder with known numbers, for the analysis tests.

CIFAR-10-LT, 2 seeds, cells ρ ∈ {50, 100} × q ∈ {0.3, 0.5}, every paper method plus CORR + Mixup, and
CORR + Oracle-LA (loss) in one cell. A finished run's final top-1 is `base(method, ρ, q) + SEED_OFFSET[seed]`,
so each cell's mean is base + 0.5 and its sample std (ddof=1) is sqrt(((−1.5)² + 1.5²) / 1) = sqrt(4.5).
Exceptions (the unfinished cells):
- CORR + RECORDS at (100, 0.5): seed 2 failed after 1 epoch -> mean of seed 1 only, n=1, "failed".
- SoLar at (100, 0.5): both seeds failed -> "failed ×2".
- CORR + Mixup at (50, 0.5): seed 1 running 2/4, seed 2 pending -> "running 2/4, pending".
- CORR + RECORDS (w/ Mixup) at (100, 0.5): seed 2 running 2/4 -> n=1, "running 2/4".
Plus CIFAR-100-LT (CORR + RECORDS) and CIFAR-100-LT-NU (CORR, CORR + RECORDS) at ρ=100, q=0.05, 2 seeds.

Per-epoch top-1 of a finished run over its 4 epochs: final − 30, final − 10, final + 1, final, so best_top1 =
final + 1 at epoch 2. RECORDS runs: top1_raw = top1 − RAW_GAP[seed]. Shots: many/medium/few = top1 + 10,
top1, top1 − 10. π̂ moves linearly from uniform toward the true prior, reaching it at the last epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sweep.schema import EPOCHS_SCHEMA, RUNS_SCHEMA, SCHEMA_VERSION
from trainables.config import TrialConfig

EPOCHS = 4
SEEDS = (1, 2)
SEED_OFFSET = {1: -1.0, 2: 2.0, 3: 0.5}
RAW_GAP = {1: 5.0, 2: 4.0, 3: 4.5}
CELLS = [(50.0, 0.3), (50.0, 0.5), (100.0, 0.3), (100.0, 0.5)]

# Paper name -> config switches.
METHODS = {
    "CORR": {},
    "CORR + Oracle-LA": {"oracle_la": "disamb"},
    "CORR + RECORDS": {"records": True},
    "SoLar (w/ Mixup)": {"method": "solar"},
    "CORR + RECORDS (w/ Mixup)": {"records": True, "mixup": True},
    "CORR + Mixup": {"mixup": True},
}
METHOD_BASE = {"CORR": 70.0, "CORR + Oracle-LA": 30.0, "CORR + RECORDS": 80.0, "SoLar (w/ Mixup)": 78.0,
               "CORR + RECORDS (w/ Mixup)": 84.0, "CORR + Mixup": 74.0, "CORR + Oracle-LA (loss)": 20.0}

# (method, rho, q, seed) -> (status, epochs_done) for the runs that did not finish.
UNFINISHED = {
    ("CORR + RECORDS", 100.0, 0.5, 2): ("failed", 1),
    ("SoLar (w/ Mixup)", 100.0, 0.5, 1): ("failed", 1),
    ("SoLar (w/ Mixup)", 100.0, 0.5, 2): ("failed", 1),
    ("CORR + Mixup", 50.0, 0.5, 1): ("running", 2),
    ("CORR + Mixup", 50.0, 0.5, 2): ("pending", 0),
    ("CORR + RECORDS (w/ Mixup)", 100.0, 0.5, 2): ("running", 2),
}
ERROR = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory"


def base(method: str, rho: float, q: float) -> float:
    """The cell's centre: method base, −5 at ρ=100, −10 at the higher q."""
    return METHOD_BASE[method] - (5.0 if rho == 100 else 0.0) - (10.0 if q in (0.5, 0.07) else 0.0)


def final_top1(method: str, rho: float, q: float, seed: int) -> float:
    return base(method, rho, q) + SEED_OFFSET[seed]


def class_counts(img_max: int, k: int, rho: float) -> list[int]:
    return [int(img_max * (1.0 / rho) ** (c / (k - 1))) for c in range(k)]


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _run(method: str, switches: dict, dataset: str, nu: bool, rho: float, q: float, seed: int,
         sweep: str) -> tuple[dict, list[dict]]:
    k = 10 if dataset == "cifar10" else 100
    img_max = 100 if k == 10 else 200  # CIFAR-100: n_min = 2 at rho=100
    cfg = TrialConfig(dataset=dataset, nu=nu, rho=rho, q=q, img_max=img_max, epochs=EPOCHS, seed=seed,
                      arch="small-cnn", **switches)
    status, done = UNFINISHED.get((method, rho, q, seed), ("finished", EPOCHS))
    counts = class_counts(img_max, k, rho)
    prior = np.asarray(counts, dtype=float) / sum(counts)
    has_prior = cfg.records or cfg.method == "solar"
    gap = RAW_GAP[seed] if cfg.records else 0.0
    final = final_top1(method, rho, q, seed)
    curve = [final - 30.0, final - 10.0, final + 1.0, final]

    epochs = []
    stages = [("estimate", 2)] if cfg.method == "solar" else []
    for stage, n_epochs in [*stages, ("train", done)]:
        for e in range(n_epochs):
            t = (e + 1) / (n_epochs if stage == "estimate" else EPOCHS)
            est = (1 - t) * np.full(k, 1.0 / k) + t * prior
            top1 = curve[e] if stage == "train" else 20.0 + 10 * e
            spread = 20.0 * (1 - 2 * np.arange(k) / (k - 1))  # head classes above the mean, tail below
            epochs.append({
                "config_hash": cfg.config_hash, "stage": stage, "epoch": e, "top1": top1, "top1_raw": top1 - gap,
                "top5": min(top1 + 15, 100.0), "many": top1 + 10, "medium": top1, "few": top1 - 10,
                "many_raw": top1 + 10 - gap, "medium_raw": top1 - gap, "few_raw": top1 - 10 - gap,
                "prior_kl": _kl(prior, est) if has_prior else None, "pseudo_label_acc": 50.0 + 10 * e,
                "mmc": 0.5 + 0.1 * e, "lr": 0.01 * math.cos(e / EPOCHS), "loss": 2.0 - 0.3 * e, "loss_neg": 0.1,
                "loss_con": 0.2, "loss_mix": 0.3 if cfg.mixup else 0.0, "epoch_s": 1.0, "eval_s": 0.2,
                "images_per_s": 900.0 + seed, "prior_est": est.tolist() if has_prior else None,
                "per_class_acc": np.clip(top1 + spread, 0, 100).tolist(),
                "sinkhorn_row_residual": 1e-3 if cfg.method == "solar" else None,
                "sinkhorn_col_residual": 2e-3 if cfg.method == "solar" else None,
                "reliable_frac": 0.5 if cfg.method == "solar" else None,
            })

    finished = status == "finished"
    last = epochs[-1] if finished else {}
    d = cfg.to_dict()
    d["faithful"] = ",".join(d["faithful"])
    start = pd.Timestamp("2025-01-01", tz="UTC")
    run = {
        "config_hash": cfg.config_hash, "trial_id": f"t{cfg.config_hash[:6]}", "sweep": sweep,
        "label": cfg.describe(), **d, "status": status, "error": ERROR if status == "failed" else None,
        "epochs_done": done, "epochs_total": EPOCHS,
        **{f"final_{m}": (last[m] if finished else None) for m in
           ("top1", "top1_raw", "top5", "many", "medium", "few", "many_raw", "medium_raw", "few_raw", "prior_kl",
            "pseudo_label_acc", "mmc")},
        "best_top1": final + 1.0 if finished else None, "best_epoch": 2 if finished else None,
        "class_counts": counts, "final_prior_est": last.get("prior_est"),
        "final_per_class_acc": last.get("per_class_acc"),
        "wall_s": 100.0 * (1 + list(METHOD_BASE).index(method)) if finished else None,
        "images_per_s": 1000.0 + 10 * seed if finished else None, "num_workers_per_trial": 1, "device": "cpu",
        "nodes": ["127.0.0.1/0123456789ab"],
        "package_version": "0.1.0", "git_rev": "abc123", "started_at": start if status != "pending" else None,
        "finished_at": start + pd.Timedelta(seconds=100) if finished else None, "schema_version": SCHEMA_VERSION,
    }
    return run, epochs


def fixture_rows(seeds: tuple[int, ...] = SEEDS, sweep: str = "fixture") -> tuple[list[dict], list[dict]]:
    runs, epochs = [], []

    def add(method: str, switches: dict, dataset: str, nu: bool, rho: float, q: float) -> None:
        for seed in seeds:
            r, e = _run(method, switches, dataset, nu, rho, q, seed, sweep)
            runs.append(r)
            epochs.extend(e)

    for method, switches in METHODS.items():
        for rho, q in CELLS:
            add(method, switches, "cifar10", False, rho, q)
    add("CORR + Oracle-LA (loss)", {"oracle_la": "loss"}, "cifar10", False, 50.0, 0.3)
    add("CORR + RECORDS", {"records": True}, "cifar100", False, 100.0, 0.05)
    add("CORR", {}, "cifar100", True, 100.0, 0.05)
    add("CORR + RECORDS", {"records": True}, "cifar100", True, 100.0, 0.05)
    return runs, epochs


def write_frames(folder: Path, runs: pd.DataFrame, epochs: pd.DataFrame) -> Path:
    """Write the two files of a sweep folder with the sweep's schemas, as the sweep does."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(runs, schema=RUNS_SCHEMA, preserve_index=False), folder / "runs.parquet")
    pq.write_table(pa.Table.from_pandas(epochs, schema=EPOCHS_SCHEMA, preserve_index=False),
                   folder / "epochs.parquet")
    return folder


def make_sweep(folder: Path, seeds: tuple[int, ...] = SEEDS, sweep: str = "fixture") -> Path:
    """Write the fixture sweep into `folder` (created) and return it."""
    runs, epochs = fixture_rows(seeds, sweep)
    runs_df = pd.DataFrame(runs, columns=RUNS_SCHEMA.names)
    epochs_df = pd.DataFrame(epochs, columns=EPOCHS_SCHEMA.names)
    return write_frames(folder, runs_df, epochs_df)
