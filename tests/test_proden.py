"""PRODEN and its RECORDS / Oracle-LA / Mixup variants (docs/methods.md): invariants on small tensors and a small
real model."""

import pytest
import torch

from sweep.grids import cell_cost
from trainables.config import ConfigError, TrialConfig
from trainables.methods.corr import initial_confidences
from trainables.methods.proden import Proden, candidate_uniform_prior, proden_loss, proden_update
from trainables.methods.records import estimate_class_prior, update_feature_mean
from trainables.models import ModelHandle, create_model

K = 10


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _candidates(n, q=0.3, seed=0):
    g = _gen(seed)
    s = torch.rand(n, K, generator=g) < q
    y = torch.randint(0, K, (n,), generator=g)
    s[torch.arange(n), y] = True
    return s, y


def _setup(n=64, counts=None, **cfg_kwargs):
    cfg = TrialConfig(method="proden", arch="small-cnn", batch_size=16, **cfg_kwargs)
    s, y = _candidates(n)
    counts = counts or torch.bincount(y, minlength=K).clamp_min(1).tolist()
    method = Proden(cfg, s, counts, torch.device("cpu"))
    model = ModelHandle(create_model("small-cnn", K, seed=0))
    return cfg, method, model, s


def _x(seed, b=16):
    return torch.randn(b, 3, 32, 32, generator=_gen(seed))


def test_loss_gradient_is_p_minus_w_and_epoch0_loss_is_uniform_ce():
    s, _ = _candidates(8)
    w = initial_confidences(s)
    z = torch.randn(8, K, generator=_gen(1), requires_grad=True)
    loss = proden_loss(z, w)
    loss.backward()
    torch.testing.assert_close(z.grad, (torch.softmax(z.detach(), 1) - w) / 8)
    log_p = torch.log_softmax(z.detach(), 1)
    expected = -torch.stack([log_p[i, s[i]].mean() for i in range(8)]).mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_update_is_the_prediction_renormalised_over_the_mask_and_ignores_old_values():
    s, _ = _candidates(32)
    z = torch.randn(32, K, generator=_gen(2)) * 3
    w = proden_update(z, s)
    torch.testing.assert_close(w.sum(1), torch.ones(32))
    assert torch.all(w[~s] == 0)
    p = torch.softmax(z, 1)
    i = int(s.sum(1).argmax())
    k, j = s[i].nonzero()[:2, 0].tolist()
    torch.testing.assert_close(w[i, k] / w[i, j], p[i, k] / p[i, j])
    # a zero shift is exactly no shift; faithful arithmetic agrees in ordinary ranges
    assert torch.equal(proden_update(z, s, torch.zeros(K)), w)
    torch.testing.assert_close(proden_update(z, s, faithful=True), w)
    # where every candidate underflows, the reference's arithmetic divides 0 by 0; the default stays exact
    z_sat = torch.zeros(1, K)
    z_sat[0, 0] = 200.0
    m = torch.zeros(1, K, dtype=torch.bool)
    m[0, 1:3] = True
    assert torch.isnan(proden_update(z_sat, m, faithful=True)).all()
    torch.testing.assert_close(proden_update(z_sat, m), torch.tensor([[0, .5, .5] + [0.0] * 7]))


@pytest.mark.parametrize("kwargs", [{}, {"records": True}, {"mixup": True}, {"records": True, "mixup": True},
                                    {"oracle_la": "disamb"}, {"oracle_la": "loss"}, {"oracle_la": "posthoc"},
                                    {"proden_mask": "current", "faithful": ("disamb_arith",)}])
