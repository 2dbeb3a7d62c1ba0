"""The experiment trackers (--log-to) without a cluster: Tune's own TensorBoard and MLflow callbacks are fed the
results a sweep's cells report, then read back with TensorBoard's and MLflow's own readers."""

import time
from pathlib import Path

import numpy as np
import pytest

from sweep.results import EPOCH_COLUMNS, epoch_step
from sweep.trackers import tracker_callbacks
from trainables.config import TrialConfig


class FakeTrial:
    """What Tune's logger callbacks read from a trial."""

    def __init__(self, cell: TrialConfig, folder: Path):
        self.config = {"cell": cell.to_dict(), "settings": {"data_root": "synthetic"}}
        self.evaluated_params = {"cell/method": cell.method}
        self.trial_id, self.local_path = cell.config_hash, str(folder / cell.config_hash)
        self.checkpoint = None  # a fresh trial: nothing to restore

    def init_local_path(self):
        Path(self.local_path).mkdir(parents=True, exist_ok=True)

    def __str__(self):
        return f"cell-{self.trial_id}"


def reports(cell: TrialConfig, rng: np.random.Generator) -> list[dict]:
    """One report per epoch, as tune.train_cell_worker sends it (plus Tune's own keys)."""
    extra = cell.spec.extra_epochs(cell)
    stages = ([("estimate", extra)] if extra else []) + [("train", cell.epochs)]
    out, iteration = [], 0
    for stage, epochs in stages:
        for epoch in range(epochs):
            iteration += 1
            row = {k: float(rng.uniform(0, 100)) for k in EPOCH_COLUMNS if k not in ("config_hash", "stage", "epoch")}
            row.update(config_hash=cell.config_hash, stage=stage, epoch=epoch, prior_est=[0.5, 0.5],
                       per_class_acc=[1.0, 2.0], loss_neg=None, stage_epoch=f"{stage}:{epoch}",
                       timesteps_total=epoch_step(cell, stage, epoch), training_iteration=iteration,
                       timestamp=time.time(), config={"cell": cell.to_dict()})
            out.append(row)
    return out


@pytest.mark.parametrize("cell", [TrialConfig(epochs=3, records=True),
                                  TrialConfig(method="solar", epochs=2, params=dict(est_epochs=2))],
                         ids=["records", "solar"])
def test_tensorboard_and_mlflow_read_back_every_epoch(cell, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)  # Ray's MLflow setup exports the experiment id it chose
    callbacks = tracker_callbacks(("tensorboard", "mlflow"), str(tmp_path), "t")
    for cb in callbacks:
        cb.setup()
    trial = FakeTrial(cell, tmp_path)
    sent = reports(cell, np.random.default_rng(0))
    for cb in callbacks:
        cb.on_trial_start(0, [trial], trial)
        for i, result in enumerate(sent):
            cb.on_trial_result(i, [trial], trial, result)
        cb.on_trial_complete(len(sent), [trial], trial)
    # the step is the cell's epochs done: 1..N, SoLar's training epochs after its estimation epochs
    expected = {epoch_step(cell, r["stage"], r["epoch"]): r["top1"] for r in sent}
    assert sorted(expected) == list(range(1, len(sent) + 1))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["config_hash"] == cell.config_hash
    assert run.data.params["method"] == cell.method and float(run.data.params["rho"]) == cell.rho
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "top1")} == expected
    assert "loss_neg" not in run.data.metrics  # None is not a metric

    events = EventAccumulator(trial.local_path, size_guidance={"scalars": 0})
    events.Reload()
    board = {s.step: s.value for s in events.Scalars("ray/tune/top1")}
    assert board.keys() == expected.keys()
    assert all(abs(board[k] - v) < 1e-4 * max(1.0, abs(v)) for k, v in expected.items())  # stored as float32
