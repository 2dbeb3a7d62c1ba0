"""SoLar (Wang et al., NeurIPS 2022) as the RECORDS repository runs it (METHOD.md §7).

Disambiguation as optimal transport: candidate-masked predictions become pseudo-labels whose class marginal is
forced to an estimated prior r by Sinkhorn-Knopp; per class, the small-loss samples under those labels are trained on
them (with consistency and mixup), the rest on PRODEN self-training targets. r is re-estimated every epoch from the
candidate-masked argmax over the whole training set, and a first stage (a separate model) pre-estimates it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..comm import Comm
from ..config import TrialConfig
from .base import MethodSpec, PLLMethod, register
from .corr import initial_confidences
from .mixup import draw_mixup, mix

SINKHORN_ITERS = 50  # the reference's fixed count
SINKHORN_TOL = 1e-6  # the fix: stop once the column marginals are met this closely (relative to n)
SINKHORN_CHECK_EVERY = 10
ZERO_FILL = 1e-5  # the reference's retry value for entries that are exactly zero
_ESTIMATE_STAGE_KEY = 1_000_000  # keeps stage A's mixup draws apart from stage B's at the same epoch and step


@dataclasses.dataclass(frozen=True)
class SolarParams:
    """SoLar's hyper-parameters; None = the dataset's value (DATASET_DEFAULTS, then COMMON_DEFAULTS), filled in
    before the config is hashed. Flat names: solar_<field>, but est_epochs."""

    est_epochs: int | None = None
    """SoLar stage A: epochs of the prior pre-estimation run (100 on CIFAR-10, 20 on CIFAR-100)."""
    rho_start: float | None = None
    """SoLar: share of each class's quota selected as reliable at epoch 0 (0.2)."""
    rho_end: float | None = None
    """SoLar: that share after the 50-epoch ramp (0.6 on CIFAR-10, 0.5 on CIFAR-100)."""
    gamma1: float | None = None
    """SoLar: moving-average rate of the class prior r in stage A (0.1 on CIFAR-10, 0.05 on CIFAR-100)."""
    gamma2: float | None = None
    """SoLar: moving-average rate of r in stage B (0.01)."""
    lamd: float | None = None
    """SoLar: Sinkhorn exponent lambda on the masked predictions (3)."""
    eta: float | None = None
    """SoLar: final weight of the reliable-set losses (0.9)."""
    tau: float | None = None
    """SoLar: high-confidence threshold that also marks a sample reliable (0.99)."""
    warmup: int | None = None
    """SoLar: epochs of the eta and rho ramps (50)."""
    queue_batches: int | None = None
    """SoLar: length of the prediction queue, in batches (64 -> 16,384 rows at batch 256)."""


# The reference's per-dataset values (docs/methods.md, SoLar).
DATASET_DEFAULTS = {
    "cifar10": dict(est_epochs=100, rho_start=0.2, rho_end=0.6, gamma1=0.1, gamma2=0.01),
    "cifar100": dict(est_epochs=20, rho_start=0.2, rho_end=0.5, gamma1=0.05, gamma2=0.01),
}
COMMON_DEFAULTS = dict(lamd=3.0, eta=0.9, tau=0.99, warmup=50, queue_batches=64)


