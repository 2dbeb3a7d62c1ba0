"""Methods are plug-ins: the registry, hash compatibility with sweeps written before it, and a method that lives in a
test only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from analysis.load import load_sweep
from sweep.grids import PRESETS, variants
from sweep.results import SweepStore, finished_hashes, read_sweep_manifest, write_results
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
    # today's presets still produce the same cells
    old = {c["config_hash"] for c in table}
    for name in ("smoke", "quick", "paper"):
        assert {c.config_hash for c in PRESETS[name].cells()} <= old


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
