"""PiCO and PiCO+RECORDS (PLUGINS.md §P3-§P6): the pure pieces against their definitions, the invariants of §P5
on tiny synthetic runs, zero adjustment = plain PiCO bit for bit, and a bit-identical resume."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.checkpoint import load_checkpoint
from trainables.config import ConfigError, RunOptions, TrialConfig
from trainables.loop import fit
from trainables.methods import pico as pico_mod
from trainables.methods.pico import initial_queue, moco_loss, phi_schedule, supcon_loss, update_prototypes
from trainables.models import ModelHandle, create_model

# N = 113 training images at rho=10, img_max=60: 3 steps of 32 per epoch; the queue (64) holds 2 batches.
SMALL = dict(dataset="cifar10", rho=10, q=0.3, img_max=60, test_per_class=20, arch="small-cnn", batch_size=32,
             epochs=3, method="pico", params=dict(queue=64))
OPTS = RunOptions(data_root="synthetic", num_workers=0, verbose=False)


def test_prototype_update_equals_the_sequential_loop_and_keeps_rows_unit_or_zero():
    g = torch.Generator().manual_seed(0)
    k, d, gamma = 6, 16, 0.9
    protos = F.normalize(torch.randn(k, d, generator=g), dim=1)
    protos[4] = 0.0  # a class never labelled so far
    q = F.normalize(torch.randn(40, d, generator=g), dim=1)
    labels = torch.randint(0, 4, (40,), generator=g)  # classes 4 and 5 get no sample
    loop = protos.clone()
    for feat, label in zip(q, labels):
        loop[label] = gamma * loop[label] + (1 - gamma) * feat
    loop = F.normalize(loop, dim=1)
    fast = update_prototypes(protos, q, labels, gamma)
    assert torch.allclose(fast, loop, atol=1e-6)
    norms = fast.norm(dim=1)
    assert torch.allclose(norms[[0, 1, 2, 3, 5]], torch.ones(5), atol=1e-6) and norms[4] == 0


def test_phi_schedule_fixed_and_faithful():
    assert phi_schedule(0, 800, 0.95, 0.8) == 0.95
    assert phi_schedule(799, 800, 0.95, 0.8) == pytest.approx(0.8, abs=1e-12)
    assert phi_schedule(0, 800, 0.95, 0.8, faithful=True) == 0.99
    assert phi_schedule(1, 800, 0.95, 0.8, faithful=True) == 0.95
    assert phi_schedule(799, 800, 0.95, 0.8, faithful=True) == pytest.approx(0.800375, abs=1e-12)
    steps = [phi_schedule(e, 10, 0.95, 0.8) for e in range(10)]
    assert all(a > b for a, b in zip(steps, steps[1:]))  # monotone decreasing, linear
    assert steps[0] - steps[1] == pytest.approx(0.15 / 9)


def test_supcon_matches_its_definition_and_every_anchor_has_a_positive():
    g = torch.Generator().manual_seed(1)
    b, n_queue, d, tau = 5, 7, 8, 0.07
    q = F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_()
    k = F.normalize(torch.randn(b, d, generator=g), dim=1)
    queue = F.normalize(torch.randn(n_queue, d, generator=g), dim=1)
    labels = torch.tensor([0, 1, 0, 2, 3])
    queue_labels = torch.tensor([-1, 0, 2, 2, 1, -1, 4])  # -1: an initial slot, never a positive
    loss = supcon_loss(q, k, queue, labels, queue_labels, tau)
    feats = torch.cat([q, k, queue]).detach()
    all_labels = torch.cat([labels, labels, queue_labels])
    expected = 0.0
    for i in range(b):
        others = [j for j in range(len(feats)) if j != i]
        logit = {j: float(q[i].detach() @ feats[j]) / tau for j in others}
        log_z = math.log(sum(math.exp(v) for v in logit.values()))
        pos = [j for j in others if all_labels[j] == labels[i]]
        assert b + i in pos  # its own key
        expected += -sum(logit[j] - log_z for j in pos) / len(pos)
    assert float(loss.detach()) == pytest.approx(expected / b, rel=1e-5)
    loss.backward()
    assert q.grad.abs().sum() > 0
    # warm-up: MoCo InfoNCE = cross-entropy of [q.k, q.queue] / tau against index 0
    ref = F.cross_entropy(torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / tau, torch.zeros(b).long())
    assert torch.allclose(moco_loss(q, k, queue, tau), ref)


def test_zero_prototypes_score_zero_by_default_and_are_skipped_on_request():
    cands = torch.tensor([[True, True, False], [True, False, True], [False, True, True]])
    scores = torch.tensor([[-0.5, 0.0, 0.9], [-0.2, 0.3, 0.0], [0.4, 0.0, 0.0]])  # class 1's prototype is zero
    usable = torch.tensor([True, False, False])
    fallback = torch.tensor([1, 2, 2])
    assert pico_mod.prototype_choice(scores, cands, None, fallback).tolist() == [1, 2, 1]  # 0 beats the negative cosine
    # skip: row 0 takes its only usable candidate, row 1 too, row 2 has none and falls back to the classifier's
    assert pico_mod.prototype_choice(scores, cands, usable, fallback).tolist() == [0, 0, 2]


def test_initial_queue_rows_are_unit_norm_or_column_normalised_when_faithful():
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(initial_queue(8192, 128, g).norm(dim=1), torch.ones(8192), atol=1e-5)
    faithful = initial_queue(8192, 128, g, faithful=True)
    assert torch.allclose(faithful.norm(dim=0), torch.ones(128), atol=1e-5)
    assert faithful.norm(dim=1).mean() == pytest.approx(0.125, rel=0.02)


def test_config_defaults_switches_and_errors():
    cfg = TrialConfig(method="pico")
    assert (cfg.params.queue, cfg.params.moco_m, cfg.params.proto_m, cfg.params.loss_weight) == (8192, 0.999, 0.99,
                                                                                                 0.5)
    assert cfg.upd_start == 1 and cfg.params.reading == "a"
    assert TrialConfig.from_dict(dict(method="pico", records=True, pico_reading="b")).params.reading == "b"
    with pytest.raises(ConfigError, match="pico_queue=100: must be a multiple of batch_size=256"):
        TrialConfig.from_dict(dict(method="pico", pico_queue=100))
    with pytest.raises(ConfigError, match="pico_reading='c'"):
        TrialConfig.from_dict(dict(method="pico", pico_reading="c"))
    with pytest.raises(ConfigError, match="mixup=True: does not apply to method='pico'"):
        TrialConfig(method="pico", mixup=True)
    assert TrialConfig(method="pico").describe().endswith("PiCO seed=123")


def test_key_encoder_is_an_ema_of_the_query_encoder_and_takes_no_gradient():
    cfg = TrialConfig(**SMALL)
    cands = torch.ones(32, 10, dtype=torch.bool)
    method = pico_mod.Pico(cfg, cands, [1] * 10, torch.device("cpu"))
    net = create_model("small-cnn", 10, seed=1)
    params = method.extra_parameters(net)
    opt = torch.optim.SGD([*net.parameters(), *params], lr=0.5)
    g = torch.Generator().manual_seed(0)
    x_w, x_s = torch.randn(32, 3, 32, 32, generator=g), torch.randn(32, 3, 32, 32, generator=g)
    model = ModelHandle(net)
    for step in range(2):
        key_before = [p.clone() for p in [*method.key_net.parameters(), *method.key_head.parameters()]]
        query_before = [p.detach().clone() for p in [*net.parameters(), *method.head.parameters()]]
        loss, _ = method.train_step(model, x_w, x_s, torch.arange(32), 0, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        key_after = [*method.key_net.parameters(), *method.key_head.parameters()]
        for kb, qb, ka in zip(key_before, query_before, key_after):
            assert torch.allclose(ka, 0.999 * kb + 0.001 * qb, atol=1e-7)
            assert ka.grad is None and not ka.requires_grad
    assert not torch.equal(key_after[0], [*net.parameters()][0])  # the query moved on, the key lags


@pytest.fixture(scope="module")
def runs():
    """Plain PiCO; PiCO+RECORDS with its adjustment forced to exactly zero; PiCO+RECORDS reading (b)."""
    out = {"pico": fit(TrialConfig(**SMALL), OPTS)}
    real = pico_mod.Pico.adjustment
    pico_mod.Pico.adjustment = lambda self, classifier: (None if real(self, classifier) is None
                                                          else torch.zeros(self.num_classes))
    try:
        out["zero"] = fit(TrialConfig(**SMALL, records=True), OPTS)
    finally:
        pico_mod.Pico.adjustment = real
    out["b"] = fit(TrialConfig(**{**SMALL, "params": dict(queue=64, reading="b")}, records=True), OPTS)
    return out


@pytest.mark.parametrize("name", ["pico", "b"])
def test_run_invariants(runs, name):
    result = runs[name]
    m = result.method
    cands = torch.from_numpy(result.data.train.candidates)
    w = m.confidences
    assert torch.allclose(w.sum(dim=1), torch.ones(len(w)), atol=1e-6)
    assert (w[~cands] == 0).all()
    assert (w.argmax(dim=1)[:, None] == torch.arange(10)).logical_and(cands).any(dim=1).all()  # argmax in S_i
    assert not torch.equal(w, (cands / cands.sum(1, keepdim=True)).float())  # updated from epoch 1 on
    norms = m.prototypes.norm(dim=1)
    assert ((norms - 1).abs() < 1e-5).logical_or(norms == 0).all()
    steps = 3 * len(result.history)  # 3 steps of 32 per epoch
    assert m.queue.shape == (64, 128) and m.queue_ptr == (steps * 32) % 64
    assert torch.allclose(m.queue.norm(dim=1), torch.ones(64), atol=1e-5)  # >= 2 steps: no initial row is left
    assert ((m.queue_labels >= 0) & (m.queue_labels < 10)).all()
    assert result.history[-1]["zero_prototypes"] == float((norms == 0).sum())
    assert all(r["loss_cont"] > 0 and r["loss_cls"] > 0 for r in result.history)


def test_zero_adjustment_reproduces_pico_bit_for_bit(runs):
    a, b = runs["pico"], runs["zero"]
    for key in ("confidences", "prototypes", "queue", "queue_labels", "mu"):
        assert torch.equal(getattr(a.method, key), getattr(b.method, key)), key
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    for x, y in zip(a.method.key_net.parameters(), b.method.key_net.parameters()):
        assert torch.equal(x, y)
    assert [r["top1"] for r in a.history] == [r["top1"] for r in b.history]
    # and the real adjustment does change PiCO+RECORDS (reading b here): pi-hat drives the test prediction
    assert runs["b"].history[-1]["top1"] != runs["b"].history[-1]["top1_raw"] or \
        not torch.equal(runs["b"].method.confidences, a.method.confidences)


def test_mu_after_the_first_step_is_a_tenth_of_the_weak_feature_mean():
    cfg = TrialConfig(**SMALL, records=True)
    method = pico_mod.Pico(cfg, torch.ones(32, 10, dtype=torch.bool), [1] * 10, torch.device("cpu"))
    net = create_model("small-cnn", 10, seed=1)
    method.extra_parameters(net)
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    method.train_step(ModelHandle(net), x, x, torch.arange(32), 0, 0)
    net.train()
    with torch.no_grad():
        _, feat = net(x)
    assert torch.allclose(method.mu, 0.1 * feat.mean(dim=0), atol=1e-6)


class Stop(Exception):
    pass


def test_resume_is_bit_identical_and_the_checkpoint_holds_everything(tmp_path):
    cfg = TrialConfig(**SMALL, records=True)
    straight = fit(cfg, OPTS)

    def stop(row, ckpt):
        if row["epoch"] == 1:
            raise Stop

    opts = RunOptions(data_root="synthetic", out_dir=str(tmp_path), num_workers=0, verbose=False)
    with pytest.raises(Stop):
        fit(cfg, opts, on_epoch=stop)
    state = load_checkpoint(tmp_path / "checkpoint.pt")["method"]  # weights_only=True inside
    assert {"confidences", "mu", "queue", "queue_labels", "queue_ptr", "prototypes", "head", "key_net",
            "key_head"} <= set(state)
    resumed = fit(cfg, opts, resume_from=tmp_path / "checkpoint.pt")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_s", "eval_s", "images_per_s")} for r in rows]
    assert strip(resumed.history) == strip(straight.history)
    for key in ("confidences", "prototypes", "queue", "queue_labels", "mu"):
        assert torch.equal(getattr(resumed.method, key), getattr(straight.method, key)), key
    assert resumed.method.queue_ptr == straight.method.queue_ptr
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for name in ("head", "key_net", "key_head"):
        for key, value in getattr(straight.method, name).state_dict().items():
            assert torch.equal(value, getattr(resumed.method, name).state_dict()[key]), (name, key)


def _pico_rank_state() -> dict:
    from trainables.comm import TorchDistComm

    cfg = TrialConfig(**{**SMALL, "epochs": 1, "upd_start": 0}, records=True)  # SupCon and W updates at once
    m = fit(cfg, OPTS, comm=TorchDistComm()).method
    return {"W": m.confidences, "mu": m.mu, "queue": m.queue, "queue_labels": m.queue_labels, "ptr": m.queue_ptr,
            "prototypes": m.prototypes, "head": m.head.state_dict(), "key_head": m.key_head.state_dict(),
            "key_net": m.key_net.state_dict()}


@pytest.mark.slow
def test_two_ranks_share_queue_prototypes_confidences_and_head(tmp_path):
    from tests.test_distributed import run_ranks

    r0, r1 = run_ranks(_pico_rank_state, tmp_path)
    for key in ("W", "mu", "queue", "queue_labels", "prototypes"):
        assert torch.equal(r0[key], r1[key]), key
    assert r0["ptr"] == r1["ptr"] == (3 * 32) % 64
    # the head sits outside the DDP model: its averaged gradients keep it (and the key encoder's EMA) identical
    for name in ("head", "key_head"):
        for key, value in r0[name].items():
            assert torch.equal(value, r1[name][key]), (name, key)
    for key, value in r0["key_net"].items():
        if "running" not in key and "num_batches" not in key:  # its BN statistics come from each rank's own keys
            assert torch.equal(value, r1["key_net"][key]), key
    assert ((r0["queue_labels"] >= 0) & (r0["queue_labels"] < 10)).all()


def test_pico_is_in_the_plugins_preset_and_the_records_gain_table():
    import pandas as pd

    from analysis.tables import records_gain_tidy
    from sweep.grids import PRESETS
    from sweep.schema import RUNS_SCHEMA
    from tests.analysis_fixtures import fixture_rows

    cells = PRESETS["plugins"].cells()
    assert {(c.method, c.records) for c in cells} >= {("pico", False), ("pico", True)}
    runs = pd.DataFrame(fixture_rows()[0], columns=RUNS_SCHEMA.names)
    corr = runs[(runs["method"] == "corr") & ~runs["mixup"].astype(bool) & runs["oracle_la"].isna()
                & (runs["dataset"] == "cifar10")]
    pico = corr.assign(method="pico", config_hash=corr["config_hash"] + "p")
    for key, value in TrialConfig(method="pico").to_dict().items():
        if key.startswith("pico_"):
            pico[key] = value
    pico["final_top1"] = pico["final_top1"] - 20 + 3 * pico["records"].astype(bool)  # RECORDS adds 3 points more
    tidy = records_gain_tidy(pd.concat([runs, pico], ignore_index=True), "CIFAR-10-LT")
    gain = tidy[tidy["kind"] == "gain (RECORDS − plain)"].set_index(["method", "rho", "q"])["mean"]
    assert set(tidy["method"]) == {"CORR", "PiCO"}
    assert (gain.loc["PiCO"] - gain.loc["CORR"]).round(9).eq(3.0).all()


@pytest.mark.slow
def test_pico_records_beats_pico_on_few_shot_classes():
    """tests/test_learning.py's synthetic LT problem (rho=100, N=1236, 10 epochs, small CNN), seed 123."""
    base = dict(dataset="cifar10", rho=100, q=0.3, img_max=500, test_per_class=100, arch="small-cnn", epochs=10,
                batch_size=64, lr=0.05, method="pico", params=dict(queue=1024))
    options = RunOptions(data_root="synthetic", num_workers=1, verbose=False)
    few = {rec: sum(r["few"] for r in fit(TrialConfig(**base, records=rec), options).history[-3:]) / 3
           for rec in (False, True)}
    # seen on this machine (mean few-shot accuracy over the last three epochs): PiCO 26.4, PiCO+RECORDS 32.7;
    # require a 3-point margin
    assert few[True] >= few[False] + 3.0, few