@torch.no_grad()
def sinkhorn(costs: torch.Tensor, prior: torch.Tensor, lamd: float, faithful: bool = False,
             iters: int = SINKHORN_ITERS, tol: float = SINKHORN_TOL) -> tuple[torch.Tensor, dict]:
    """Soft pseudo-labels T (n x K) from masked predictions G (n x K) with column marginal n * prior (§7.3 step 5).

    Both modes start from P = G^lamd and alternate r_s = r / (P c), then c = (1/n) / (r_s^T P), in the reference's
    order; T_ik = n r_s,k P_ki c_i, so each row sums to 1 (c is updated last) and the columns approach n r.
    faithful=True replays the reference: float32, probability space, always `iters` iterations (its stop test can never
    fire), a NaN retry with ZERO_FILL on zero entries. The default runs the same iteration in log space (no
    underflow of G^lamd) and stops when the column residual max_k |sum_i T_ik - n r_k| / n falls below `tol`.
    A class that no row can take (an all-zero column) gets ZERO_FILL on its zero entries in both modes, as the
    reference's retry does, and the filled entries are zeroed again in the output.
    """
    n, k = costs.shape
    # the fix runs in float64; the reference's arithmetic is float32, where a row whose masked probabilities are
    # all below ~1e-15 underflows under the power lamd and sends the reference down its NaN retry
    g = costs.float() if faithful else costs.double()
    r = prior.float() if faithful else prior.double()
    zero = g == 0
    empty_column = zero.all(dim=0).any()
    if faithful:
        t = _sinkhorn_prob(g, r, lamd, iters)
        if torch.isnan(t).any() or empty_column:
            t = _sinkhorn_prob(g.masked_fill(zero, ZERO_FILL), r, lamd, iters)
            t = t.masked_fill(zero, 0.0)
        done = iters
    else:
        if empty_column:
            g = g.masked_fill(zero, ZERO_FILL)
        log_p = lamd * torch.log(g)  # -inf where g == 0
        log_r = torch.log(r)
        log_c = torch.full((n,), -math.log(n), dtype=g.dtype, device=g.device)
        done = 0
        for it in range(1, iters + 1):
            log_rs = log_r - torch.logsumexp(log_p + log_c[:, None], dim=0)  # K
            log_c = -math.log(n) - torch.logsumexp(log_p + log_rs[None, :], dim=1)  # n
            done = it
            if it % SINKHORN_CHECK_EVERY == 0:
                cols = torch.exp(log_p + log_rs[None, :] + log_c[:, None]).sum(dim=0) * n
                if (cols - n * r).abs().max() / n < tol:
                    break
        t = torch.exp(math.log(n) + log_p + log_rs[None, :] + log_c[:, None])
        if empty_column:
            t = t.masked_fill(zero, 0.0)
    residuals = {"row": (t.sum(dim=1) - 1).abs().max(), "col": (t.sum(dim=0) - n * r).abs().max() / n,
                 "iters": done}
    return t.to(costs.dtype), residuals


def _sinkhorn_prob(g: torch.Tensor, r: torch.Tensor, lamd: float, iters: int) -> torch.Tensor:
    n = g.shape[0]
    p = g.pow(lamd).t()  # K x n
    c = torch.full((n,), 1.0 / n, dtype=g.dtype, device=g.device)
    for _ in range(iters):
        r_s = r / (p @ c)
        c = (1.0 / n) / (r_s @ p)
    return (n * r_s[:, None] * p * c[None, :]).t()


def select_reliable(ot_loss: torch.Tensor, pseudo: torch.Tensor, agreement: torch.Tensor, prior: torch.Tensor,
                    share: float, batch_size: int, tau: float) -> torch.Tensor:
    """Reliable samples of a batch (§7.3 step 7): per pseudo-class j, the clip(ceil(B r_j share), 1, count_j)
    smallest OT losses, plus every sample whose agreement sum_k q_ik p_ik exceeds tau. Vectorised: rank each sample
    by its loss within its pseudo-class with two stable sorts."""
    k = prior.numel()
    order = torch.argsort(ot_loss, stable=True)
    order = order[torch.argsort(pseudo[order], stable=True)]  # grouped by class, ascending loss within a class
    counts = torch.bincount(pseudo, minlength=k)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(pseudo)
    rank[order] = torch.arange(len(pseudo), device=pseudo.device) - starts[pseudo[order]]
    quota = torch.ceil(batch_size * prior * share).long().clamp(min=1)
    quota = torch.minimum(quota, counts)
    return (rank < quota[pseudo]) | (agreement > tau)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample -sum_k t_k log softmax(z)_k."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


