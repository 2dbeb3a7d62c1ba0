"""Grids without Ray: presets, overrides, grid files, validation, cost estimate, resource check, CLI refusals."""

import subprocess
import sys
from pathlib import Path

import pytest

from sweep.grids import PRESETS, GridError, apply_override, cell_cost, describe_cells, load_grid_file, parse_set
from sweep.tune import ResourceError, SweepSettings, check_fits
from trainables.config import TrialConfig

RUN_GRID = str(Path(__file__).resolve().parents[1] / "sweep" / "run_grid.py")


def test_paper_preset_covers_the_tables():
    cells = PRESETS["paper"].cells()
    assert len(cells) == 18 * 6  # (6 CIFAR-10-LT + 6 CIFAR-100-LT + 6 CIFAR-100-LT-NU) x 5 CORR-family + SoLar
    solar = [c for c in cells if c.method == "solar"]
    assert len(solar) == 18
    assert {(c.dataset, c.params.est_epochs) for c in solar} == {("cifar10", 100), ("cifar100", 20)}
    assert {(c.dataset, c.nu) for c in cells} == {("cifar10", False), ("cifar100", False), ("cifar100", True)}
    assert {c.q for c in cells if c.dataset == "cifar10"} == {0.3, 0.5, 0.7}
    assert {c.q for c in cells if c.dataset == "cifar100"} == {0.03, 0.05, 0.07}
    assert all(c.epochs == 800 and c.arch == "resnet18" and c.seed == 123 for c in cells)
    assert len({c.config_hash for c in cells}) == len(cells)
    assert len(PRESETS["paper"].with_seeds((1, 2, 3)).cells()) == 3 * len(cells)


def test_set_narrows_axes_it_has_and_overrides_fields_it_does_not():
    grid = PRESETS["paper"].with_override(*parse_set("q=0.3,0.5")).with_override(*parse_set("records=true"))
    cells = grid.cells()
    assert {c.q for c in cells} == {0.3, 0.5} and all(c.records for c in cells) and len(cells) == 2 * 2 * 2
    quick = PRESETS["quick"].with_override(*parse_set("epochs=7")).cells()
    assert {c.epochs for c in quick} == {7}
    two = PRESETS["quick"].with_override(*parse_set("variant=records")).with_override(*parse_set("seed=1,2")).cells()
    assert len(two) == 2 and {c.seed for c in two} == {1, 2} and all(c.records for c in two)


def test_set_errors_name_the_key_and_value():
    with pytest.raises(GridError, match="unknown grid key 'qq'"):
        parse_set("qq=1")
    with pytest.raises(GridError, match=r"\[0.3\] narrow the grid but \[0.9\]"):
        PRESETS["paper"].with_override("q", (0.3, 0.9)).cells()
    with pytest.raises(GridError, match="q=1.5"):
        PRESETS["quick"].with_override("q", (1.5,)).cells()
    with pytest.raises(GridError, match="variant='nope'"):
        apply_override([{}], "variant", ("nope",))


def test_grid_files(tmp_path):
    (tmp_path / "g.yaml").write_text(
        "name: mine\nbase: {arch: small-cnn, epochs: 3}\nseeds: [1, 2]\n"
        "blocks:\n  - {dataset: cifar10, rho: [50, 100], q: 0.3, variant: [corr, records]}\n")
    cells = load_grid_file(tmp_path / "g.yaml").cells()
    assert len(cells) == 2 * 2 * 2 and {c.rho for c in cells} == {50, 100}
    (tmp_path / "g.toml").write_text('extends = "quick"\n[set]\nvariant = ["records"]\nfaithful = ["test_norm"]\n')
    cells = load_grid_file(tmp_path / "g.toml").cells()
    assert len(cells) == 1 and cells[0].faithful == ("test_norm",)
    (tmp_path / "bad.yaml").write_text("blocks:\n  - {dataset: cifar10, rhoo: 5}\n")
    with pytest.raises(GridError, match="unknown grid key 'rhoo'"):
        load_grid_file(tmp_path / "bad.yaml")
    with pytest.raises(GridError, match="does not exist"):
        load_grid_file(tmp_path / "none.yaml")


def test_cost_matches_method_md_table():
    # METHOD.md §12.2: C10 rho=50: CORR/RECORDS 22.1 M fwd+bwd image-passes, Mixup 44.2 M, test 8.0 M forward
    corr = cell_cost(TrialConfig(dataset="cifar10", rho=50, records=True))
    mix = cell_cost(TrialConfig(dataset="cifar10", rho=50, records=True, mixup=True))
    assert corr["n_train"] == 13996
    assert corr["fwd_bwd"] / 1e6 == pytest.approx(22.1, abs=0.05)
    assert mix["fwd_bwd"] / 1e6 == pytest.approx(44.2, abs=0.05)
    assert corr["fwd_only"] / 1e6 == pytest.approx(8.0)
    text = describe_cells(PRESETS["paper"].cells())
    assert "108 cells" in text and "GPU-hours" in text


