"""Properties of the CORR family and RECORDS (METHOD.md §3-6, Appendix B), on small tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.comm import Comm
from trainables.config import TrialConfig
from trainables.loop import build_optimizer
from trainables.methods.corr import CorrFamily, CorrVariant, corr_loss, disambiguate, initial_confidences
from trainables.methods.mixup import draw_mixup, mix
from trainables.methods.records import RecordsPrior, estimate_class_prior, log_prior, update_feature_mean
from trainables.models import ModelHandle, create_model

K = 10


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _candidates(n, k=K, q=0.4, seed=0):
    g = _gen(seed)
    s = torch.rand(n, k, generator=g) < q
    y = torch.randint(0, k, (n,), generator=g)
    s[torch.arange(n), y] = True
    return s, y


def test_initial_confidences_uniform_over_candidates():
    s, _ = _candidates(50)
    w = initial_confidences(s)
    torch.testing.assert_close(w.sum(1), torch.ones(50))
    assert torch.all(w[~s] == 0)
    torch.testing.assert_close(w[s], (1.0 / s.sum(1, keepdim=True).float()).expand_as(w)[s])


def test_corr_loss_known_numbers():
    # One sample, 3 classes, confidences (0.5, 0.5, 0): neg term covers class 2 only.
    zw = torch.tensor([[1.0, 0.0, -1.0]])
    zs = torch.tensor([[0.0, 0.0, 0.0]])
    w = torch.tensor([[0.5, 0.5, 0.0]])
    neg, con = corr_loss(zw, zs, w)
    pw, ps = torch.softmax(zw, 1), torch.softmax(zs, 1)
    exp_neg = -math.log(1 - pw[0, 2].item() + 1e-9) - math.log(1 - ps[0, 2].item() + 1e-9)
    exp_con = sum(0.5 * (math.log(0.5) - math.log(p[0, j].item())) for p in (pw, ps) for j in (0, 1))
    assert neg.item() == pytest.approx(exp_neg, rel=1e-6)
    assert con.item() == pytest.approx(exp_con, rel=1e-6)


def test_corr_loss_batchmean_and_gradient_is_soft_ce():
    s, _ = _candidates(8)
    w = initial_confidences(s)
    z = torch.randn(8, K, generator=_gen(1), requires_grad=True)
    _, con = corr_loss(z, z.detach() * 0, w)
    con.backward()
    # d KL(w||softmax z)/dz = (softmax z - w) / B
    torch.testing.assert_close(z.grad, (torch.softmax(z.detach(), 1) - w) / 8)


@pytest.mark.parametrize("faithful", [False, True])
def test_disambiguation_is_normalised_geometric_mean_on_mask(faithful):
    s, _ = _candidates(64)
    zw, zs = torch.randn(64, K, generator=_gen(2)), torch.randn(64, K, generator=_gen(3))
    w = disambiguate(zw, zs, s, faithful=faithful)
    g = torch.sqrt(torch.softmax(zw, 1) * torch.softmax(zs, 1)) * s
    torch.testing.assert_close(w, g / g.sum(1, keepdim=True), rtol=1e-5, atol=1e-7)
    assert torch.all(w[~s] == 0)
    torch.testing.assert_close(w.sum(1), torch.ones(64), atol=1e-6, rtol=0)


def test_log_space_and_faithful_records_arithmetic_agree_without_underflow():
    s, _ = _candidates(64)
    zw, zs = torch.randn(64, K, generator=_gen(4)), torch.randn(64, K, generator=_gen(5))
    prior = torch.softmax(torch.randn(K, generator=_gen(6)), 0)
    a = disambiguate(zw, zs, s, log_prior(prior), faithful=False)
    b = disambiguate(zw, zs, s, log_prior(prior), faithful=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # rebalancing: dividing both views' probabilities by the prior
    p = torch.softmax(zw, 1) / prior * torch.softmax(zs, 1) / prior
    g = torch.sqrt(p) * s
    torch.testing.assert_close(a, g / g.sum(1, keepdim=True), rtol=1e-5, atol=1e-7)


def test_log_space_keeps_candidates_that_underflow_in_probability_space():
    s = torch.ones(1, 3, dtype=torch.bool)
    z = torch.tensor([[0.0, -60.0, 0.0]])
    # p ~ 4e-27 per view: the product ~2e-53 underflows float32, so the reference's arithmetic kills the candidate
    assert disambiguate(z, z, s, faithful=True)[0, 1] == 0
    # the geometric mean itself, ~4e-27, is representable: log space keeps it
    exact = disambiguate(z, z, s, faithful=False)[0, 1].item()
    assert exact == pytest.approx(math.exp(-60) / (2 + math.exp(-60)), rel=1e-4)


def test_uniform_oracle_prior_reduces_records_disambiguation_to_corr():
    s, _ = _candidates(32)
    zw, zs = torch.randn(32, K, generator=_gen(7)), torch.randn(32, K, generator=_gen(8))
    uniform = torch.full((K,), 1.0 / K)
    for faithful in (False, True):
        torch.testing.assert_close(disambiguate(zw, zs, s, log_prior(uniform), faithful),
                                   disambiguate(zw, zs, s, None, faithful), rtol=1e-5, atol=1e-7)


def test_prior_estimate():
    fc = torch.nn.Linear(16, K)
    mu = torch.zeros(16)
    torch.testing.assert_close(estimate_class_prior(mu, fc.weight, fc.bias), torch.softmax(fc.bias.detach(), 0))
    mu = torch.rand(16, generator=_gen(9))
    pi = estimate_class_prior(mu, fc.weight, fc.bias)
    assert pi.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(pi, torch.softmax(fc.weight.detach() @ mu + fc.bias.detach(), 0))
    z = torch.randn(4, K)
    torch.testing.assert_close(z - log_prior(pi), z - torch.log(pi + 1e-9))


def test_feature_mean_ema_starts_from_zero():
    f1, f2 = torch.rand(8), torch.rand(8)
    mu = update_feature_mean(None, f1, 0.9)
    torch.testing.assert_close(mu, 0.1 * f1)
    torch.testing.assert_close(update_feature_mean(mu, f2, 0.9), 0.9 * 0.1 * f1 + 0.1 * f2)


class _TwoRankComm(Comm):
    """A stand-in for rank 0 of two ranks, whose peer's batch features are `peer` (sums add up)."""

    def __init__(self, peer: torch.Tensor):
        self.peer = peer

    def all_reduce_sum(self, tensor):
        return tensor + torch.cat([self.peer.sum(dim=0), self.peer.new_tensor([len(self.peer)])])