class SoLar(PLLMethod):
    """State: PRODEN confidences W, the class prior r, the prediction queue; the stage-aware step of §7.3."""

    name = "solar"

    def __init__(self, cfg: TrialConfig, candidates: torch.Tensor, class_counts: list[int], device: torch.device,
                 comm: Comm | None = None):
        self.cfg = cfg
        self.comm = comm or Comm()
        self.hp = cfg.params
        self.candidates = candidates.to(device=device, dtype=torch.bool)
        k = self.candidates.shape[1]
        self.num_classes = k
        self.confidences = initial_confidences(self.candidates)
        self.prior = torch.full((k,), 1.0 / k, device=device)
        self.queue = torch.zeros(self.hp.queue_batches * cfg.batch_size, k, device=device)
        self.queue_rows = 0  # rows pushed so far (host-side, so checking "full" needs no device read)
        self.stage = "estimate" if self.hp.est_epochs > 0 else "train"
        self._stats = self._new_stats()

    # -- stages and epochs ---------------------------------------------------------------------------------------
    def stages(self) -> list[tuple[str, int]]:
        est = self.hp.est_epochs
        return ([("estimate", est)] if est > 0 else []) + [("train", self.cfg.epochs)]

    def enter_stage(self, stage: str, fresh: bool) -> None:
        self.stage = stage
        if fresh:  # a stage starts from scratch but for r (stage A starts it uniform, stage B inherits it)
            self.confidences = initial_confidences(self.candidates)
            self.queue.zero_()
            self.queue_rows = 0
            if stage == "estimate":
                self.prior.fill_(1.0 / self.num_classes)

    def _ramp(self, epoch: int) -> float:
        return min(epoch / self.hp.warmup, 1.0)

    def _new_stats(self) -> dict[str, torch.Tensor]:
        dev = self.candidates.device
        return {"reliable": torch.zeros((), device=dev), "seen": torch.zeros((), device=dev),
                "row": torch.zeros((), device=dev), "col": torch.zeros((), device=dev)}

    def end_epoch(self, stage: str, epoch: int, predict_train) -> dict[str, float]:
        """r <- gamma r_emp + (1 - gamma) r, with r_emp the histogram of the candidate-masked argmax over the whole
        training set under the test transform (§7.4)."""
        indices, logits = predict_train()
        pred = (torch.softmax(logits.float(), dim=1) * self.candidates[indices]).argmax(dim=1)
        counts = self.comm.all_reduce_sum(torch.bincount(pred, minlength=self.num_classes).float())
        r_emp = counts / counts.sum()
        gamma = self.hp.gamma1 if stage == "estimate" else self.hp.gamma2
        self.prior = gamma * r_emp + (1.0 - gamma) * self.prior
        s = self._stats
        out = {"sinkhorn_row_residual": float(s["row"]), "sinkhorn_col_residual": float(s["col"]),
               "reliable_frac": float(s["reliable"] / s["seen"].clamp_min(1))}
        self._stats = self._new_stats()
        return out

    def prior_estimate(self, classifier=None) -> torch.Tensor:
        return self.prior

    # -- one step ------------------------------------------------------------------------------------------------
    def train_step(self, model, x_weak: torch.Tensor, x_strong: torch.Tensor, idx: torch.Tensor, epoch: int,
                   step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hp, comm = self.hp, self.comm
        b = x_weak.shape[0]
        z_w, _ = model(x_weak)  # separate forwards: each view has its own BatchNorm statistics, as the reference
        z_s, _ = model(x_strong)
        w_old = self.confidences[idx]
        y = self.candidates[idx]

        with torch.no_grad():
            masked = torch.softmax(z_w.detach(), dim=1) * y
            proden = masked / masked.sum(dim=1, keepdim=True)
            # Sinkhorn over [queue; global batch] once the queue is full, on every rank alike
            batch_all = comm.all_gather_cat(masked)
            q_len = len(self.queue)
            full = q_len > 0 and self.queue_rows >= q_len
            stacked = torch.cat([self.queue, batch_all]) if full else batch_all
            if q_len:  # shift down by the batch, newest rows on top
                g = batch_all.shape[0]
                self.queue = torch.cat([batch_all, self.queue[:-g]]) if g < q_len else batch_all[-q_len:].clone()
                self.queue_rows += g
            plan, residuals = sinkhorn(stacked, self.prior, hp.lamd,
                                       faithful=self.cfg.is_faithful("sinkhorn"))
            start = stacked.shape[0] - batch_all.shape[0] + comm.rank * b
            soft = plan[start:start + b].float()
            pseudo = soft.argmax(dim=1)
            self._stats["row"] = residuals["row"]
            self._stats["col"] = residuals["col"]

        log_p = F.log_softmax(z_w, dim=1)
        rn_loss = -(w_old * log_p).sum(dim=1)
        ot_loss = -(soft * log_p).sum(dim=1)
        zero = z_w.new_zeros(())
        if epoch < 1:
            loss, cons, mix_loss = rn_loss.mean(), zero, zero
            reliable = torch.zeros(b, dtype=torch.bool, device=z_w.device)
        else:
            ramp = self._ramp(epoch)
            eta = hp.eta * ramp
            share = hp.rho_start + (hp.rho_end - hp.rho_start) * ramp
            agreement = (soft * log_p.detach().exp()).sum(dim=1)
            reliable = select_reliable(ot_loss.detach(), pseudo, agreement, self.prior, share, b, hp.tau)
            n_rel = int(reliable.sum())  # data-dependent shapes below: one host read per step is inherent here
            if n_rel == 0:
                loss, cons, mix_loss = rn_loss.mean(), zero, zero
            else:
                q_rel = soft[reliable]
                cons = soft_cross_entropy(z_s[reliable], q_rel).mean()
                epoch_key = epoch + (0 if self.stage == "train" else _ESTIMATE_STAGE_KEY)
                lam, perm = draw_mixup(self.cfg.seed, epoch_key, step, comm.rank, n_rel, self.cfg.mixup_beta,
                                       z_w.device)
                x_mix = mix(x_weak[reliable], lam, perm)
                z_mix, _ = model(x_mix)
                mix_loss = soft_cross_entropy(z_mix, mix(q_rel, lam, perm)).mean()
                unreliable = ~reliable
                rn_term = rn_loss[unreliable].mean() if bool(unreliable.any()) else zero
                loss = eta * (ot_loss[reliable].mean() + cons + mix_loss) + (1.0 - eta) * rn_term

        # W <- the PRODEN target from this forward (pre-step weights); every rank writes every rank's rows
        all_idx = comm.all_gather_cat(idx)
        all_new = comm.all_gather_cat(proden)
        self.confidences[all_idx] = all_new
        self._stats["reliable"] += reliable.sum()
        self._stats["seen"] += b
        logs = {"loss": loss.detach(), "loss_con": cons.detach(), "loss_mix": mix_loss.detach()}
        return loss, logs

    # -- checkpoint ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"confidences": self.confidences.cpu(), "prior": self.prior.cpu(), "queue": self.queue.cpu(),
                "queue_rows": self.queue_rows, "stage": self.stage}

    def load_state_dict(self, state: dict) -> None:
        device = self.candidates.device
        self.confidences = state["confidences"].to(device)
        self.prior = state["prior"].to(device)
        self.queue = state["queue"].to(device)
        self.queue_rows = state["queue_rows"]
        self.stage = state["stage"]


