"""PRODEN (Lv et al., ICML 2020) with RECORDS, Oracle-LA and Mixup plugged in, as docs/methods.md describes.

PRODEN trains a soft cross-entropy against the confidences W and, from epoch `upd_start` on, replaces each batch
row of W by the model's prediction renormalised over the row's candidates. There is no EMA and no second view: one
(weak) view per sample feeds the loss, the update and, with RECORDS, the feature mean mu (the reference's driver
"D1"). RECORDS and Oracle-LA only change the update and the test prediction: the update renormalises
softmax(z - log(pi + eps)) instead of softmax(z), while the loss keeps the raw logits, as the reference's
`Proden_loss_RECORDS` and `Proden_loss_prior` do.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..comm import Comm
from ..config import ORACLE_LA_MODES, ConfigError, TrialConfig
from .base import MethodSpec, PLLMethod, register
from .corr import initial_confidences
from .mixup import draw_mixup, mix
from .records import RecordsPrior, log_prior, shift_logits

PRIOR_SOURCES = ("oracle", "candidate_uniform")
MASKS = ("original", "current")


@dataclasses.dataclass(frozen=True)
class ProdenParams:
    """PRODEN's own knobs (flat names proden_<field>); both are fixes or readings of the reference, see the doc."""

    prior_source: str = "oracle"
    """Oracle-LA's fixed prior: 'oracle' (true training counts n_k/N) or 'candidate_uniform' (pi_k proportional
    to sum_i s_ik/|S_i|, what the reference's `partial_prior` may also have meant); only with oracle_la."""
    mask: str = "original"
    """Classes a confidence update may give weight to: 'original' (the candidate set S_i) or 'current' (the
    support w_i > 0, as the reference: a candidate whose probability underflows to 0 is dropped for good)."""


# ---------------------------------------------------------------------------------------------------------------
# Pure functions


def proden_loss(logits: torch.Tensor, confidences: torch.Tensor, faithful: bool = False) -> torch.Tensor:
    """Soft cross-entropy -mean_i sum_k w_ik log softmax(z_i)_k. faithful=True takes log(softmax(z)) as the
    reference does, which gives NaN (0 * -inf) once a non-candidate probability underflows to 0."""
    log_p = torch.log(torch.softmax(logits, dim=1)) if faithful else F.log_softmax(logits, dim=1)
    if not faithful:
        log_p = log_p.masked_fill(confidences == 0, 0.0)  # 0 * log p = 0 even where log p = -inf
    return -(confidences * log_p).sum(dim=1).mean()


@torch.no_grad()
def proden_update(logits: torch.Tensor, mask: torch.Tensor, prior_log: torch.Tensor | None = None,
                  faithful: bool = False) -> torch.Tensor:
    """New confidence rows: softmax(z - log(pi + eps)) renormalised over `mask` (no prior: softmax(z)).

    Default: a masked softmax, exact and never dividing by zero. faithful=True replays the reference's
    probability-space arithmetic, p * m / sum(p * m) with no eps (NaN for a row whose masked mass underflows)."""
    if prior_log is not None:
        logits = logits - prior_log
    if faithful:
        u = torch.softmax(logits, dim=1) * mask.to(logits.dtype)
        return u / u.sum(dim=1, keepdim=True)
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)


def candidate_uniform_prior(candidates: torch.Tensor) -> torch.Tensor:
    """pi_k proportional to sum_i s_ik / |S_i|: the class prior the initial, uniform confidences imply."""
    w = initial_confidences(candidates)
    return w.sum(dim=0) / w.sum()


# ---------------------------------------------------------------------------------------------------------------
# The method object