def test_records_prior_averages_over_the_global_batch_and_round_trips():
    fc = torch.nn.Linear(8, K)
    mine, peer = torch.rand(5, 8, generator=_gen(1)), torch.rand(3, 8, generator=_gen(2))
    tracker = RecordsPrior(0.9, _TwoRankComm(peer))
    assert tracker.estimate(fc) is None and tracker.state() is None  # nothing before the first step
    tracker.update(mine)
    torch.testing.assert_close(tracker.mu, 0.1 * torch.cat([mine, peer]).mean(dim=0))  # 8 samples, not 5
    torch.testing.assert_close(tracker.estimate(fc), estimate_class_prior(tracker.mu, fc.weight, fc.bias))
    restored = RecordsPrior(0.9, Comm())
    restored.load(tracker.state(), torch.device("cpu"))
    assert torch.equal(restored.mu, tracker.mu)


def test_mixup_draws():
    lam, perm = draw_mixup(123, 4, 7, 0, 16, 4.0, torch.device("cpu"))
    lam2, perm2 = draw_mixup(123, 4, 7, 0, 16, 4.0, torch.device("cpu"))
    assert lam == lam2 and torch.equal(perm, perm2)
    assert sorted(perm.tolist()) == list(range(16))
    lams = [draw_mixup(1, 0, s, 0, 4, 4.0, torch.device("cpu"))[0] for s in range(300)]
    assert min(lams) >= 0.5 and max(lams) <= 1.0
    # Beta(4,4) folded at 0.5 has mean 0.5 + E|X - 0.5| ~= 0.623
    assert abs(np.mean(lams) - 0.623) < 0.02
    x = torch.arange(4.0)[:, None]
    torch.testing.assert_close(mix(x, 0.75, torch.tensor([1, 0, 3, 2])), 0.75 * x + 0.25 * x[[1, 0, 3, 2]])


