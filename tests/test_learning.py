"""A real training run on a small synthetic long-tailed problem (seeds fixed): RECORDS' prior estimate starts near
uniform and moves toward the true training prior, and RECORDS beats the plain method on the few-shot classes, for CORR
and for PRODEN (RECORDS as a plug-in)."""

import math

import pytest

from trainables.config import RunOptions, TrialConfig
from trainables.loop import fit

pytestmark = pytest.mark.slow

# CIFAR-10-shaped synthetic images, rho=100 with 500 images in the head class (N=1236), q=0.3, small CNN.
BASE = dict(dataset="cifar10", rho=100, q=0.3, img_max=500, test_per_class=100, arch="small-cnn", epochs=10,
            batch_size=64, lr=0.05)


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


@pytest.fixture(scope="module")
def runs():
    options = RunOptions(data_root="synthetic", num_workers=1, verbose=False)
    return {rec: fit(TrialConfig(**BASE, records=rec), options) for rec in (False, True)}


def test_prior_estimate_moves_from_uniform_toward_the_true_prior(runs):
    result = runs[True]
    true_prior = result.data.train.true_prior.tolist()
    uniform = [0.1] * 10
    first, last = result.history[0]["prior_est"], result.history[-1]["prior_est"]
    # mu starts at (1 - m) * f_bar with no bias correction, so after the first epoch the estimate is still near
    # uniform: much nearer to it than the true prior is (KL(true || uniform) = 0.66 here)
    assert _kl(first, uniform) < 0.25 * _kl(true_prior, uniform)
    # and it drifts toward the training prior: clearly closer at the end than uniform is
    assert _kl(true_prior, last) < 0.7 * _kl(true_prior, uniform)
    assert result.history[-1]["prior_kl"] < result.history[0]["prior_kl"]
    # the head class is estimated most probable, the tail least probable among the first and last classes
    assert last[0] > last[-1]


@pytest.fixture(scope="module")
def proden_runs():
    options = RunOptions(data_root="synthetic", num_workers=1, verbose=False)
    return {rec: fit(TrialConfig(**BASE, method="proden", records=rec), options) for rec in (False, True)}


def _few(result):  # mean few-shot accuracy (%) over the last three epochs: single epochs are noisy
    return sum(row["few"] for row in result.history[-3:]) / 3


def test_records_beats_corr_on_few_shot_classes(runs):
    corr, records = _few(runs[False]), _few(runs[True])
    # seen on this machine: CORR about 21, CORR+RECORDS about 36 (points); require a 5-point margin
    assert records >= corr + 5.0, (corr, records)
    assert runs[True].history[-1]["top1"] > runs[False].history[-1]["top1"]


def test_records_beats_proden_on_few_shot_classes(proden_runs):
    proden, records = _few(proden_runs[False]), _few(proden_runs[True])
    # seen on this machine: PRODEN about 10, PRODEN+RECORDS about 36 (points); require a 10-point margin
    assert records >= proden + 10.0, (proden, records)
    assert proden_runs[True].history[-1]["top1"] > proden_runs[False].history[-1]["top1"]
    assert proden_runs[True].history[-1]["prior_kl"] < proden_runs[True].history[0]["prior_kl"]
