"""SoLar (METHOD.md §7): Sinkhorn marginals, reliable-sample selection, the prediction queue, the two stages."""

import math

import pytest
import torch

from trainables.config import ConfigError, RunOptions, TrialConfig
from trainables.loop import fit
from trainables.methods.solar import SoLar, select_reliable, sinkhorn
from trainables.models import ModelHandle, create_model


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _masked_predictions(n, k, q=0.3, seed=0):
    g = _gen(seed)
    y = torch.randint(0, k, (n,), generator=g)
    mask = torch.rand(n, k, generator=g) < q
    mask[torch.arange(n), y] = True
    return torch.softmax(torch.randn(n, k, generator=g) * 2, dim=1) * mask


@pytest.mark.parametrize("faithful", [False, True])
def test_sinkhorn_rows_sum_to_one_and_columns_approach_n_r(faithful):
    n, k = 2000, 10
    g = _masked_predictions(n, k)
    r = torch.softmax(torch.randn(k, generator=_gen(1)), 0)
    t, res = sinkhorn(g, r, lamd=3.0, faithful=faithful)
    torch.testing.assert_close(t.sum(1), torch.ones(n), atol=1e-5, rtol=0)
    assert torch.all(t[g == 0] == 0)  # never a label outside the candidates
    cols = t.sum(0) / n
    assert (cols - r).abs().max() < 0.01  # column marginals close to r
    assert float(res["row"]) < 1e-5 and float(res["col"]) < 0.01
    if faithful:
        assert res["iters"] == 50  # the reference's stop test never fires


def test_log_space_agrees_with_the_reference_and_can_stop_early():
    g = _masked_predictions(1000, 10, seed=2)
    r = torch.full((10,), 0.1)
    t_ref, res_ref = sinkhorn(g, r, 3.0, faithful=True)
    t_log, res_log = sinkhorn(g, r, 3.0, faithful=False, iters=50, tol=1e-3)
    assert res_log["iters"] < 50  # the tolerance test stops it
    assert (t_log - t_ref).abs().max() < 0.05
    t_full, _ = sinkhorn(g, r, 3.0, faithful=False, tol=0.0)
    assert (t_full - t_ref.double()).abs().max() < 1e-4  # same iteration, same count: same plan


def test_sinkhorn_survives_a_class_no_row_can_take():
    g = _masked_predictions(50, 5)
    g[:, 4] = 0
    for faithful in (False, True):
        t, _ = sinkhorn(g, torch.full((5,), 0.2), 3.0, faithful=faithful)
        assert torch.isfinite(t).all() and torch.all(t[:, 4] == 0)


def test_sinkhorn_log_space_does_not_underflow():
    g = _masked_predictions(200, 10, seed=3) * 1e-20  # g^3 underflows float32 and float64 products stay tiny
    t, _ = sinkhorn(g.float(), torch.full((10,), 0.1), 3.0)
    assert torch.isfinite(t).all()
    torch.testing.assert_close(t.sum(1), torch.ones(200), atol=1e-5, rtol=0)


def test_selection_keeps_one_per_present_class_and_respects_quotas():
    b, k = 64, 5
    g = _gen(4)
    pseudo = torch.randint(0, k, (b,), generator=g)
    pseudo[pseudo == 4] = 3  # class 4 absent
    loss = torch.rand(b, generator=g)
    prior = torch.tensor([0.6, 0.2, 0.1, 0.09, 0.01])
    share = 0.3
    sel = select_reliable(loss, pseudo, torch.zeros(b), prior, share, b, tau=0.99)
    for j in range(k):
        members = pseudo == j
        count = int(members.sum())
        if count == 0:
            assert not sel[members].any()
            continue
        quota = min(max(math.ceil(b * prior[j].item() * share), 1), count)
        assert int(sel[members].sum()) == quota
        # the chosen ones are the smallest losses of the class
        chosen, rest = loss[members & sel], loss[members & ~sel]
        if len(rest):
            assert chosen.max() <= rest.min()
    # high agreement adds samples beyond the quotas
    agreement = torch.zeros(b)
    agreement[:5] = 0.995
    sel2 = select_reliable(loss, pseudo, agreement, prior, share, b, tau=0.99)
    assert torch.all(sel2[:5]) and torch.equal(sel2 | sel, sel2)


def test_queue_fills_and_shifts():
    cfg = TrialConfig(method="solar", arch="small-cnn", batch_size=8, params=dict(queue_batches=2, est_epochs=0))
    n, k = 64, 10
    g = _gen(5)
    cand = torch.rand(n, k, generator=g) < 0.3
    cand[torch.arange(n), torch.randint(0, k, (n,), generator=g)] = True
    method = SoLar(cfg, cand, [1] * k, torch.device("cpu"))
    method.enter_stage("train", fresh=True)
    model = ModelHandle(create_model("small-cnn", k, seed=0))
    pushed = []
    for step in range(3):
        xw, xs = torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g)
        idx = torch.arange(8) + 8 * step
        with torch.no_grad():
            logits, _ = model(xw)
        pushed.append(torch.softmax(logits, 1) * cand[idx])
        full_before = method.queue_rows >= len(method.queue)
        method.train_step(model, xw, xs, idx, epoch=0, step=step)
        assert full_before == (step == 2)  # Sinkhorn ran on [queue; batch] only once two batches had been queued
        torch.testing.assert_close(method.queue[:8], pushed[-1])  # newest on top
        if step >= 1:
            torch.testing.assert_close(method.queue[8:16], pushed[-2])  # shifted down by one batch
    assert method.queue_rows == 24