def test_resource_check_refuses_with_numbers():
    two_cpus = [{"CPU": 2.0}]
    assert check_fits(SweepSettings(data_root="x", cpus_per_trial=1), two_cpus) == 2
    assert check_fits(SweepSettings(data_root="x", cpus_per_trial=2, workers_per_trial=2), two_cpus) == 1
    with pytest.raises(ResourceError, match=r"3 CPU and 0 GPU, but the cluster has 2 CPU and 0 GPU"):
        check_fits(SweepSettings(data_root="x", cpus_per_trial=3), two_cpus)
    with pytest.raises(ResourceError, match="1 GPU, but the cluster has 2 CPU and 0 GPU"):
        check_fits(SweepSettings(data_root="x", gpus_per_trial=1), two_cpus)
    with pytest.raises(ResourceError, match="cannot share a GPU"):
        check_fits(SweepSettings(data_root="x", gpus_per_trial=1, workers_per_trial=2, cpus_per_trial=2),
                   [{"CPU": 8, "GPU": 4}])
    # a quarter GPU per one-worker trial packs four trials on a GPU
    assert check_fits(SweepSettings(data_root="x", gpus_per_trial=0.25, cpus_per_trial=1), [{"CPU": 16, "GPU": 1}]) == 4


def _run_grid(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, RUN_GRID, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _main(capsys, *args) -> tuple[int, str, str]:
    """run_grid's main in this process (the import is paid once, not per case): (exit code, stdout, stderr)."""
    from sweep.run_grid import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_dry_run_and_refusals(tmp_path, capsys):
    out = _run_grid("--preset", "paper", "--dry-run")  # once as the README runs it: a script
    assert out.returncode == 0 and "108 cells" in out.stdout
    code, _, err = _main(capsys, "--preset", "paper", "--set", "q=7", "--dry-run")
    assert code == 2 and "q=7" in err
    # A dry run checks the per-trial settings as a launch would.
    code, _, err = _main(capsys, "--preset", "quick", "--dry-run", "--cpus-per-trial", "0")
    assert code == 2 and "cpus_per_trial=0" in err
    code, _, err = _main(capsys, "--preset", "quick", "--dry-run", "--workers-per-trial", "3")
    assert code == 2 and "batch_size=64" in err and "--workers-per-trial=3" in err
    code, _, err = _main(capsys, "--preset", "quick", "--data-root", str(tmp_path / "missing"), "--storage",
                         str(tmp_path))
    assert code == 2 and str(tmp_path / "missing") in err
    code, _, err = _main(capsys, "--preset", "quick", "--data-root", "synthetic", "--storage", str(tmp_path),
                         "--cpus-per-trial", "0")
    assert code == 2 and "cpus_per_trial=0" in err
    code, _, err = _main(capsys, "--resume", "--name", "nothing", "--storage", str(tmp_path))
    assert code == 2 and "nothing to resume" in err
    assert not any(tmp_path.glob("*/runs.parquet"))  # nothing started, nothing written


def test_set_augment_switches_every_cell_to_the_pil_views_and_their_hashes():
    tensor = PRESETS["quick"].cells()  # grid cells that do not name augment get the default
    pil = PRESETS["quick"].with_override(*parse_set("augment=pil")).cells()
    assert {c.augment for c in pil} == {"pil"} and {c.augment for c in tensor} == {"tensor"}
    assert not {c.config_hash for c in pil} & {c.config_hash for c in tensor}
    # pil cells hash without the key, as every config did before it existed; tensor cells hash it
    assert all("augment" not in c.hash_dict() for c in pil) and all("augment" in c.hash_dict() for c in tensor)
    with pytest.raises(GridError, match="augment"):
        PRESETS["quick"].with_override(*parse_set("augment=gpu")).cells()


def test_log_to_names_the_trackers_and_refuses_others():
    from sweep.trackers import DEFAULT_LOG_TO, parse_log_to

    assert parse_log_to(DEFAULT_LOG_TO) == ("tensorboard",)
    assert parse_log_to("MLflow, wandb,mlflow") == ("mlflow", "wandb")
    assert parse_log_to("none") == () and parse_log_to("") == ()
    with pytest.raises(ValueError, match=r"unknown tracker\(s\) \['comet'\]"):
        parse_log_to("tensorboard,comet")
    out = subprocess.run([sys.executable, RUN_GRID, "--preset", "smoke", "--log-to", "neptune", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: --log-to 'neptune': unknown tracker")
