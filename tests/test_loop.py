"""The training loop: bit-identical resume, NaN stop, run files, and the CLI's contract."""

import json
import math

import pandas as pd
import pytest
import torch
from device_transfers import DeviceTransfers

from trainables import train as train_cli
from trainables.checkpoint import load_checkpoint
from trainables.config import RunOptions, TrialConfig
from trainables.data.augment import normalization
from trainables.data.loaders import DeviceTrainBatches, EpochBatchSampler
from trainables.loop import ResumeMismatch, TrainingDiverged, build_optimizer, fit, train_steps
from trainables.methods import create_method
from trainables.models import ModelHandle, create_model

TIMING = {"epoch_s", "eval_s", "images_per_s"}

SMALL = dict(dataset="cifar10", rho=10, q=0.3, img_max=60, test_per_class=20, arch="small-cnn", epochs=3,
             batch_size=32)


class Stop(Exception):
    pass


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("kwargs", [dict(records=True, mixup=True), dict(oracle_la="loss"),
                                    dict(records=True, mixup=True, augment="pil")])
def test_resume_is_bit_identical(tmp_path, kwargs):
    cfg = TrialConfig(**SMALL, **kwargs)
    straight = fit(cfg, RunOptions(data_root="synthetic", out_dir=str(tmp_path / "a"), num_workers=0,
                                   verbose=False))

    def stop_after_first(row, ckpt):
        if row["epoch"] == 0:
            raise Stop

    with pytest.raises(Stop):
        fit(cfg, RunOptions(data_root="synthetic", out_dir=str(tmp_path / "b"), num_workers=0, verbose=False),
            on_epoch=stop_after_first)
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["config_hash"] == cfg.config_hash and len(ckpt["history"]) == 1
    resumed = fit(cfg, RunOptions(data_root="synthetic", out_dir=str(tmp_path / "b"), num_workers=1, verbose=False),
                  resume_from=tmp_path / "b" / "checkpoint.pt")

    assert _strip(resumed.history) == _strip(straight.history)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert torch.equal(straight.method.confidences, resumed.method.confidences)
    assert torch.equal(straight.method.mu, resumed.method.mu)
    epochs = pd.read_parquet(tmp_path / "b" / "epochs.parquet")
    assert epochs["epoch"].tolist() == [0, 1, 2]
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == cfg.to_dict()


def test_resume_refuses_another_config(tmp_path):
    cfg = TrialConfig(**{**SMALL, "epochs": 1})
    fit(cfg, RunOptions(data_root="synthetic", out_dir=str(tmp_path), num_workers=0, verbose=False))
    other = cfg.replace(q=0.5)
    with pytest.raises(ResumeMismatch, match=r"q: 0\.3 != 0\.5"):
        fit(other, RunOptions(data_root="synthetic", num_workers=0, verbose=False),
            resume_from=tmp_path / "checkpoint.pt")


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    cfg = TrialConfig(**{**SMALL, "epochs": 2, "lr": 1e30})
    with pytest.raises(TrainingDiverged, match="training loss is nan"):
        fit(cfg, RunOptions(data_root="synthetic", out_dir=str(tmp_path), num_workers=0, verbose=False))


def test_metrics_row_is_complete_and_consistent(tmp_path):
    cfg = TrialConfig(**{**SMALL, "epochs": 1, "records": True})
    result = fit(cfg, RunOptions(data_root="synthetic", num_workers=0, verbose=False))
    row = result.history[0]
    k = 10
    assert len(row["prior_est"]) == k and math.isclose(sum(row["prior_est"]), 1.0, rel_tol=1e-6)
    assert len(row["per_class_acc"]) == k
    assert row["top1"] == pytest.approx(sum(row["per_class_acc"]) / k)  # balanced test set: mean = overall
    for name in ("top1", "top1_raw", "top5", "many", "medium", "few", "pseudo_label_acc"):
        assert 0.0 <= row[name] <= 100.0, name
    assert row["top5"] >= row["top1"]
    assert row["lr"] == pytest.approx(0.01)
    assert row["prior_kl"] >= 0 and 0 < row["mmc"] <= 1