def test_solar_config_and_stages():
    cfg = TrialConfig(method="solar", dataset="cifar100")
    assert cfg.params.est_epochs == 20 and cfg.params.rho_end == 0.5 and cfg.params.gamma1 == 0.05
    assert TrialConfig(method="solar").params.est_epochs == 100
    assert TrialConfig.from_dict(dict(method="solar", solar_rho_end=0.4)).params.rho_end == 0.4  # flat names
    with pytest.raises(ConfigError, match="est_epochs=5: applies to method='solar' only"):
        TrialConfig.from_dict(dict(est_epochs=5))
    with pytest.raises(ConfigError, match="solar_tau=1.5: must lie in"):
        TrialConfig.from_dict(dict(method="solar", solar_tau=1.5))
    with pytest.raises(ConfigError, match="records"):
        TrialConfig(method="solar", records=True)
    s = SoLar(TrialConfig(method="solar", params=dict(est_epochs=3), epochs=7), torch.ones(4, 10, dtype=torch.bool),
              [1] * 10, torch.device("cpu"))
    assert s.stages() == [("estimate", 3), ("train", 7)]


SMALL = dict(dataset="cifar10", rho=10, q=0.3, img_max=60, test_per_class=20, arch="small-cnn", batch_size=32,
             method="solar")


class Stop(Exception):
    pass


@pytest.mark.parametrize("stop_at", [("estimate", 0), ("estimate", 1), ("train", 0)])
def test_resume_in_either_stage_is_bit_identical(tmp_path, stop_at):
    cfg = TrialConfig(**SMALL, params=dict(est_epochs=2, queue_batches=2), epochs=2)
    straight = fit(cfg, RunOptions(data_root="synthetic", num_workers=0, verbose=False))

    def stop(row, ckpt):
        if (row["stage"], row["epoch"]) == stop_at:
            raise Stop

    with pytest.raises(Stop):
        fit(cfg, RunOptions(data_root="synthetic", out_dir=str(tmp_path), num_workers=0, verbose=False), on_epoch=stop)
    resumed = fit(cfg, RunOptions(data_root="synthetic", out_dir=str(tmp_path), num_workers=0, verbose=False),
                  resume_from=tmp_path / "checkpoint.pt")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_s", "eval_s", "images_per_s")} for r in rows]
    assert strip(resumed.history) == strip(straight.history)
    assert [(r["stage"], r["epoch"]) for r in resumed.history] == [("estimate", 0), ("estimate", 1), ("train", 0),
                                                                    ("train", 1)]
    assert torch.equal(resumed.method.prior, straight.method.prior)
    assert torch.equal(resumed.method.confidences, straight.method.confidences)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.slow
def test_estimated_prior_moves_toward_the_true_prior():
    cfg = TrialConfig(dataset="cifar10", rho=100, q=0.3, img_max=500, test_per_class=50, arch="small-cnn",
                      batch_size=64, lr=0.05, method="solar", params=dict(est_epochs=4, queue_batches=4), epochs=2)
    result = fit(cfg, RunOptions(data_root="synthetic", num_workers=1, verbose=False))
    true = result.data.train.true_prior
    kl = lambda p: sum(a * math.log(a / b) for a, b in zip(true, p) if a > 0)
    uniform = [0.1] * 10
    first, last = result.history[0]["prior_est"], result.history[-1]["prior_est"]
    assert kl(last) < kl(first) < kl(uniform) + 1e-9  # r starts uniform and moves toward the true prior
    assert kl(last) < 0.6 * kl(uniform)
    assert result.history[-1]["reliable_frac"] > 0
    assert all(r["sinkhorn_row_residual"] < 1e-4 for r in result.history)


def test_faithful_sinkhorn_runs_in_float32_and_takes_the_reference_retry():
    """A queued row whose candidate probabilities are all ~1e-16 underflows under G^3 in float32 (not in float64):
    the reference's first pass turns NaN and it retries with ZERO_FILL; faithful mode must do the same."""
    from trainables.methods.solar import ZERO_FILL, _sinkhorn_prob

    g = torch.Generator().manual_seed(0)
    n, k = 64, 10
    cand = torch.rand(n, k, generator=g) < 0.3
    cand[torch.arange(n), torch.randint(0, k, (n,), generator=g)] = True
    probs = torch.softmax(torch.randn(n, k, generator=g) * 2, 1) * cand
    probs[0] = cand[0].float() * 1e-16
    prior = torch.full((k,), 1.0 / k)
    zero = probs == 0
    assert torch.isnan(_sinkhorn_prob(probs, prior, 3.0, 50)).any()  # float32: the reference's first pass fails
    retried = _sinkhorn_prob(probs.masked_fill(zero, ZERO_FILL), prior, 3.0, 50).masked_fill(zero, 0.0)
    plan, _ = sinkhorn(probs, prior, 3.0, faithful=True)
    assert plan.dtype == torch.float32 and torch.equal(plan, retried)