@pytest.mark.parametrize("kwargs,expected", [
    ({}, CorrVariant(None, None, None, False, False)),
    ({"records": True}, CorrVariant("estimate", "estimate", None, True, False)),
    ({"records": True, "mixup": True}, CorrVariant("estimate", "estimate", None, True, True)),
    ({"mixup": True}, CorrVariant(None, None, None, False, True)),
    ({"oracle_la": "disamb"}, CorrVariant("oracle", "oracle", None, True, False)),
    ({"oracle_la": "loss"}, CorrVariant(None, None, "oracle", False, False)),
    ({"oracle_la": "posthoc"}, CorrVariant(None, "oracle", None, False, False)),
])
def test_variant_table(kwargs, expected):
    assert CorrVariant.from_config(TrialConfig(**kwargs)) == expected


def test_learning_rate_schedule_values():
    cfg = TrialConfig()
    model = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(cfg, model)
    lrs = []
    for _ in range(800):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01, rel=1e-12)
    assert lrs[400] == pytest.approx(0.005005, rel=1e-9)
    assert lrs[799] == pytest.approx(1.00385e-5, rel=1e-5)
    g = opt.param_groups[0]
    assert g["momentum"] == 0.9 and g["weight_decay"] == 1e-3 and not g["nesterov"]


# --- the method object on a real (small) model -------------------------------------------------------------------

def _method_and_model(n=64, **cfg_kwargs):
    cfg = TrialConfig(arch="small-cnn", batch_size=16, **cfg_kwargs)
    s, y = _candidates(n, q=0.3)
    counts = torch.bincount(y, minlength=K).clamp_min(1).tolist()
    method = CorrFamily(cfg, s, counts, torch.device("cpu"))
    model = ModelHandle(create_model("small-cnn", K, seed=0))
    return cfg, method, model, s


def _batch(seed, b=16):
    g = _gen(seed)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g)


def test_epoch_zero_leaves_confidences_unchanged_and_sets_mu():
    cfg, method, model, s = _method_and_model(records=True)
    w0 = method.confidences.clone()
    xw, xs = _batch(0)
    idx = torch.arange(16)
    with torch.no_grad():
        _, feats = model(torch.cat([xw, xs]))
    method.train_step(model, xw, xs, idx, epoch=0, step=0)
    assert torch.equal(method.confidences, w0)
    expected_mu = 0.1 * (0.5 * (feats[:16] + feats[16:])).mean(0)
    torch.testing.assert_close(method.mu, expected_mu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{}, {"records": True}, {"records": True, "mixup": True}, {"mixup": True},
                                    {"oracle_la": "disamb"}, {"oracle_la": "loss"}, {"oracle_la": "posthoc"},
                                    {"records": True, "faithful": ("disamb_arith",)}])
def test_update_keeps_rows_normalised_and_inside_the_support(kwargs):
    cfg, method, model, s = _method_and_model(**kwargs)
    opt = torch.optim.SGD(model.net.parameters(), lr=0.05)
    for step in range(4):
        xw, xs = _batch(step)
        idx = torch.arange(16) + 16 * step
        support_before = method.confidences > 0
        loss, logs = method.train_step(model, xw, xs, idx, epoch=1, step=step)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        w = method.confidences
        torch.testing.assert_close(w.sum(1), torch.ones(len(w)), atol=1e-6, rtol=0)
        assert torch.all(w[~s] == 0)  # never outside the original candidates
        if not CorrVariant.from_config(cfg).original_mask:
            assert torch.all(w[~support_before] == 0)  # CORR stays within its current support
        assert (logs["loss_mix"] > 0) == cfg.mixup
    assert not torch.equal(method.confidences, initial_confidences(s))