class Proden(PLLMethod):
    """State: W, the original candidates S, mu (RECORDS' feature mean, tracked for every variant as a diagnostic),
    and the fixed prior of Oracle-LA."""

    def __init__(self, cfg: TrialConfig, candidates: torch.Tensor, class_counts: list[int], device: torch.device,
                 comm: Comm | None = None):
        self.cfg = cfg
        self.comm = comm or Comm()
        self.candidates = candidates.to(device=device, dtype=torch.bool)
        self.confidences = initial_confidences(self.candidates)
        self.records_prior = RecordsPrior(cfg.prior_momentum, self.comm)
        self.faithful = cfg.is_faithful("disamb_arith")
        if cfg.params.prior_source == "oracle":
            counts = torch.as_tensor(class_counts, dtype=torch.float64)
            self.fixed_prior = (counts / counts.sum()).to(device=device, dtype=torch.float32)
        else:
            self.fixed_prior = candidate_uniform_prior(self.candidates)
        ola = cfg.oracle_la
        # which prior shifts the update, the loss and the test logits (docs/methods.md, PRODEN)
        self.update_prior = "estimate" if cfg.records else ("fixed" if ola == "disamb" else None)
        self.test_prior = "estimate" if cfg.records else ("fixed" if ola in ("disamb", "posthoc") else None)
        self.loss_shift = log_prior(self.fixed_prior) if ola == "loss" else None

    def _prior(self, which: str | None, classifier: torch.nn.Linear) -> torch.Tensor | None:
        if which == "fixed":
            return self.fixed_prior
        if which == "estimate":
            return self.records_prior.estimate(classifier)
        return None

    def adjust_test_logits(self, logits: torch.Tensor, classifier: torch.nn.Linear) -> torch.Tensor:
        return shift_logits(logits, self._prior(self.test_prior, classifier))

    def train_step(self, model, x_weak: torch.Tensor, x_strong: torch.Tensor, idx: torch.Tensor, epoch: int,
                   step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        b = x_weak.shape[0]
        updating = epoch >= cfg.upd_start
        w_old = self.confidences[idx]
        mixing = cfg.mixup and (updating or cfg.is_faithful("mixup_epoch0"))
        inputs = [x_weak]
        if mixing:
            lam, perm = draw_mixup(cfg.seed, epoch, step, self.comm.rank, b, cfg.mixup_beta, x_weak.device)
            inputs.append(mix(x_weak, lam, perm))
        logits, features = model(torch.cat(inputs) if mixing else x_weak)
        z = logits[:b]
        shift = self.loss_shift
        ce = proden_loss(z if shift is None else z + shift, w_old, self.faithful)
        mix_loss = logits.new_zeros(())
        if mixing and updating:
            z_mix = logits[b:]
            mix_loss = cfg.mixup_weight * proden_loss(z_mix if shift is None else z_mix + shift,
                                                      mix(w_old, lam, perm), self.faithful)
        loss = ce + mix_loss

        self.records_prior.update(features[:b].detach())  # the weak view's features

        if updating:
            prior = self._prior(self.update_prior, model.classifier)
            mask = self.candidates[idx] if cfg.params.mask == "original" else w_old > 0
            new_w = proden_update(z.detach(), mask, None if prior is None else log_prior(prior), self.faithful)
            self.confidences[self.comm.all_gather_cat(idx)] = self.comm.all_gather_cat(new_w)
        return loss, {"loss": loss.detach(), "loss_ce": ce.detach(), "loss_mix": mix_loss.detach()}

    def state_dict(self) -> dict:
        return {"confidences": self.confidences.cpu(), "mu": self.records_prior.state()}

    def load_state_dict(self, state: dict) -> None:
        device = self.candidates.device
        self.confidences = state["confidences"].to(device)
        self.records_prior.load(state["mu"], device)


# ---------------------------------------------------------------------------------------------------------------
# Declaration


def _validate(cfg: TrialConfig) -> None:
    p = cfg.params
    if p.prior_source not in PRIOR_SOURCES:
        raise ConfigError(f"proden_prior_source={p.prior_source!r}: choose one of {list(PRIOR_SOURCES)}")
    if p.prior_source != "oracle" and cfg.oracle_la is None:
        raise ConfigError(f"proden_prior_source={p.prior_source!r}: only Oracle-LA uses a fixed prior; set oracle_la")
    if p.mask not in MASKS:
        raise ConfigError(f"proden_mask={p.mask!r}: choose one of {list(MASKS)}")


def proden_cost(cfg: TrialConfig, n_train: int, per_epoch: int, n_test: int) -> tuple[float, float]:
    """One (weak) view per sample, plus its mix in the epochs where mixup is on."""
    mixed = cfg.epochs - (0 if cfg.is_faithful("mixup_epoch0") else min(cfg.upd_start, cfg.epochs))
    return per_epoch * (cfg.epochs + (mixed if cfg.mixup else 0)), n_test * cfg.epochs


SPEC = register(MethodSpec(
    name="proden", display="PRODEN", impl=Proden, doc="PRODEN and its RECORDS, Mixup and Oracle-LA variants",
    params=ProdenParams, param_prefix="proden_",
    switches=frozenset({"records", "mixup", "oracle_la"}), oracle_la_modes=ORACLE_LA_MODES,
    variants={
        "proden": {}, "proden+mixup": {"mixup": True}, "proden+records": {"records": True},
        "proden+records+mixup": {"records": True, "mixup": True}, "proden+oracle-la": {"oracle_la": "disamb"},
        "proden+oracle-la-loss": {"oracle_la": "loss"}, "proden+oracle-la-posthoc": {"oracle_la": "posthoc"},
    },
    epoch_columns={"loss_ce": "mean soft cross-entropy against W (PRODEN)"},
    validate=_validate, cost=proden_cost,
))