def test_cli_runs_and_guards_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--dataset", "cifar10", "--rho", "10", "--q", "0.3", "--records", "--arch", "small-cnn", "--epochs", "1",
            "--batch-size", "32", "--img-max", "60", "--test-per-class", "20", "--data-root", "synthetic",
            "--out", str(out), "--num-workers", "0"]
    assert train_cli.main(argv) == 0
    printed, err = capsys.readouterr()
    assert "epoch    1/1 top1" in printed
    assert "step" not in err, "stderr is no terminal here: no progress bar"
    assert (out / "checkpoint.pt").is_file() and (out / "epochs.parquet").is_file()
    with pytest.raises(SystemExit):
        train_cli.main(argv)  # the folder holds a run: refuse without --resume
    assert "pass --resume" in capsys.readouterr().err
    assert train_cli.main(argv + ["--resume"]) == 0  # finished: nothing left to do
    with pytest.raises(SystemExit):
        train_cli.main(argv[:-2] + ["--q", "1.5", "--out", str(tmp_path / "x")])
    assert "q=1.5" in capsys.readouterr().err


def test_cli_progress_bar_on_a_terminal_keeps_one_line_per_epoch(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["--dataset", "cifar10", "--rho", "10", "--q", "0.3", "--arch", "small-cnn", "--epochs", "2",
            "--batch-size", "32", "--img-max", "60", "--test-per-class", "20", "--data-root", "synthetic",
            "--out", str(tmp_path / "run"), "--num-workers", "0"]
    assert train_cli.main(argv) == 0
    out, err = capsys.readouterr()
    epoch_lines = [line.split(" top1")[0] for line in out.splitlines() if line.startswith("epoch")]
    assert epoch_lines == ["epoch    1/2", "epoch    2/2"]
    assert "epoch 1/2" in err and "epoch 2/2" in err and "step" in err  # the bar, per epoch, on stderr only


def test_cli_missing_data_root_is_a_clear_error(tmp_path, capsys):
    argv = ["--arch", "small-cnn", "--epochs", "1", "--data-root", str(tmp_path / "nowhere"), "--out",
            str(tmp_path / "run")]
    assert train_cli.main(argv) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_bf16_runs_the_backbone_in_bf16_and_keeps_the_method_in_fp32():
    from trainables.models import ModelHandle, create_model

    model = ModelHandle(create_model("small-cnn", 10, seed=0, precision="bf16"), "bf16")
    seen = {}

    def record_dtype(module, inputs, output):
        seen["dtype"] = output.dtype  # returns None: the hook leaves the output alone

    model.net.body[0].register_forward_hook(record_dtype)
    logits, feats = model(torch.randn(4, 3, 32, 32))
    assert seen["dtype"] == torch.bfloat16  # the convolutions ran under bf16 autocast
    assert logits.dtype == feats.dtype == torch.float32  # what the method sees is fp32
    cfg = TrialConfig(**{**SMALL, "epochs": 2, "records": True, "mixup": True, "precision": "bf16"})
    result = fit(cfg, RunOptions(data_root="synthetic", num_workers=0, verbose=False))
    assert result.method.confidences.dtype == torch.float32 and result.method.mu.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # master weights stay fp32
    assert all(math.isfinite(r["loss"]) for r in result.history)
    torch.testing.assert_close(result.method.confidences.sum(1), torch.ones(len(result.method.confidences)))


def test_tensor_views_train_like_pil_views_on_the_same_plans(tmp_path):
    """augment='tensor' feeds the same batches and the same per-sample draws; with no loader worker it must give
    a run of the same shape whose views differ from PIL's in at most a few rotate/shear pixels, so one epoch's
    losses agree closely. And augment is part of the trial's identity."""
    cfg = TrialConfig(**{**SMALL, "epochs": 1, "records": True, "augment": "pil"})
    tensor_cfg = cfg.replace(augment="tensor")
    assert tensor_cfg.config_hash != cfg.config_hash
    pil = fit(cfg, RunOptions(data_root="synthetic", num_workers=0, verbose=False)).history[0]
    ten = fit(tensor_cfg, RunOptions(data_root="synthetic", num_workers=0, verbose=False)).history[0]
    assert abs(pil["loss"] - ten["loss"]) < 1e-3 * abs(pil["loss"])


@pytest.mark.parametrize("kwargs", [dict(oracle_la="loss", mixup=True),
                                    dict(method="solar", params=dict(est_epochs=1, queue_batches=2)),
                                    dict(method="proden", records=True), dict(method="pico", records=True)],
                         ids=["oracle-la+mixup", "solar", "proden+records", "pico+records"])
def test_every_method_runs_on_both_view_paths_alike(kwargs):
    """The view path is below the methods: each method (CORR's above) trains an epoch on the PIL and on the tensor
    views of the same plans, and its loss terms agree as closely as the few differing rotate/shear pixels allow."""
    cfg = TrialConfig(**{**SMALL, "epochs": 1, "augment": "pil", **kwargs})
    runs = [fit(c, RunOptions(data_root="synthetic", num_workers=0, verbose=False)).history[0]
            for c in (cfg, cfg.replace(augment="tensor"))]
    terms = [k for k, v in runs[0].items() if k.startswith("loss") and isinstance(v, float)]
    assert "loss" in terms and set(terms) == {k for k in runs[1] if k.startswith("loss")}
    for term in terms:
        assert math.isfinite(runs[1][term])
        assert runs[1][term] == pytest.approx(runs[0][term], rel=1e-2, abs=1e-3), term


def test_resume_plan_skips_finished_stages_and_keeps_the_epoch_offset():
    from trainables.loop import resume_plan

    stages = [("estimate", 3), ("train", 5)]
    assert resume_plan(stages, None) == [("estimate", 3, 0, 0), ("train", 5, 0, 3)]
    assert resume_plan(stages, {"stage": "estimate", "epoch": 2}) == [("estimate", 3, 2, 0), ("train", 5, 0, 3)]
    assert resume_plan(stages, {"stage": "estimate", "epoch": 3}) == [("train", 5, 0, 3)]
    assert resume_plan(stages, {"stage": "train", "epoch": 4}) == [("train", 5, 4, 3)]
    assert resume_plan(stages, {"stage": "train", "epoch": 5}) == []


@pytest.mark.parametrize("fields", [dict(records=True), dict(records=True, mixup=True), dict(oracle_la="loss"),
                                    dict(method="proden", records=True), dict(method="pico", records=True)])
def test_training_steps_never_wait_for_the_device(fields):
    """The loop's steps with tensor views (views, normalisation, forward, loss, disambiguation, backward, SGD step)
    on the "meta" device: no value is read back to the host, and per views call the plan and the sample indices
    are the only copies sent (pinned on CUDA), plus Mixup's permutation per step, so on a GPU the host queues
    steps ahead. (SoLar is left out: its per-step selection has data-dependent shapes, one host read per step,
    as its code says.)"""
    cfg = TrialConfig(**SMALL, **fields)
    device, n, k = torch.device("meta"), 64, 10
    net = create_model(cfg.arch, k, seed=0, device=device)
    method = create_method(cfg, torch.ones(n, k, dtype=torch.bool), [n // k] * k, device)
    optimizer, _ = build_optimizer(cfg, net, list(method.extra_parameters(net)))
    model = ModelHandle(net, cfg.precision)
    sampler = EpochBatchSampler(n, 16, seed=0)
    batches = DeviceTrainBatches(torch.empty(n, 3, 32, 32, dtype=torch.uint8, device=device), sampler, seed=0)
    norm = normalization("cifar10", "train")
    train_steps(model, method, optimizer, batches, norm, device, cfg.upd_start)  # sends per-device constants once
    sampler.set_epoch(1)
    with DeviceTransfers() as seen:
        train_steps(model, method, optimizer, batches, norm, device, cfg.upd_start)
    assert seen.to_host == []
    assert len(seen.to_device) == 2 + (len(sampler) if cfg.mixup else 0)  # 64 samples: one views call
