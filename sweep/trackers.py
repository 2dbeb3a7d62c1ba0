"""Experiment trackers for a sweep (`--log-to tensorboard,mlflow,wandb`), through Ray Tune's own logger callbacks.

- tensorboard: Tune's `TBXLoggerCallback`; event files in STORAGE/NAME/tune-*/cell-*/ (`tensorboard --logdir`).
- mlflow: Tune's `MLflowLoggerCallback` into a local SQLite store STORAGE/NAME/mlflow.db (MLflow 3 deprecates the
  file store), or $MLFLOW_TRACKING_URI when set; one MLflow run per cell, its config as params.
- wandb: Tune's `WandbLoggerCallback`, offline into STORAGE/NAME/wandb (`wandb sync` uploads it later).

Every tracker steps by the cell's epochs done (`timesteps_total` in each report: the epoch row's index + 1, SoLar's
training epochs counted after its estimation epochs), so a cell resumed from its checkpoint continues its curves.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

TRACKERS = ("tensorboard", "mlflow", "wandb")
DEFAULT_LOG_TO = "tensorboard"  # cheap (a few KB per cell) and what Tune has always written


def parse_log_to(text: str) -> tuple[str, ...]:
    """'tensorboard,mlflow' -> ('tensorboard', 'mlflow'); '' or 'none' -> ()."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"--log-to {text!r}: unknown tracker(s) {unknown}; choose from {', '.join(TRACKERS)} "
                         "(comma-separated), or 'none'")
    return names


def mlflow_tracking_uri(sweep_dir: str, is_local: bool) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if not is_local:
        raise ValueError(f"--log-to mlflow: the sweep folder {sweep_dir} is not local; set MLFLOW_TRACKING_URI to a "
                         "tracking server or database")
    return "sqlite:///" + str(Path(sweep_dir).resolve() / "mlflow.db")


def tracker_callbacks(names: tuple[str, ...], sweep_dir: str, sweep_name: str, is_local: bool = True) -> list:
    """Tune callbacks for the chosen trackers, plus Tune's CSV and JSON loggers (which Tune adds by itself only
    while it also adds TensorBoard's: the caller disables that automatic set, see run_cells)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    callbacks = [CSVLoggerCallback(), JsonLoggerCallback()]
    if "tensorboard" in names:
        callbacks.append(TBXLoggerCallback())
    if "mlflow" in names:
        callbacks.append(_mlflow_callback_class()(tracking_uri=mlflow_tracking_uri(sweep_dir, is_local),
                                                  experiment_name=sweep_name))
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback

        # W&B writes local files; a remote sweep folder keeps them in ./wandb of the driver
        wandb_dir = (Path(sweep_dir) if is_local else Path.cwd()) / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_MODE", "offline")  # Tune's setup then asks for no API key
        callbacks.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", sweep_name), group=sweep_name,
                                             dir=str(wandb_dir), mode=os.environ["WANDB_MODE"]))
    return callbacks


def _mlflow_callback_class():
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.result import TIMESTEPS_TOTAL, TRAINING_ITERATION

    class EpochMLflowLoggerCallback(MLflowLoggerCallback):
        """Ray's MLflow callback, writing a cell's params and each epoch's metrics in one `log_batch` each.

        Ray's own logs one param or metric per call, each its own SQLite transaction (~30 per epoch, and ~40 params
        per cell); it also logs the whole trial config (settings and paths too) where a cell's config is what
        identifies the run.
        """

        def setup(self, *args, **kwargs):
            super().setup(*args, **kwargs)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)

        def log_trial_start(self, trial):
            if trial in self._trial_runs:  # a restarted trial continues its run
                return
            run = self.mlflow_util.start_run(tags={**self.tags, "trial_name": str(trial)}, run_name=str(trial),
                                             set_active=False)
            self._trial_runs[trial] = run.info.run_id
            from trainables.config import TrialConfig

            cell = TrialConfig.from_dict(trial.config["cell"])
            params = [Param(k, str(v)) for k, v in {**cell.to_dict(), "config_hash": cell.config_hash}.items()]
            self._client.log_batch(run.info.run_id, params=params)

        def log_trial_result(self, iteration, trial, result):
            if trial not in self._trial_runs:
                self.log_trial_start(trial)
            step = int(result.get(TIMESTEPS_TOTAL) or result[TRAINING_ITERATION])
            ms = int(result.get("timestamp", 0) * 1000)
            metrics = [Metric(k, float(v), ms, step) for k, v in result.items()
                       if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                       and k != "config"]
            self._client.log_batch(self._trial_runs[trial], metrics=metrics)

        def log_trial_end(self, trial, failed=False):
            run_id = self._trial_runs.pop(trial, None)
            if run_id is not None:
                self._client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    return EpochMLflowLoggerCallback
