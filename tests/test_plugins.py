"""Methods are plug-ins: the registry, hash compatibility with sweeps written before it, and a method that lives in a
test only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from analysis.load import load_sweep
from sweep.grids import PRESETS, parse_set, variants
from sweep.results import SweepStore, finished_hashes, read_sweep_manifest, write_results, write_sweep_manifest
from trainables.config import ConfigError, TrialConfig
from trainables.methods import REGISTRY

DATA = Path(__file__).parent / "data"


def test_configs_written_before_the_registry_keep_their_hash():
    """config.json / manifest cells of the flat era (SoLar's fields flat, None outside SoLar) load and hash alike:
    124 configs (the smoke, quick and paper presets and some hand-set SoLar, faithful and bf16 cells), generated
    with the code at main d420fc5."""
    table = json.loads((DATA / "config_hashes_v1.json").read_text())["cells"]
    assert len(table) == 124 and {c["config"]["method"] for c in table} == {"corr", "solar"}
    for entry in table:
        cfg = TrialConfig.from_dict(entry["config"])
        assert cfg.config_hash == entry["config_hash"], entry["config"]
        assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    # today's presets still produce the same cells with the PIL views they had then (the default is 'tensor' now)
    old = {c["config_hash"] for c in table}
    for name in ("smoke", "quick", "paper"):
        assert {c.config_hash for c in PRESETS[name].with_override(*parse_set("augment=pil")).cells()} <= old
        assert {c.augment for c in PRESETS[name].cells()} == {"tensor"}


def test_a_sweep_written_before_the_registry_is_still_finished(tmp_path):
    """A real two-cell sweep (CORR and SoLar, smoke settings) written by the code at main d420fc5: its cells are
    recognised as finished, its Parquet files rebuild with the same hashes and statuses, and the analysis reads
    them."""
    shutil.copytree(DATA / "sweep_v1", tmp_path / "v1")
    store = SweepStore(str(tmp_path), "v1")
    cells = [TrialConfig.from_dict(c) for c in read_sweep_manifest(store)["cells"]]
    assert [c.method for c in cells] == ["corr", "solar"]
    assert finished_hashes(store, cells) == {c.config_hash for c in cells}
    runs, epochs = write_results(store)
    assert runs.column("status").to_pylist() == ["finished", "finished"]
    assert set(runs.column("config_hash").to_pylist()) == {c.config_hash for c in cells}
    assert epochs.num_rows == 5  # CORR 2 epochs, SoLar 1 + 2
    sweep = load_sweep(DATA / "sweep_v1")  # the old files themselves, as written then
    assert sorted(sweep.runs["method"]) == ["corr", "solar"]


def test_stored_configs_without_augment_are_pil_and_user_input_gets_tensor(tmp_path):
    """`augment` came after these files: stored, a config without it means the PIL views it was trained with (and
    keeps its hash); typed in (CLI, grids), it means today's default, the tensor views."""
    entry = json.loads((DATA / "config_hashes_v1.json").read_text())["cells"][0]
    assert "augment" not in entry["config"]
    stored = TrialConfig.from_dict(entry["config"])
    assert stored.augment == "pil" and stored.config_hash == entry["config_hash"]
    typed = TrialConfig.from_dict(entry["config"], stored=False)
    assert typed.augment == "tensor" == TrialConfig().augment and typed.config_hash != entry["config_hash"]
    assert typed.replace(augment="pil") == stored
    # resuming the old sweep: its saved cells are pil, all finished, and the same grid (not refused)
    shutil.copytree(DATA / "sweep_v1", tmp_path / "v1")
    store = SweepStore(str(tmp_path), "v1")
    manifest = read_sweep_manifest(store)
    cells = [TrialConfig.from_dict(c) for c in manifest["cells"]]
    assert {c.augment for c in cells} == {"pil"} and finished_hashes(store, cells) == {c.config_hash for c in cells}
    rewritten = write_sweep_manifest(store, cells, manifest["settings"])
    assert [TrialConfig.from_dict(c) for c in rewritten["cells"]] == cells


def test_switches_a_method_does_not_implement_are_refused():
    """One training, one hash: a switch the method ignores would give it a second identity."""
    for name, spec in REGISTRY.items():
        for switch, value in (("records", True), ("mixup", True), ("oracle_la", "disamb")):
            if switch not in spec.switches:
                with pytest.raises(ConfigError, match=f"{switch}=.*does not apply to method='{name}'"):
                    TrialConfig(method=name, **{switch: value})
    with pytest.raises(ConfigError, match="applies to method='solar' only"):
        TrialConfig.from_dict(dict(method="corr", solar_tau=0.5))
    # every variant the methods declare is a valid config of its method
    for name, fields in variants().items():
        assert TrialConfig(**fields).method == fields["method"], name


def test_records_gain_table_pairs_each_records_run_with_its_plain_run():
    import pandas as pd

    from analysis.tables import records_gain, records_gain_tidy
    from sweep.schema import RUNS_SCHEMA
    from tests.analysis_fixtures import fixture_rows

    runs = pd.DataFrame(fixture_rows()[0], columns=RUNS_SCHEMA.names)
    tidy = records_gain_tidy(runs, "CIFAR-10-LT")
    assert set(tidy["method"]) == {"CORR"}  # Mixup and Oracle-LA runs are not pairs
    gain = tidy[tidy["kind"] == "gain (RECORDS − plain)"].set_index(["rho", "q"])
    # the fixture puts CORR + RECORDS 10 points above CORR in every cell and seed
    assert gain["mean"].tolist() == [10.0] * 4
    assert gain.loc[(100.0, 0.5), "n"] == 1 and gain.loc[(50.0, 0.3), "n"] == 2  # a failed +RECORDS run drops out
    plain = tidy[tidy["kind"] == "plain"].set_index(["rho", "q"])
    assert plain.loc[(50.0, 0.3), "mean"] == pytest.approx(70.0 + 0.5)  # mean over seed offsets -1 and +2
    wide = records_gain(runs, "CIFAR-10-LT")
    assert wide.shape == (3, 4) and wide.attrs["title"].startswith("CIFAR-10-LT: what RECORDS adds")
    assert records_gain(runs.assign(records=False), "CIFAR-10-LT").empty


# --- a method that exists in this test only ------------------------------------------------------------------------

TOY = '''
"""A toy PLL method: soft cross-entropy on the weak view against fixed uniform-over-candidates targets."""
import dataclasses

import torch
import torch.nn.functional as F

from trainables.methods import MethodSpec, PLLMethod, register
from trainables.methods.corr import initial_confidences


@dataclasses.dataclass(frozen=True)
class ToyParams:
    scale: float = 1.0
    """Multiplies the loss."""


class Toy(PLLMethod):
    def __init__(self, cfg, candidates, class_counts, device, comm=None):
        self.cfg = cfg
        self.confidences = initial_confidences(candidates.to(device))
        self.steps_after = 0

    def train_step(self, model, x_weak, x_strong, idx, epoch, step):
        logits, _ = model(x_weak)
        loss = -(self.confidences[idx] * F.log_softmax(logits, 1)).sum(1).mean() * self.cfg.params.scale
        return loss, {"loss": loss.detach(), "toy_steps": torch.tensor(1.0)}

    def after_step(self, model, epoch, step):
        self.steps_after += 1

    def state_dict(self):
        return {"confidences": self.confidences.cpu(), "steps_after": self.steps_after}

    def load_state_dict(self, state):
        self.confidences = state["confidences"]
        self.steps_after = state["steps_after"]


SPEC = register(MethodSpec(name="toy", display="Toy", impl=Toy, params=ToyParams, param_prefix="toy_",
                           variants={"toy": {}}, epoch_columns={"toy_steps": "mean of 1 per step (always 1)"},
                           cost=lambda cfg, n, per_epoch, n_test: (per_epoch * cfg.epochs, n_test * cfg.epochs)))
'''


@pytest.fixture(scope="module")
def toy_module(tmp_path_factory):
    """toy_method.py in a folder on sys.path and PYTHONPATH, named in RECORDS_SWEEP_METHODS (for subprocesses and
    Ray workers); registered here by importing it. Unregistered afterwards."""
    import importlib
    import os
    import sys

    from trainables.methods import PLUGIN_ENV, unregister

    folder = tmp_path_factory.mktemp("plugin")
    (folder / "toy_method.py").write_text(TOY)
    sys.path.insert(0, str(folder))
    env = {**os.environ, PLUGIN_ENV: "toy_method",
           "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    importlib.import_module("toy_method")
    yield env
    unregister("toy")
    sys.path.remove(str(folder))
    sys.modules.pop("toy_method", None)


TOY_CELL = ["--set", "variant=toy", "--set", "dataset=cifar10", "--set", "toy_scale=0.5", "--set", "epochs=1"]


def test_a_test_only_method_trains_through_the_cli(toy_module, tmp_path):
    import pyarrow.parquet as pq

    from trainables.train import main

    out = tmp_path / "run"
    rc = main(["--method", "toy", "--toy-scale", "0.5", "--dataset", "cifar10", "--rho", "10", "--img-max", "40",
               "--test-per-class", "5", "--arch", "small-cnn", "--epochs", "2", "--batch-size", "16",
               "--data-root", "synthetic", "--out", str(out), "--num-workers", "0", "--quiet"])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "toy" and config["toy_scale"] == 0.5
    cfg = TrialConfig.from_dict(config)
    assert cfg.params.scale == 0.5 and cfg.describe().endswith("Toy seed=123")
    assert TrialConfig.from_dict({**config, "toy_scale": 1.0}).config_hash != cfg.config_hash
    epochs = pq.read_table(out / "epochs.parquet").to_pandas()
    assert epochs["toy_steps"].tolist() == [1.0, 1.0]  # the method's own column survives into the record
    import torch

    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    steps = len(epochs) * (sum(int(40 * 0.1 ** (c / 9)) for c in range(10)) // 16)
    assert ckpt["method"]["steps_after"] == steps  # after_step ran once per optimiser step


def test_a_test_only_method_in_a_dry_run(toy_module):
    """`run_grid.py --dry-run` lists and costs the method's cells; the method is known to the subprocess through
    RECORDS_SWEEP_METHODS alone."""
    import subprocess
    import sys

    run_grid = [sys.executable, str(Path(__file__).resolve().parents[1] / "sweep" / "run_grid.py"),
                "--preset", "smoke", *TOY_CELL]
    dry = subprocess.run([*run_grid, "--dry-run"], capture_output=True, text=True, timeout=120, env=toy_module)
    assert dry.returncode == 0, dry.stderr
    assert "1 cells" in dry.stdout and "Toy seed=123" in dry.stdout


@pytest.mark.slow
def test_a_test_only_method_runs_a_real_sweep(toy_module, tmp_path):
    """A one-cell sweep on a local Ray, into Parquet; the method is known to the driver and the Ray workers through
    RECORDS_SWEEP_METHODS alone."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    run_grid = [sys.executable, str(Path(__file__).resolve().parents[1] / "sweep" / "run_grid.py"),
                "--preset", "smoke", *TOY_CELL]
    ray = ["--storage", str(tmp_path), "--name", "toy", "--data-root", "synthetic", "--no-dashboard",
           "--num-cpus", "2", "--object-store-mb", "128"]
    try:
        out = subprocess.run([*run_grid, *ray], capture_output=True, text=True, timeout=600, env=toy_module)
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = pq.read_table(tmp_path / "toy" / "runs.parquet").to_pandas()
    epochs = pq.read_table(tmp_path / "toy" / "epochs.parquet").to_pandas()
    assert runs["method"].tolist() == ["toy"] and runs["toy_scale"].tolist() == [0.5]
    assert runs["status"].tolist() == ["finished"] and epochs["toy_steps"].tolist() == [1.0]
