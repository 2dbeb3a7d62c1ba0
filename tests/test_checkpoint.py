"""Checkpoints are data, never code: a crafted pickle runs nothing; a torn latest file falls back to the previous
one; when none loads, the error names the files; --resume on an empty folder is an error."""

import pickle
from pathlib import Path

import pytest
import torch

from trainables import train as train_cli
from trainables.checkpoint import (
    FILENAME,
    FORMAT,
    PREV_FILENAME,
    VERSION,
    CheckpointError,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from trainables.config import RunOptions, TrialConfig
from trainables.loop import fit


def _touch(path: str) -> None:
    Path(path).write_text("code ran")


class Payload:
    """An object whose unpickling calls _touch(marker): what an attacker's `os.system` would be."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _touch, (self.marker,)


def test_a_crafted_pickle_executes_nothing(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / FILENAME
    torch.save({"format": FORMAT, "version": VERSION, "model": Payload(marker)}, evil)
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is live: a plain unpickle runs it ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {evil}") as refused:
        load_checkpoint(evil)
    assert not marker.exists()  # ... loading the checkpoint did not
    message = str(refused.value)  # one line naming what the file refers to, and no advice to load it unsafely
    assert "_touch" in message and "nothing in it was run" in message and "\n" not in message
    assert "will likely succeed" not in message
    with pytest.raises(CheckpointError, match=str(evil)):
        load_latest(evil)
    assert not marker.exists()


def _save(path: Path, epoch: int) -> None:
    save_checkpoint(path, config={"a": 1, "faithful": ()}, config_hash="h", stage="train", epoch=epoch,
                    model={"w": torch.ones(2)}, optimizer={}, scheduler={}, method={"queue_rows": 3, "stage": "x"},
                    history=[{"epoch": epoch - 1, "top1": 1.5, "prior_est": [0.5, 0.5], "loss_neg": None}])


def test_previous_checkpoint_is_kept_and_used_when_the_latest_is_torn(tmp_path, capsys):
    latest = tmp_path / FILENAME
    _save(latest, 1)
    assert not (tmp_path / PREV_FILENAME).exists()
    _save(latest, 2)
    assert load_checkpoint(tmp_path / PREV_FILENAME)["epoch"] == 1 and load_checkpoint(latest)["epoch"] == 2
    assert not list(tmp_path.glob(".*.tmp"))
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # torn: a crash mid-copy on a foreign filesystem
    payload, source = load_latest(latest)
    assert payload["epoch"] == 1 and source == tmp_path / PREV_FILENAME
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and str(latest) in err and str(source) in err
    (tmp_path / PREV_FILENAME).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_latest(latest)
    assert str(latest) in str(info.value) and str(tmp_path / PREV_FILENAME) in str(info.value)


SMALL = ["--dataset", "cifar10", "--rho", "10", "--q", "0.3", "--arch", "small-cnn", "--batch-size", "32",
         "--img-max", "60", "--test-per-class", "20", "--data-root", "synthetic", "--num-workers", "0", "--quiet"]


def test_cli_resume_errors_are_one_line_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "typo"
    with pytest.raises(SystemExit):
        train_cli.main([*SMALL, "--epochs", "1", "--out", str(missing), "--resume"])
    err = capsys.readouterr().err
    assert f"no run in {missing}" in err and not missing.exists()
    run = tmp_path / "run"
    assert train_cli.main([*SMALL, "--epochs", "2", "--out", str(run)]) == 0
    (run / ".checkpoint.pt.stray.tmp").write_bytes(b"half")  # what a killed writer leaves
    (run / FILENAME).write_bytes((run / FILENAME).read_bytes()[:100])
    (run / PREV_FILENAME).write_bytes(b"")
    capsys.readouterr()
    assert train_cli.main([*SMALL, "--epochs", "2", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read checkpoint") and str(run / FILENAME) in err and "Traceback" not in err
    assert not (run / ".checkpoint.pt.stray.tmp").exists()


def test_resume_from_the_previous_checkpoint_replays_the_lost_epoch(tmp_path):
    cfg = TrialConfig(dataset="cifar10", rho=10, q=0.3, img_max=60, test_per_class=20, arch="small-cnn", epochs=2,
                      batch_size=32, records=True)
    opts = RunOptions(data_root="synthetic", out_dir=str(tmp_path), num_workers=0, verbose=False)
    straight = fit(cfg, opts)
    (tmp_path / FILENAME).write_bytes(b"\0" * 64)  # the last epoch's checkpoint is lost: resume from the one before
    resumed = fit(cfg, opts, resume_from=tmp_path / FILENAME)
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    assert [r["top1"] for r in resumed.history] == [r["top1"] for r in straight.history]  # the same epoch again
    assert load_checkpoint(tmp_path / FILENAME)["epoch"] == 2