def test_rows_stay_normalised_inside_the_candidates(kwargs):
    params = {k[len("proden_"):]: kwargs.pop(k) for k in list(kwargs) if k.startswith("proden_")}
    cfg, method, model, s = _setup(params=params, **kwargs)
    opt = torch.optim.SGD(model.net.parameters(), lr=0.05)
    w0 = method.confidences.clone()
    method.train_step(model, _x(9), _x(9), torch.arange(16), epoch=0, step=0)
    assert torch.equal(method.confidences, w0)  # epoch 0: no update
    for step in range(4):
        idx = torch.arange(16) + 16 * step
        loss, logs = method.train_step(model, _x(step), _x(step + 50), idx, epoch=1, step=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        w = method.confidences
        torch.testing.assert_close(w.sum(1), torch.ones(len(w)), atol=1e-6, rtol=0)
        assert torch.all(w[~s] == 0)
        assert (logs["loss_mix"] > 0) == cfg.mixup
        torch.testing.assert_close(logs["loss"], logs["loss_ce"] + logs["loss_mix"])
    assert not torch.equal(method.confidences, w0)


def test_records_update_uses_adjusted_logits_but_the_loss_does_not():
    cfg, method, model, s = _setup(records=True)
    x, idx = _x(0), torch.arange(16)
    with torch.no_grad():
        z, feats = model(x)
    method.train_step(model, x, _x(1), idx, epoch=0, step=0)
    torch.testing.assert_close(method.mu, 0.1 * feats.mean(0), rtol=1e-5, atol=1e-6)  # one view, (1 - m) f_bar
    mu_before, w_old = method.mu.clone(), method.confidences[idx].clone()
    loss, logs = method.train_step(model, x, _x(1), idx, epoch=1, step=1)
    pi = estimate_class_prior(update_feature_mean(mu_before, feats.mean(0), 0.9), model.classifier.weight,
                              model.classifier.bias)
    torch.testing.assert_close(pi.sum(), torch.tensor(1.0))
    expected = torch.softmax((z - torch.log(pi + 1e-9)).masked_fill(~s[idx], float("-inf")), 1)
    torch.testing.assert_close(method.confidences[idx], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logs["loss_ce"], proden_loss(z, w_old), rtol=1e-5, atol=1e-6)  # raw logits
    # test time: z - log(pi_hat + eps); with mu = 0, pi_hat = softmax(b)
    zt = torch.randn(3, K, generator=_gen(5))
    pi_now = method.prior_estimate(model.classifier)
    torch.testing.assert_close(method.adjust_test_logits(zt, model.classifier), zt - torch.log(pi_now + 1e-9))
    torch.testing.assert_close(estimate_class_prior(torch.zeros(feats.shape[1]), model.classifier.weight,
                                                    model.classifier.bias), torch.softmax(model.classifier.bias, 0))


def test_oracle_with_a_uniform_prior_is_plain_proden():
    runs = {}
    for kwargs in ({}, {"oracle_la": "disamb"}):
        cfg, method, model, s = _setup(counts=[7] * K, **kwargs)
        opt = torch.optim.SGD(model.net.parameters(), lr=0.05)
        for step in range(3):
            loss, _ = method.train_step(model, _x(step), _x(step), torch.arange(16) + 16 * step, epoch=1, step=step)
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs[bool(kwargs)] = (method.confidences, method.adjust_test_logits(torch.randn(4, K, generator=_gen(3)),
                                                                               model.classifier))
    torch.testing.assert_close(runs[True][0], runs[False][0])
    assert torch.equal(runs[True][1].argmax(1), runs[False][1].argmax(1))


def test_prior_sources_and_config_rules():
    s, _ = _candidates(40)
    pi = candidate_uniform_prior(s)
    torch.testing.assert_close(pi.sum(), torch.tensor(1.0))
    torch.testing.assert_close(pi, initial_confidences(s).mean(0))
    cfg = TrialConfig.from_dict(dict(method="proden", oracle_la="disamb", proden_prior_source="candidate_uniform"))
    assert cfg.params.prior_source == cfg.to_dict()["proden_prior_source"] == "candidate_uniform"
    with pytest.raises(ConfigError, match="proden_prior_source='candidate_uniform': only Oracle-LA"):
        TrialConfig.from_dict(dict(method="proden", proden_prior_source="candidate_uniform"))
    with pytest.raises(ConfigError, match="proden_mask='x'"):
        TrialConfig.from_dict(dict(method="proden", proden_mask="x"))
    # PRODEN forwards one view: half CORR's image-passes
    corr, proden = TrialConfig(epochs=10), TrialConfig(method="proden", epochs=10)
    assert cell_cost(proden)["fwd_bwd"] * 2 == cell_cost(corr)["fwd_bwd"]
    assert proden.describe().endswith("PRODEN seed=123")