def _resolve(cfg: TrialConfig, params: SolarParams) -> SolarParams:
    base = {**DATASET_DEFAULTS[cfg.dataset], **COMMON_DEFAULTS}
    return dataclasses.replace(params, **{k: v for k, v in base.items() if getattr(params, k) is None})


def _validate(cfg: TrialConfig) -> None:
    from ..config import ConfigError

    p = cfg.params
    if p.est_epochs < 0:
        raise ConfigError(f"est_epochs={p.est_epochs!r}: must be >= 0")
    for name in ("rho_start", "rho_end", "gamma1", "gamma2", "eta", "tau"):
        if not 0.0 <= getattr(p, name) <= 1.0:
            raise ConfigError(f"solar_{name}={getattr(p, name)!r}: must lie in [0, 1]")
    if p.lamd <= 0:
        raise ConfigError(f"solar_lamd={p.lamd!r}: must be > 0")
    if p.warmup < 1:
        raise ConfigError(f"solar_warmup={p.warmup!r}: must be >= 1")
    if p.queue_batches < 0:
        raise ConfigError(f"solar_queue_batches={p.queue_batches!r}: must be >= 0")


def solar_cost(cfg: TrialConfig, n_train: int, per_epoch: int, n_test: int) -> tuple[float, float]:
    """Both stages: two views plus mixup on the reliable subset (~0.6 of the batch), and the per-epoch pass over
    the training set besides the test set (METHOD.md §12.1)."""
    epochs = cfg.epochs + cfg.params.est_epochs
    return per_epoch * 2.6 * epochs, (n_train + n_test) * epochs


SPEC = register(MethodSpec(
    name="solar", display="SoLar", impl=SoLar, doc="SoLar: optimal-transport pseudo-labels, two stages",
    params=SolarParams, param_prefix="solar_", flat_names={"est_epochs": "est_epochs"}, own_mixup=True,
    variants={"solar": {}},
    epoch_columns={
        "sinkhorn_row_residual": "max |row sum - 1| of the last Sinkhorn plan of the epoch",
        "sinkhorn_col_residual": "max |column sum - n r_k| / n of the last Sinkhorn plan of the epoch",
        "reliable_frac": "share of the epoch's samples selected as reliable",
    },
    validate=_validate, resolve=_resolve, cost=solar_cost, extra_epochs=lambda cfg: cfg.params.est_epochs,
))
