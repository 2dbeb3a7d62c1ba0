"""Ray wrapping: one Tune trial per cell, each a Ray Train `TorchTrainer` running the method loop under DDP.

The pattern is Ray's documented one for Train V2 (RAY.md): a plain Tune function trainable builds and fits a
`TorchTrainer` for its cell; `TuneReportCallback` forwards rank 0's per-epoch reports to Tune; the Train run is named
after the cell's config hash under a fixed storage path, so a restarted cell (a replaced worker, a resumed or re-run
sweep) finds its own checkpoints and continues from the latest one. The driver's `SweepRecorder` keeps the sweep's
own append-only record of every epoch and trial event, from which the Parquet files are rebuilt.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainables.config import TrialConfig

from .cell_metrics import export_epoch
from .progress import summarize
from .results import EPOCH_COLUMNS, SweepStore, epoch_step, total_epochs, write_results

TRAIN_DIR = "train"
# The Tune function only waits on its Train run, so it reserves no CPU: all of a cell's CPUs are in its Train workers'
# placement group, which Ray reserves at once on node(s) where it fits. With a CPU share of its own (it was 0.01) the
# function could land on another node than its workers and strand that share there: on two nodes of 1 CPU each, only
# one cell could run at a time. Ray needs a non-empty request (0 CPU alone is refused, RAY.md): a token of memory.
TUNE_FN_RESOURCES = {"CPU": 0, "memory": 2**20}
MIN_CPUS_PER_WORKER = 0.01


@dataclass(frozen=True)
class SweepSettings:
    """How the cells of a sweep run (nothing here changes a cell's result)."""

    data_root: str
    """Data root as every worker sees it (absolute path, or 'synthetic')."""
    workers_per_trial: int = 1
    """Ray Train workers (DDP ranks) per cell."""
    cpus_per_trial: float = 1.0
    """CPUs reserved per cell, split evenly over its workers (data loading and CPU compute)."""
    gpus_per_trial: float = 0.0
    """GPUs per cell, split evenly over its workers; a fraction below 1 packs several one-worker cells on a GPU."""
    loader_workers: int | None = None
    """DataLoader processes per worker of an augment='pil' cell; None = one fewer than the worker's whole CPUs
    (0 below 2 CPUs). augment='tensor' cells make their views in the training process: no loader workers, all
    the CPUs are torch threads."""
    max_failures: int = 2
    """Times a cell's Train run is restarted from its last checkpoint after a worker dies."""
    checkpoint_every: int = 1
    """Epochs between checkpoints (each is reported to Ray Train and persisted)."""
    device: str = field(default="")
    """Filled in at launch: 'cpu' or 'cuda'."""

    @property
    def cpus_per_worker(self) -> float:
        return self.cpus_per_trial / self.workers_per_trial

    @property
    def gpus_per_worker(self) -> float:
        return self.gpus_per_trial / self.workers_per_trial

    def resolved_loader_workers(self, augment: str = "pil") -> int:
        if augment == "tensor":
            return 0
        if self.loader_workers is not None:
            return self.loader_workers
        return max(0, min(4, self._whole_cpus() - 1))

    def torch_threads(self, augment: str = "pil") -> int:
        return max(1, self._whole_cpus() - self.resolved_loader_workers(augment))

    def _whole_cpus(self) -> int:
        # a fractional share (1.5 CPUs) gives its rounded number of threads
        return max(1, round(self.cpus_per_worker))


# ---------------------------------------------------------------------------------------------------------------
# Inside a Ray Train worker


def train_cell_worker(loop_config: dict) -> None:
    """Ray Train's per-worker function: the method loop with cross-rank syncs, reporting every epoch."""
    import ray.train
    import ray.train.torch
    import torch

    from trainables.checkpoint import PREV_FILENAME
    from trainables.comm import Comm, TorchDistComm
    from trainables.config import RunOptions
    from trainables.loop import fit

    cfg = TrialConfig.from_dict(loop_config["cell"])
    settings = SweepSettings(**loop_config["settings"])
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    comm = TorchDistComm() if world > 1 else Comm()
    device = ray.train.torch.get_device() if settings.gpus_per_trial > 0 else torch.device("cpu")
    torch.set_num_threads(settings.torch_threads(cfg.augment))

    work = Path(tempfile.mkdtemp(prefix=f"records-cell-{cfg.config_hash}-r{comm.rank}-"))
    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        restored = checkpoint.to_directory(str(work / "restored"))
        resume_from = Path(restored) / "checkpoint.pt"
    out_dir = work / "run"

    runtime = ray.get_runtime_context()
    node = f"{ray.util.get_node_ip_address()}/{runtime.get_node_id()[:12]}"

    def on_epoch(row: dict, checkpoint_path: Path | None) -> None:
        metrics = {k: row.get(k) for k in EPOCH_COLUMNS}
        metrics["stage_epoch"] = f"{row['stage']}:{row['epoch']}"
        metrics["node"] = node  # rank 0's node: where the cell ran this epoch (runs.parquet's `nodes`)
        metrics["timesteps_total"] = epoch_step(cfg, row["stage"], row["epoch"])  # the trackers' step
        if comm.rank == 0:
            export_epoch(cfg.config_hash, cfg_short(cfg), metrics["timesteps_total"], row["top1"],
                         row["images_per_s"])
        report_ckpt = None
        if checkpoint_path is not None:  # rank 0 only: the run folder describes itself (config, history, state)
            # Ray Train keeps the previous checkpoints itself (num_to_keep): not uploading ours halves the traffic
            (checkpoint_path.parent / PREV_FILENAME).unlink(missing_ok=True)
            report_ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_path.parent))
        ray.train.report(metrics, checkpoint=report_ckpt)

    options = RunOptions(data_root=settings.data_root, out_dir=str(out_dir) if comm.rank == 0 else None,
                         device=str(device), num_workers=settings.resolved_loader_workers(cfg.augment),
                         checkpoint_every=settings.checkpoint_every, verbose=False)
    try:
        fit(cfg, options, on_epoch=on_epoch, comm=comm, resume_from=resume_from)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# The Tune trial: one cell


