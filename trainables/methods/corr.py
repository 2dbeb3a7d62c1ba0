"""The CORR family (METHOD.md §3-6): CORR, CORR+RECORDS, CORR+Mixup, CORR+RECORDS+Mixup, CORR+Oracle-LA.

All variants share one step: forward the weak and strong views (and, with mixup, their mixes) as one batch; take
the loss against the current confidences W; update W for the batch rows from this forward's detached predictions;
predict at test time. What varies is small and is spelled out by `CorrVariant`:
  * which prior rebalances disambiguation and test prediction: none, RECORDS' estimate pi_hat, or the oracle pi;
  * whether the disambiguation mask is the current support (w > 0, CORR) or the original candidate set (RECORDS);
  * whether the loss is logit-adjusted with the oracle prior (Oracle-LA 'loss');
  * whether the mixed views add a loss.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..comm import Comm
from ..config import ORACLE_LA_MODES, TrialConfig
from .base import MethodSpec, PLLMethod, register, two_view_cost
from .mixup import draw_mixup, mix
from .records import EPS, RecordsPrior, log_prior, shift_logits

# ---------------------------------------------------------------------------------------------------------------
# Pure functions


def corr_loss(logits_w: torch.Tensor, logits_s: torch.Tensor, confidences: torch.Tensor, eps: float = EPS,
              faithful: bool = False):
    """CORR's two terms (§3.2) against the confidences, averaged over the batch.

    neg: sum over labels with confidence exactly 0 of -log(|1 - p| + eps), for both views.
    con: KL(w || softmax(z)) for both views (PyTorch's kl_div, 'batchmean'; 0 log 0 = 0).
    p is exp(log_softmax(z)) by default (one softmax pass for both terms); faithful=True takes softmax(z) as the
    reference does. The two differ in the last bits, which matters where 1 - p is below about 1e-6: there the
    gradient of the neg term differs markedly (docs/methods.md, CORR).
    """
    not_candidate = (confidences == 0).to(logits_w.dtype)
    neg = logits_w.new_zeros(())
    con = logits_w.new_zeros(())
    for logits in (logits_w, logits_s):
        log_p = F.log_softmax(logits, dim=1)
        p = torch.softmax(logits, dim=1) if faithful else log_p.exp()
        neg = neg + (-torch.log(torch.abs(1.0 - p) + eps) * not_candidate).sum(dim=1).mean()
        con = con + F.kl_div(log_p, confidences, reduction="batchmean")
    return neg, con


@torch.no_grad()
def disambiguate(logits_w: torch.Tensor, logits_s: torch.Tensor, mask: torch.Tensor,
                 prior_log: torch.Tensor | None = None, faithful: bool = False, eps: float = EPS) -> torch.Tensor:
    """New confidences: the normalised geometric mean of the two views' (optionally rebalanced) predictions,
    restricted to `mask` (§3.3 without a prior, §4.3 with one).

    faithful=False (default) works in log space: log w = (log p~_w + log p~_s) / 2 over the mask, then a masked
    softmax; exact, with no eps and no float32 underflow of products. faithful=True replays the reference's
    probability-space arithmetic, CORR's (sqrt of the product, then normalise) without a prior and RECORDS' (normalise
    the product, sqrt, normalise again) with one, each with its eps (§11.13).
    """
    if prior_log is not None:
        logits_w = logits_w - prior_log
        logits_s = logits_s - prior_log
    if faithful:
        p_w, p_s = torch.softmax(logits_w, dim=1), torch.softmax(logits_s, dim=1)
        m = mask.to(p_w.dtype)
        if prior_log is None:
            u = m * torch.sqrt(p_w * p_s)
        else:
            v = m * p_w * p_s
            u = torch.sqrt(v / (v.sum(dim=1, keepdim=True) + eps))
        return u / (u.sum(dim=1, keepdim=True) + eps)
    log_u = 0.5 * (F.log_softmax(logits_w, dim=1) + F.log_softmax(logits_s, dim=1))
    return torch.softmax(log_u.masked_fill(~mask, float("-inf")), dim=1)


def initial_confidences(candidates: torch.Tensor) -> torch.Tensor:
    """W_0: uniform over each sample's candidate set."""
    c = candidates.to(torch.float32)
    return c / c.sum(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------------------------
# The variant table


@dataclasses.dataclass(frozen=True)
class CorrVariant:
    disamb_prior: str | None  # None | 'estimate' | 'oracle': prior that rebalances disambiguation
    test_prior: str | None  # None | 'estimate' | 'oracle': prior that adjusts test logits
    loss_prior: str | None  # None | 'oracle': logit-adjusted loss (softmax(z + log pi))
    original_mask: bool  # disambiguate over the original candidates (True) or the current support w > 0
    mixup: bool

    @classmethod
    def from_config(cls, cfg: TrialConfig) -> CorrVariant:
        if cfg.records:  # §4
            return cls("estimate", "estimate", None, True, cfg.mixup)
        if cfg.oracle_la == "disamb":  # §6: RECORDS with the fixed oracle prior
            return cls("oracle", "oracle", None, True, cfg.mixup)
        if cfg.oracle_la == "loss":  # §6: Menon et al.'s logit-adjusted loss, CORR disambiguation on raw outputs
            return cls(None, None, "oracle", False, cfg.mixup)
        if cfg.oracle_la == "posthoc":  # §6: plain CORR, adjusted prediction
            return cls(None, "oracle", None, False, cfg.mixup)
        return cls(None, None, None, False, cfg.mixup)  # §3


# ---------------------------------------------------------------------------------------------------------------
# The method object the training loop drives


class CorrFamily(PLLMethod):
    """State (W, the original candidates S, mu) and the per-step rule of every CORR-family variant."""

    name = "corr"

    def __init__(self, cfg: TrialConfig, candidates: torch.Tensor, class_counts: list[int], device: torch.device,
                 comm: Comm | None = None):
        self.cfg = cfg
        self.variant = CorrVariant.from_config(cfg)
        self.comm = comm or Comm()
        self.candidates = candidates.to(device=device, dtype=torch.bool)
        self.confidences = initial_confidences(self.candidates)
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        self.oracle_prior = (counts / counts.sum()).to(device=device, dtype=torch.float32)
        self.records_prior = RecordsPrior(cfg.prior_momentum, self.comm)
        self.faithful_arith = cfg.is_faithful("disamb_arith")
        self.loss_shift = log_prior(self.oracle_prior) if self.variant.loss_prior == "oracle" else None

    # -- priors -------------------------------------------------------------------------------------------------
    def _prior(self, which: str | None, classifier: torch.nn.Linear) -> torch.Tensor | None:
        if which == "oracle":
            return self.oracle_prior
        if which == "estimate":
            return self.records_prior.estimate(classifier)
        return None

    def adjust_test_logits(self, logits: torch.Tensor, classifier: torch.nn.Linear) -> torch.Tensor:
        return shift_logits(logits, self._prior(self.variant.test_prior, classifier))

    # -- one step -----------------------------------------------------------------------------------------------
    def train_step(self, model, x_weak: torch.Tensor, x_strong: torch.Tensor, idx: torch.Tensor, epoch: int,
                   step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, variant = self.cfg, self.variant
        b = x_weak.shape[0]
        updating = epoch >= cfg.upd_start
        w_old = self.confidences[idx]  # a gathered copy: the loss uses the pre-update confidences

        mixing = variant.mixup and (updating or cfg.is_faithful("mixup_epoch0"))
        inputs = [x_weak, x_strong]
        if mixing:
            lam, perm = draw_mixup(cfg.seed, epoch, step, self.comm.rank, b, cfg.mixup_beta, x_weak.device)
            inputs += [mix(x_weak, lam, perm), mix(x_strong, lam, perm)]
        logits, features = model(torch.cat(inputs))  # one forward: BatchNorm sees all views together
        z_w, z_s = logits[:b], logits[b:2 * b]

        shift = self.loss_shift
        neg, con = corr_loss(z_w if shift is None else z_w + shift, z_s if shift is None else z_s + shift, w_old,
                             faithful=self.faithful_arith)
        mix_loss = logits.new_zeros(())
        if mixing and updating:
            w_mix = mix(w_old, lam, perm)
            z_mw, z_ms = logits[2 * b:3 * b], logits[3 * b:]
            if shift is not None:
                z_mw, z_ms = z_mw + shift, z_ms + shift
            mix_neg, mix_con = corr_loss(z_mw, z_ms, w_mix, faithful=self.faithful_arith)
            mix_loss = cfg.mixup_weight * (mix_neg + mix_con)
        loss = neg + con + mix_loss

        f = features.detach()
        self.records_prior.update(0.5 * (f[:b] + f[b:2 * b]))  # the mean of the two clean views' features

        if updating:
            classifier = model.classifier
            prior = self._prior(variant.disamb_prior, classifier)
            mask = self.candidates[idx] if variant.original_mask else w_old > 0
            new_w = disambiguate(z_w.detach(), z_s.detach(), mask, None if prior is None else log_prior(prior),
                                 faithful=self.faithful_arith)
            # Every rank writes every rank's rows, so W stays identical everywhere.
            all_idx = self.comm.all_gather_cat(idx)
            all_w = self.comm.all_gather_cat(new_w)
            self.confidences[all_idx] = all_w

        logs = {"loss": loss.detach(), "loss_neg": neg.detach(), "loss_con": con.detach(),
                "loss_mix": mix_loss.detach()}
        return loss, logs

    # -- checkpoint ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"confidences": self.confidences.cpu(), "mu": self.records_prior.state()}

    def load_state_dict(self, state: dict) -> None:
        device = self.candidates.device
        self.confidences = state["confidences"].to(device)
        self.records_prior.load(state["mu"], device)


def corr_cost(cfg: TrialConfig, n_train: int, per_epoch: int, n_test: int) -> tuple[float, float]:
    """Two views every epoch, and their two mixes in the epochs where mixup is on."""
    fwd_bwd, fwd_only = two_view_cost(cfg, n_train, per_epoch, n_test)
    if cfg.mixup:
        mixed = cfg.epochs - (0 if cfg.is_faithful("mixup_epoch0") else min(cfg.upd_start, cfg.epochs))
        fwd_bwd += per_epoch * 2 * mixed
    return fwd_bwd, fwd_only


SPEC = register(MethodSpec(
    name="corr", display="CORR", impl=CorrFamily, doc="CORR and its RECORDS, Mixup and Oracle-LA variants",
    switches=frozenset({"records", "mixup", "oracle_la"}), oracle_la_modes=ORACLE_LA_MODES,
    variants={
        "corr": {}, "corr+mixup": {"mixup": True}, "records": {"records": True},
        "records+mixup": {"records": True, "mixup": True}, "oracle-la": {"oracle_la": "disamb"},
        "oracle-la-loss": {"oracle_la": "loss"}, "oracle-la-posthoc": {"oracle_la": "posthoc"},
    },
    cost=corr_cost,
))
