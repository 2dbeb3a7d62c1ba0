"""`build_dataset` over every source: LT counts, NU superclass rates and shuffle keys, test subsets, normalisation;
and a real run on the shared CIFAR-10 copy."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cifar_files import write_cifar100_parquet, write_cifar100_pickles

from trainables import train as train_cli
from trainables.config import TrialConfig
from trainables.data.augment import CIFAR10_MEAN, CIFAR100_MEAN
from trainables.data.loaders import EpochBatchSampler, build_dataset
from trainables.data.longtail import class_counts, shuffle_counts
from trainables.data.sources import CIFAR100_COARSE_OF_FINE

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module", params=["pickles", "parquet"])
def cifar100_root(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    writer = write_cifar100_pickles if request.param == "pickles" else write_cifar100_parquet
    writer(root, per_class_train=20, per_class_test=3)
    return root


def test_cifar100_nu_from_files(cifar100_root):
    cfg = TrialConfig(dataset="cifar100", nu=True, rho=10, q=0.1, img_max=20, test_per_class=2, batch_size=32)
    data = build_dataset(cfg, str(cifar100_root))
    counts = shuffle_counts(class_counts(20, 100, 10), cfg.data_seed)  # the fix keys the shuffle on data_seed
    assert data.train.counts == counts
    assert np.bincount(data.train.labels, minlength=100).tolist() == counts
    coarse = np.asarray(CIFAR100_COARSE_OF_FINE)
    same = coarse[data.train.labels][:, None] == coarse[None, :]
    off = np.ones_like(same)
    off[np.arange(len(same)), data.train.labels] = False
    assert abs(data.train.candidates[same & off].mean() - 0.8) < 0.1  # 8q inside the superclass
    assert abs(data.train.candidates[~same].mean() - 0.1) < 0.02
    assert len(data.test_labels) == 200 and np.bincount(data.test_labels).tolist() == [2] * 100
    assert data.test_norm[0] == CIFAR100_MEAN


def test_faithful_nu_shuffle_uses_the_training_seed(cifar100_root):
    cfg = TrialConfig(dataset="cifar100", nu=True, rho=10, q=0.05, img_max=20, batch_size=32, seed=7,
                      faithful=("nu_shuffle",))
    data = build_dataset(cfg, str(cifar100_root))
    assert data.train.counts == shuffle_counts(class_counts(20, 100, 10), 7)
    assert data.train.counts != shuffle_counts(class_counts(20, 100, 10), 0)


def test_test_normalisation_and_batch_order_switches():
    fixed = build_dataset(TrialConfig(img_max=50, test_per_class=5, batch_size=32), "synthetic")
    faithful = build_dataset(TrialConfig(img_max=50, test_per_class=5, batch_size=32, faithful=("test_norm",)),
                             "synthetic")
    assert fixed.test_norm[0] == CIFAR10_MEAN and faithful.test_norm[0] == CIFAR100_MEAN
    assert fixed.train_norm == faithful.train_norm
    # the reference's DistributedSampler order: randperm seeded with 0 + epoch for every training seed
    a = EpochBatchSampler(100, 10, seed=123, faithful=True).permutation(3)
    b = EpochBatchSampler(100, 10, seed=5, faithful=True).permutation(3)
    assert np.array_equal(a, b)
    assert not np.array_equal(EpochBatchSampler(100, 10, seed=123).permutation(3),
                              EpochBatchSampler(100, 10, seed=5).permutation(3))


def test_batch_larger_than_the_lt_set_is_refused():
    n = sum(class_counts(50, 10, 100))
    with pytest.raises(ValueError, match=f"batch_size=256 exceeds the {n} training images"):
        build_dataset(TrialConfig(img_max=50, rho=100), "synthetic")


def test_sampler_shards_global_batches_over_ranks():
    whole = list(EpochBatchSampler(40, 8, seed=1))
    shards = [list(EpochBatchSampler(40, 8, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(whole) == 5 and all(len(s) == 5 for s in shards)
    for step in range(5):
        assert shards[0][step] + shards[1][step] == whole[step]  # same global batch, split in rank order
    with pytest.raises(ValueError, match="divide evenly"):
        EpochBatchSampler(40, 9, seed=1, world_size=2)


@pytest.mark.skipif(not (SHARED / "cifar10").is_dir(), reason=f"the shared CIFAR-10 copy is not at {SHARED}")
def test_one_epoch_on_the_shared_cifar10(tmp_path):
    out = tmp_path / "run"
    # a third of each class and of the test split keeps the real-data epoch cheap in CI; the full split sizes are
    # checked below without training
    argv = ["--dataset", "cifar10", "--rho", "100", "--q", "0.3", "--records", "--arch", "small-cnn", "--epochs", "1",
            "--img-max", "1666", "--test-per-class", "300",
            "--data-root", str(SHARED), "--out", str(out), "--num-workers", "1"]
    assert train_cli.main(argv) == 0
    rows = pd.read_parquet(out / "epochs.parquet")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["images_per_s"] > 0 and 0 <= row["top1"] <= 100 and len(row["per_class_acc"]) == 10
    ckpt_cfg = TrialConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert ckpt_cfg.rho == 100 and ckpt_cfg.records
    assert ckpt_cfg.img_max == 1666 and ckpt_cfg.test_per_class == 300
    assert len(build_dataset(ckpt_cfg, str(SHARED)).test_labels) == 3000
    data = build_dataset(dataclasses.replace(ckpt_cfg, img_max=None, test_per_class=None), str(SHARED))
    assert len(data.train.labels) == 12406 and len(data.test_labels) == 10000