def run_cell(trial_config: dict) -> None:
    """Tune function trainable: fit the cell's TorchTrainer; its errors fail the trial."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = TrialConfig.from_dict(trial_config["cell"])
    settings = SweepSettings(**trial_config["settings"])
    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_trial > 0:
        resources["GPU"] = settings.gpus_per_worker
    trainer = TorchTrainer(
        train_cell_worker,
        train_loop_config={"cell": cfg.to_dict(), "settings": asdict(settings)},
        scaling_config=ScalingConfig(num_workers=settings.workers_per_trial, use_gpu=settings.gpus_per_trial > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=f"cell-{cfg.config_hash}",
            storage_path=trial_config["train_storage"],
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    trainer.fit()


# ---------------------------------------------------------------------------------------------------------------
# The driver's record


def _tune_callback_base():
    from ray import tune

    return tune.Callback


class SweepRecorder(_tune_callback_base()):
    """Writes every reported epoch and every trial start/finish/error into the sweep's append-only record, and
    rebuilds the Parquet files now and then (so a running sweep can be analysed) and at the end."""

    def __init__(self, store: SweepStore, cells: list[TrialConfig], flush_s: float = 2.0,
                 rebuild_s: float = 60.0, running: list[TrialConfig] | None = None, slots: int = 1,
                 progress_s: float = 30.0):
        self.store = store
        self.cells = cells
        self.flush_s, self.rebuild_s = flush_s, rebuild_s
        self._rows: list[dict] = []
        self._events: list[dict] = []
        self._last_flush = self._last_rebuild = time.monotonic()
        # progress of the cells this experiment runs (a resumed cell's earlier epochs are not seen: its ETA errs
        # long)
        self._total = {c.config_hash: total_epochs(c) for c in (running if running is not None else cells)}
        self._states: dict[str, str] = {}
        self._seen: dict[str, set] = {}
        self._epoch_s: list[float] = []
        self.slots, self.progress_s = slots, progress_s
        self._last_progress = time.monotonic()
        self._last_orphan_check = time.monotonic()

    def progress_line(self) -> str:
        done = {h: len(seen) for h, seen in self._seen.items()}
        return summarize(self._total, done, self._states, self._epoch_s, self.slots).line()

    def _print_progress(self, force: bool = False) -> None:
        if force or time.monotonic() - self._last_progress > self.progress_s:
            print(self.progress_line(), flush=True)
            self._last_progress = time.monotonic()

    @staticmethod
    def _hash(trial) -> str | None:
        cell = trial.config.get("cell") if trial.config else None
        return TrialConfig.from_dict(cell).config_hash if cell else None

    def _event(self, trial, event: str, **extra) -> None:
        self._events.append({"config_hash": self._hash(trial), "trial_id": trial.trial_id, "event": event,
                             "time": time.time(), **extra})

    def flush(self, rebuild: bool = False) -> None:
        self.store.append_records("epochs", self._rows)
        self.store.append_records("events", self._events)
        self._rows, self._events = [], []
        self._last_flush = time.monotonic()
        if rebuild or time.monotonic() - self._last_rebuild > self.rebuild_s:
            write_results(self.store, self.cells)
            self._last_rebuild = time.monotonic()

    def _set_state(self, trial, state: str) -> None:
        h = self._hash(trial)
        if h in self._total:
            self._states[h] = state

    def on_trial_start(self, iteration, trials, trial, **info):
        self._event(trial, "start")
        self._set_state(trial, "running")
        self.flush()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "config_hash" not in result or "epoch" not in result:
            return
        row = {k: result.get(k) for k in EPOCH_COLUMNS}
        row["_t"] = time.time()
        row["trial_id"] = trial.trial_id
        row["node"] = result.get("node")
        self._rows.append(row)
        self._seen.setdefault(result["config_hash"], set()).add((result.get("stage"), result["epoch"]))
        self._epoch_s.append(float(result.get("epoch_s") or 0.0) + float(result.get("eval_s") or 0.0))
        if time.monotonic() - self._last_flush > self.flush_s:
            self.flush()
        self._print_progress()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._event(trial, "finish")
        self._set_state(trial, "finished")
        self.flush(rebuild=True)
        self._print_progress(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = None
        try:
            error = trial.get_error()
        except Exception as err:  # the error file may be gone on a remote store; keep what we know
            error = f"(could not read the trial's error file: {err})"
        self._event(trial, "error", error=_error_summary(error))
        self._set_state(trial, "failed")
        self.flush(rebuild=True)
        self._print_progress(force=True)

    def on_step_begin(self, iteration, trials, **info):
        if time.monotonic() - self._last_orphan_check > ORPHAN_CHECK_S:
            self._last_orphan_check = time.monotonic()
            released = release_orphaned_placement_groups()
            if released:
                print(f"note: released {released} placement group(s) of Train runs whose controller died with its "
                      "node, so their cells can run again", flush=True)

    def on_experiment_end(self, trials, **info):
        self.flush(rebuild=True)


ORPHAN_CHECK_S = 10.0


def release_orphaned_placement_groups() -> int:
    """Remove the placement groups whose creating actor is dead: a cell's Train workers' group, left reserved when
    its Train controller died with its node. Ray Train's own cleaner does this through the dashboard's State API; on
    a cluster without a dashboard the dead run kept its CPUs and the cell's rerun waited for them forever (measured
    on a test cluster). No public Ray API exposes a placement group's creator, so this reads GCS's table through
    Ray's state accessor. Only this driver's job is considered: on a shared cluster other jobs' groups are theirs
    (Ray frees a job's groups when the job ends). Tune's own placement groups are the driver's (no creating actor)
    and are never touched."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    own_job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id()).binary()
    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if pg.state == gcs_pb2.PlacementGroupTableData.REMOVED or pg.is_detached or not pg.creator_actor_dead:
            continue
        if pg.creator_job_id != own_job:
            continue
        if not pg.creator_actor_id or ray.ActorID(pg.creator_actor_id).is_nil():
            continue
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            removed += 1
        except Exception as err:  # removed meanwhile (by Ray Train's cleaner): nothing left to do
            print(f"note: could not release a placement group of a dead Train run: {err}", flush=True)
    return removed


def _error_summary(text: object, limit: int = 4000) -> str:
    """The useful end of an error trace: the last exception lines, bounded in size."""
    text = str(text or "unknown error").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    tail = "\n".join(lines[-12:])
    return tail[-limit:]


# ---------------------------------------------------------------------------------------------------------------
# Resources


class ResourceError(ValueError):
    """The trials of a grid can never be placed on this cluster."""


def check_fits(settings: SweepSettings, nodes: list[dict]) -> int:
    """Refuse, with the numbers, a trial that can never be placed; else return how many fit at once.

    A trial's resources are its Train workers' (each cpus_per_worker CPUs, gpus_per_worker GPUs; the Tune function and
    the Train controller reserve no CPU). Workers may spread over nodes; each must fit on one node.
    """
    if settings.workers_per_trial < 1:
        raise ResourceError(f"workers_per_trial={settings.workers_per_trial}: need at least 1")
    if settings.cpus_per_worker < MIN_CPUS_PER_WORKER:
        raise ResourceError(f"cpus_per_trial={settings.cpus_per_trial}: need at least {MIN_CPUS_PER_WORKER} CPU per "
                            "worker")
    if settings.gpus_per_trial < 0:
        raise ResourceError(f"gpus_per_trial={settings.gpus_per_trial}: must be >= 0")
    if settings.workers_per_trial > 1 and 0 < settings.gpus_per_worker < 1:
        raise ResourceError(
            f"gpus_per_trial={settings.gpus_per_trial} over workers_per_trial={settings.workers_per_trial} gives each "
            f"rank {settings.gpus_per_worker:g} GPU: two NCCL ranks of one run cannot share a GPU; give each rank a "
            "whole GPU, or use one worker per trial to pack trials on a GPU")
    if settings.gpus_per_worker > 1:
        raise ResourceError(f"gpus_per_trial={settings.gpus_per_trial} gives each of the "
                            f"{settings.workers_per_trial} workers {settings.gpus_per_worker:g} GPUs; "
                            "a worker uses at most one")
    free = [{"CPU": float(n.get("CPU", 0.0)), "GPU": float(n.get("GPU", 0.0))} for n in nodes]
    if _place(free, settings) is None:
        total_cpu = sum(n["CPU"] for n in free)
        total_gpu = sum(n["GPU"] for n in free)
        per_node = ", ".join(f"{n['CPU']:g} CPU/{n['GPU']:g} GPU" for n in free) or "no nodes"
        raise ResourceError(
            f"a trial needs {settings.workers_per_trial} worker(s) x ({settings.cpus_per_worker:g} CPU, "
            f"{settings.gpus_per_worker:g} GPU) = {settings.cpus_per_trial:g} CPU and "
            f"{settings.gpus_per_trial:g} GPU, but the cluster has {total_cpu:g} CPU and {total_gpu:g} GPU "
            f"({per_node}); Ray would wait for it forever. Lower --cpus-per-trial / --gpus-per-trial / "
            "--workers-per-trial, or add resources.")
    fitting, capacity = 0, free
    while fitting < 10_000 and (capacity := _place(capacity, settings)) is not None:
        fitting += 1
    return fitting


def _place(capacity: list[dict], settings: SweepSettings) -> list[dict] | None:
    """The free resources after placing one more trial, or None if it does not fit."""
    cap = [dict(c) for c in capacity]
    for _ in range(settings.workers_per_trial):
        fits = [c for c in cap if c["CPU"] + 1e-9 >= settings.cpus_per_worker
                and c["GPU"] + 1e-9 >= settings.gpus_per_worker]
        if not fits:
            return None
        node = max(fits, key=lambda c: (c["GPU"], c["CPU"]))
        node["CPU"] -= settings.cpus_per_worker
        node["GPU"] -= settings.gpus_per_worker
    return cap


# ---------------------------------------------------------------------------------------------------------------
# Launch


def ray_runtime_env(ship_code: bool) -> dict:
    env = {"env_vars": {
        # Each ray.train.report waits for the controller's health-check poll (2 s by default): too slow for
        # short epochs, harmless to shorten.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"),
    }}
    from trainables.methods import PLUGIN_ENV

    if os.environ.get(PLUGIN_ENV):  # methods loaded from outside the package (docs/methods.md); local workers
        env["env_vars"][PLUGIN_ENV] = os.environ[PLUGIN_ENV]  # inherit it anyway, remote ones need it passed
    if ship_code:  # a remote cluster gets the project's code with the job
        import analysis
        import sweep
        import trainables

        env["py_modules"] = [str(Path(m.__file__).parent) for m in (trainables, sweep, analysis)]
    return env


def run_cells(store: SweepStore, cells: list[TrialConfig], settings: SweepSettings, max_concurrent: int,
              verbose: int = 1, log_to: tuple[str, ...] = ("tensorboard",)) -> None:
    """Run `cells` as one Tune experiment (Ray must be initialised); the record and Parquet files stay current.
    `log_to`: the experiment trackers (sweep/trackers.py)."""
    from ray import tune

    from .trackers import tracker_callbacks

    # Tune's newer console output ignores progress reporters; the classic one shows our compact per-cell table.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune would add its CSV, JSON and TensorBoard loggers by itself; tracker_callbacks adds exactly those chosen.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    trackers = tracker_callbacks(log_to, store.uri, store.uri.rsplit("/", 1)[-1], store.is_local)
    recorder = SweepRecorder(store, [TrialConfig.from_dict(c) for c in _manifest_cells(store)], running=cells,
                             slots=max_concurrent)
    param_space = {
        "cell": tune.grid_search([c.to_dict() for c in cells]),
        "settings": asdict(settings),
        "train_storage": store.uri + "/" + TRAIN_DIR,
    }
    tuner = tune.Tuner(
        tune.with_resources(run_cell, TUNE_FN_RESOURCES),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=f"tune-{stamp}", storage_path=store.uri, callbacks=[recorder, *trackers],
                                  verbose=verbose, progress_reporter=_progress_reporter(),
                                  # a trial whose Tune function dies with its node is run once more (elsewhere):
                                  # its TorchTrainer finds the cell's Train run and continues from its checkpoint.
                                  # Once: errors of the cell itself are already retried by Train (max_failures).
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    try:
        tuner.fit()
    finally:
        recorder.flush(rebuild=True)


def _progress_reporter():
    """Tune's terminal table: one row per cell with its progress and latest accuracy."""
    from ray.tune import CLIReporter

    return CLIReporter(
        parameter_columns={"cell/dataset": "dataset", "cell/rho": "rho", "cell/q": "q"},
        metric_columns={"stage_epoch": "stage:epoch", "top1": "top1", "top1_raw": "raw", "few": "few",
                        "images_per_s": "img/s"},
        max_report_frequency=30, sort_by_metric=False, max_progress_rows=200)


def _trial_name(trial) -> str:
    cell = TrialConfig.from_dict(trial.config["cell"])
    return f"cell-{cfg_short(cell)}-{cell.config_hash}"


def cfg_short(cfg: TrialConfig) -> str:
    parts = [cfg.dataset + ("nu" if cfg.nu else ""), f"r{cfg.rho:g}", f"q{cfg.q:g}", cfg.method]
    if cfg.records:
        parts.append("rec")
    if cfg.oracle_la:
        parts.append("ola-" + cfg.oracle_la)
    if cfg.mixup:
        parts.append("mix")
    parts.append(f"s{cfg.seed}")
    return "_".join(parts)


def _manifest_cells(store: SweepStore) -> list[dict]:
    import json

    return json.loads(store.read_bytes("sweep.json"))["cells"]
