"""The sweep end to end on a local Ray (2 CPUs, small object store, no dashboard): the smoke preset into Parquet,
the analysis on its output, a killed driver resumed, a killed worker replaced, two DDP workers per cell."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from sweep.cluster import is_loopback
from sweep.grids import PRESETS
from sweep.results import epoch_step, total_epochs
from sweep.schema import EPOCHS_SCHEMA, RUNS_SCHEMA

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUN_GRID = str(ROOT / "sweep" / "run_grid.py")
RAY_ENV = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "PYTHONUNBUFFERED": "1"}
LOCAL_RAY = ["--no-dashboard", "--num-cpus", "2", "--object-store-mb", "128", "--data-root", "synthetic"]


def run_grid(*args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, RUN_GRID, *args, *LOCAL_RAY], capture_output=True, text=True,
                          timeout=timeout, env=RAY_ENV, **kwargs)


def start_grid(*args, log):
    return subprocess.Popen([sys.executable, RUN_GRID, *args, *LOCAL_RAY], stdout=log, stderr=subprocess.STDOUT,
                            env=RAY_ENV, start_new_session=True)


def ray_stop():
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)


def epoch_records(sweep: Path) -> list[dict]:
    rows = []
    for chunk in sorted((sweep / "records" / "epochs").glob("*.jsonl")):
        rows += [json.loads(line) for line in chunk.read_text().splitlines() if line.strip()]
    return rows


def wait_for(predicate, timeout, proc=None, what=""):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def assert_complete(sweep: Path, expected_cells: int):
    runs = pq.read_table(sweep / "runs.parquet")
    epochs = pq.read_table(sweep / "epochs.parquet")
    assert runs.schema.equals(RUNS_SCHEMA, check_metadata=False)
    assert epochs.schema.equals(EPOCHS_SCHEMA, check_metadata=False)
    runs, epochs = runs.to_pandas(), epochs.to_pandas()
    assert len(runs) == expected_cells and runs["config_hash"].is_unique
    assert (runs["status"] == "finished").all(), runs[["label", "status", "error"]]
    for _, run in runs.iterrows():
        mine = epochs[epochs["config_hash"] == run["config_hash"]]
        assert len(mine) == run["epochs_total"] == run["epochs_done"]
        for stage, grp in mine.groupby("stage"):
            assert sorted(grp["epoch"]) == list(range(len(grp))), (run["label"], stage)  # no gaps, no repeats
        assert run["final_top1"] == mine[mine["stage"] == "train"].iloc[-1]["top1"]
    return runs, epochs


# --- the smoke preset, once, shared by the checks below -------------------------------------------------------------

def listening_sockets(root_pid: int) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening socket of root_pid and its descendants."""
    try:
        root = psutil.Process(root_pid)
        pids = {root_pid} | {p.pid for p in root.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for conn in psutil.net_connections("inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.NoSuchProcess:
                continue
            found.add((name, conn.laddr.ip, conn.laddr.port))
    return found


def scrape(url: str, prefix: str) -> list[str]:
    """The Prometheus text lines starting with `prefix` that `url` serves now ([] while it is not up)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return [ln for ln in response.read().decode().splitlines() if ln.startswith(prefix)]
    except OSError:
        return []


def run_grid_watching_sockets(*args, timeout=600, metrics_url=None, env=None):
    """run_grid, sampling the listening sockets of the driver and every process it starts (the local Ray's) each
    second while it runs, and the cells' metrics at `metrics_url` (into .scraped)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, RUN_GRID, *args, *LOCAL_RAY], stdout=out, stderr=err, text=True,
                                env={**RAY_ENV, **(env or {})}, start_new_session=True)
        sockets, scraped, end = set(), [], time.time() + timeout
        try:
            while proc.poll() is None and time.time() < end:
                sockets |= listening_sockets(proc.pid)
                if metrics_url:
                    scraped += scrape(metrics_url, "ray_records_cell_")
                time.sleep(1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        err.seek(0)
        return SimpleNamespace(returncode=proc.returncode, stdout=out.read(), stderr=err.read(),
                               scraped=scraped), sockets


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """The smoke preset with TensorBoard and MLflow on, its node's metrics endpoint read while it runs."""
    storage = tmp_path_factory.mktemp("sweeps")
    with socket.socket() as probe:  # a free port for the node's metrics export
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # metrics pushed every second instead of Ray's 10 s, so that even a short cell shows up
    out, sockets = run_grid_watching_sockets("--preset", "smoke", "--storage", str(storage), "--name", "smoke",
                                             "--log-to", "tensorboard,mlflow", "--metrics-export-port", str(port),
                                             metrics_url=f"http://127.0.0.1:{port}/metrics",
                                             env={"RAY_metrics_report_interval_ms": "1000"})
    ray_stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return storage / "smoke", out, sockets


def test_smoke_sweep_writes_complete_parquet(smoke_sweep):
    sweep, out, _ = smoke_sweep
    cells = PRESETS["smoke"].cells()
    runs, epochs = assert_complete(sweep, len(cells))
    assert set(runs["config_hash"]) == {c.config_hash for c in cells}
    assert len(epochs) == sum(total_epochs(c) for c in cells)
    k = runs.set_index("config_hash")["dataset"].map({"cifar10": 10, "cifar100": 100})
    for _, row in epochs.iterrows():
        assert len(row["prior_est"]) == k[row["config_hash"]] == len(row["per_class_acc"])
        assert abs(sum(row["prior_est"]) - 1) < 1e-6
    assert runs["git_rev"].notna().all() and runs["package_version"].notna().all()
    assert (runs["wall_s"] > 0).all() and (runs["images_per_s"] > 0).all()
    assert "status: finished 7" in out.stdout
    assert "progress: 7 finished, 0 running, 0 failed, 0 pending" in out.stdout  # the driver's progress line
    # re-running the same sweep finds everything finished and starts nothing
    again = run_grid("--preset", "smoke", "--storage", str(sweep.parent), "--name", "smoke", timeout=120)
    assert again.returncode == 0 and "7 already finished, 0 to run" in again.stdout


# Listening sockets of the local Ray that Ray offers no way to bind to loopback: (process name prefix, reason).
# The README's "Network exposure" section lists the same.
NON_LOOPBACK_ALLOWED: dict[str, str] = {
    # (process names are cut to 15 characters: "ray::RayTrainWo")
    "ray::RayTrainWo": "torch.distributed's TCPStore, the rendezvous of a cell's process group, which Ray Train"
                       " sets up even for one worker; torch binds it to every interface and has no option to restrict",
    # The same worker process while it runs something for Ray Train: Ray retitles a worker after the task it runs,
    # and Ray Train names every call on its workers "execute.<function>" (_setup_torch_process_group,
    # _propagate_data_context, ...), so the store, which lives as long as the worker, is seen under any of them.
    "ray::execute.": "the same TCPStore, sampled while its worker runs one of Ray Train's calls",
}


def test_local_ray_listens_on_loopback_only(smoke_sweep):
    _, _, sockets = smoke_sweep
    assert len(sockets) >= 5, sockets  # GCS, raylet, object manager, workers, agents: the sampling saw them
    exposed = sorted(s for s in sockets if not is_loopback(s[1])
                     and not any(s[0].startswith(name) for name in NON_LOOPBACK_ALLOWED))
    assert not exposed, exposed


def test_trackers_read_back_like_parquet(smoke_sweep):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep, _, _ = smoke_sweep
    cells = {c.config_hash: c for c in PRESETS["smoke"].cells()}
    epochs = pq.read_table(sweep / "epochs.parquet").to_pandas()
    expected = {h: {epoch_step(cells[h], r.stage, r.epoch): r.top1 for r in grp.itertuples()}
                for h, grp in epochs.groupby("config_hash")}
    assert len(expected) == len(cells)

    client = MlflowClient(f"sqlite:///{sweep / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    by_hash = {r.data.params["config_hash"]: r for r in runs}
    assert set(by_hash) == set(cells) and all(r.info.status == "FINISHED" for r in runs)
    for h, run in by_hash.items():
        assert run.data.params["method"] == cells[h].method and float(run.data.params["q"]) == cells[h].q
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "top1")}
        assert history == expected[h], h

    for h in cells:
        [folder] = sweep.glob(f"tune-*/cell-*-{h}")
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        board = {s.step: s.value for s in events.Scalars("ray/tune/top1")}
        assert board.keys() == expected[h].keys()
        assert all(abs(board[k] - v) < 1e-4 * max(1, abs(v)) for k, v in expected[h].items())  # stored as float32


def test_cells_export_live_metrics(smoke_sweep):
    import re

    _, out, _ = smoke_sweep
    cells = {c.config_hash: c for c in PRESETS["smoke"].cells()}
    samples = [re.match(r'ray_records_cell_(\w+)\{(.*)\} (\S+)$', line) for line in out.scraped]
    samples = [(m[1], dict(re.findall(r'(\w+)="([^"]*)"', m[2])), float(m[3])) for m in samples if m]
    assert {name for name, _, _ in samples} == {"epoch", "top1", "samples_per_s"}, out.scraped[:5]
    for name, tags, value in samples:
        cell = cells[tags["config_hash"]]  # a cell of this sweep
        if name == "epoch":
            assert 1 <= value <= total_epochs(cell)
        elif name == "top1":
            assert 0 <= value <= 100
        else:
            assert value > 0


def test_analysis_report_and_notebook_on_the_smoke_sweep(smoke_sweep, tmp_path):
    import nbformat

    sweep, _, _ = smoke_sweep
    nb = nbformat.read(ROOT / "analysis" / "paper_tables.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    report = subprocess.run([sys.executable, "-m", "analysis.report", str(sweep), "--out", str(tmp_path / "report"),
                             "--notebook"], capture_output=True, text=True, timeout=400)
    assert report.returncode == 0, report.stderr
    pngs = list((tmp_path / "report").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    tables = (tmp_path / "report" / "tables.md").read_text()
    assert "CIFAR-10-LT" in tables and "CORR + RECORDS (w/ Mixup)" in tables and "SoLar (w/ Mixup)" in tables
    page = (tmp_path / "report" / "report.html").read_text()
    assert "finished" in page and page.count("data:image/png;base64,") == len(pngs)
    # the notebook ran on the sweep without an error (the command fails otherwise) and kept its figures
    notebook = (tmp_path / "report" / "notebook.html").read_text()
    assert "data:image/png;base64," in notebook and "CIFAR-10-LT" in notebook


# --- a killed driver, resumed ------------------------------------------------------------------------------------

def test_killed_driver_resumes_each_cell_exactly_once(tmp_path):
    args = ["--preset", "smoke", "--set", "variant=corr,records+mixup", "--set", "dataset=cifar10", "--set", "epochs=5",
            "--storage", str(tmp_path), "--name", "k"]
    sweep = tmp_path / "k"
    with open(tmp_path / "first.log", "w") as log:
        proc = start_grid(*args, log=log)
        try:
            wait_for(lambda: len(epoch_records(sweep)) >= 2, 240, proc, "two epochs were recorded")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, without warning
            proc.wait()
    ray_stop()
    before = epoch_records(sweep)
    assert 2 <= len(before) < 10
    out = run_grid("--resume", "--name", "k", "--storage", str(tmp_path))
    ray_stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs, epochs = assert_complete(sweep, 2)
    assert (runs["epochs_done"] == 5).all()


# --- a killed worker, replaced -----------------------------------------------------------------------------------

def _train_workers():
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "RayTrainWorker" in cmd:
            found.append(p)
    return found


def test_killed_worker_is_replaced_and_continues_from_its_checkpoint(tmp_path):
    args = ["--preset", "smoke", "--set", "variant=records+mixup", "--set", "dataset=cifar10", "--set", "epochs=6",
            "--storage", str(tmp_path), "--name", "w"]
    sweep = tmp_path / "w"
    with open(tmp_path / "log", "w") as log:
        proc = start_grid(*args, log=log)
        try:
            wait_for(lambda: len(epoch_records(sweep)) >= 2, 240, proc, "two epochs were recorded")
            workers = _train_workers()
            assert workers, "no Ray Train worker process found"
            for w in workers:
                w.kill()
            assert proc.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    ray_stop()
    runs, epochs = assert_complete(sweep, 1)
    raw = pd.DataFrame(epoch_records(sweep))
    # continued from its checkpoint, not from scratch: epoch 0 was trained (and reported) once only
    assert (raw["epoch"] == 0).sum() == 1
    assert sorted(raw["epoch"].unique()) == list(range(6))


# --- SoLar on the real CIFAR-10 copy through the Ray path ---------------------------------------------------------

SHARED = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "cifar10").is_dir(), reason=f"the shared CIFAR-10 copy is not at {SHARED}")
def test_solar_on_real_cifar10_through_ray(tmp_path):
    args = [sys.executable, RUN_GRID, "--preset", "smoke", "--set", "variant=solar", "--storage", str(tmp_path),
            "--name", "solar", *LOCAL_RAY[:-2], "--data-root", str(SHARED)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, env=RAY_ENV)
    ray_stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs, epochs = assert_complete(tmp_path / "solar", 1)
    assert list(epochs["stage"]) == ["estimate", "train", "train"]
    assert epochs["sinkhorn_row_residual"].notna().all() and epochs["reliable_frac"].notna().all()


# --- two DDP workers per cell ----------------------------------------------------------------------------------

def test_two_workers_per_cell(tmp_path):
    out = run_grid("--preset", "smoke", "--set", "variant=records+mixup", "--set", "dataset=cifar10",
                   "--workers-per-trial", "2", "--cpus-per-trial", "2", "--storage", str(tmp_path), "--name", "ddp")
    ray_stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs, _ = assert_complete(tmp_path / "ddp", 1)
    assert runs["num_workers_per_trial"].tolist() == [2]