def test_test_time_adjustment_per_variant():
    z = torch.randn(5, K, generator=_gen(11))
    for kwargs, adjusted in [({}, False), ({"records": True}, True), ({"oracle_la": "disamb"}, True),
                             ({"oracle_la": "loss"}, False), ({"oracle_la": "posthoc"}, True)]:
        cfg, method, model, s = _method_and_model(**kwargs)
        xw, xs = _batch(0)
        method.train_step(model, xw, xs, torch.arange(16), epoch=0, step=0)
        out = method.adjust_test_logits(z, model.classifier)
        assert (not torch.equal(out, z)) == adjusted, kwargs
        if kwargs.get("oracle_la") in ("disamb", "posthoc"):
            torch.testing.assert_close(out, z - torch.log(method.oracle_prior + 1e-9))
        if kwargs.get("records"):
            pi = method.prior_estimate(model.classifier)
            torch.testing.assert_close(out, z - torch.log(pi + 1e-9))


def test_oracle_loss_mode_shifts_the_loss_logits():
    cfg, method, model, s = _method_and_model(oracle_la="loss")
    xw, xs = _batch(0)
    idx = torch.arange(16)
    w_old = method.confidences[idx].clone()
    with torch.no_grad():
        logits, _ = model(torch.cat([xw, xs]))
    loss, logs = method.train_step(model, xw, xs, idx, epoch=0, step=0)
    shift = torch.log(method.oracle_prior + 1e-9)
    neg, con = corr_loss(logits[:16] + shift, logits[16:] + shift, w_old)
    torch.testing.assert_close(logs["loss_neg"], neg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logs["loss_con"], con, rtol=1e-5, atol=1e-6)


def test_records_disambiguation_uses_the_estimated_prior():
    cfg, method, model, s = _method_and_model(records=True)
    xw, xs = _batch(0)
    idx = torch.arange(16)
    method.train_step(model, xw, xs, idx, epoch=0, step=0)  # sets mu
    mu_before = method.mu.clone()
    with torch.no_grad():
        logits, feats = model(torch.cat([xw, xs]))
    method.train_step(model, xw, xs, idx, epoch=1, step=1)
    mu = update_feature_mean(mu_before, (0.5 * (feats[:16] + feats[16:])).mean(0), 0.9)
    pi = estimate_class_prior(mu, model.classifier.weight, model.classifier.bias)
    lp = torch.log(pi + 1e-9)
    pw, ps = F.softmax(logits[:16] - lp, 1), F.softmax(logits[16:] - lp, 1)
    g = torch.sqrt(pw * ps) * s[idx]
    torch.testing.assert_close(method.confidences[idx], g / g.sum(1, keepdim=True), rtol=1e-4, atol=1e-6)


def test_faithful_corr_loss_replays_the_reference_gradient_bit_for_bit():
    """Where a non-candidate's 1 - p is below ~1e-6 the reference's softmax(z) and exp(log_softmax(z)) give different
    gradients of -log(|1 - p| + eps); faithful mode must take the reference's."""
    z = torch.tensor([[20.0, 3.0, 0.0, -1.0], [0.5, 18.0, -2.0, 1.0]], requires_grad=True)
    w = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.5, 0.0, 0.0, 0.5]])

    def reference(z):  # the reference's neg term for one view
        p = torch.softmax(z, 1)
        return (-torch.log(torch.abs(1 - p) + 1e-9) * (w == 0)).sum(1).mean()

    expected = torch.autograd.grad(2 * reference(z), z)[0]
    neg, _ = corr_loss(z, z, w, faithful=True)
    assert torch.equal(torch.autograd.grad(neg, z)[0], expected)
    neg_default, _ = corr_loss(z, z, w)
    assert not torch.equal(torch.autograd.grad(neg_default, z)[0], expected)  # the case is a real difference
