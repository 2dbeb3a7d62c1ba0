"""PiCO (Wang et al., ICLR 2022) and PiCO+RECORDS (PLUGINS.md §P3-§P6).

PiCO disambiguates through class prototypes in a contrastive embedding space rather than through the classifier's
own outputs: a projection head on the query encoder's features gives unit embeddings q; a momentum copy of the
encoder embeds the strong view into keys k that fill a queue with their pseudo-labels; per-class prototypes follow
an EMA of the embeddings labelled with the classifier's candidate-restricted argmax; and each sample's confidence
row moves (EMA with the phi schedule) toward the one-hot of its nearest candidate prototype. The loss is the soft
cross-entropy against the confidences plus a supervised-contrastive term whose positives share a pseudo-label.

RECORDS plugs in where PiCO selects labels with the classifier (§P4): reading (a) (default) debiases the pseudo-label
that feeds the prototypes, the queue and the positive sets with the momentum prior estimate; reading (b) debiases the
prototype scores that drive the confidence update instead. Both adjust test predictions.

The projection head and the key encoder are the method's own modules (PLLMethod.extra_parameters), so the backbone
and the training loop are shared with every other method; both are in the method's checkpoint state.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..comm import Comm
from ..config import TrialConfig
from ..models import ModelHandle, init_parameters, unwrap
from .base import MethodSpec, PLLMethod, register
from .corr import initial_confidences
from .records import RecordsPrior, log_prior

_HEAD_SEED_OFFSET = 7919  # the head's init generator: apart from the backbone's (seed + stage index)
_QUEUE_SEED_OFFSET = 104729  # the initial queue's generator


@dataclasses.dataclass(frozen=True)
class PicoParams:
    """PiCO's hyper-parameters (CIFAR values of the reference's run.sh, §P3.6). The warm-up before prototype-based
    disambiguation is the config's `upd_start` (PiCO's prot_start, 1 on CIFAR). Flat names: pico_<field>."""

    queue: int = 8192
    """PiCO: rows of the key queue (moco_queue); a multiple of the batch size."""
    moco_m: float = 0.999
    """PiCO: momentum of the key encoder's parameter EMA."""
    proto_m: float = 0.99
    """PiCO: momentum (gamma) of the prototype EMA."""
    loss_weight: float = 0.5
    """PiCO: weight lambda of the contrastive loss."""
    temperature: float = 0.07
    """PiCO: temperature of the SupCon / MoCo logits (base temperature equal, so the outer factor is 1)."""
    phi_start: float = 0.95
    """PiCO: confidence-EMA weight phi in the first updating epoch (conf_ema_range start)."""
    phi_end: float = 0.8
    """PiCO: phi in the last epoch (reached by the fixed schedule; faithful 'pico_phi' stops one step short)."""
    low_dim: int = 128
    """PiCO: width of the projection head's unit embedding."""
    reading: str = "a"
    """PiCO+RECORDS: 'a' debiases the classifier pseudo-label (prototypes, queue labels, positives); 'b' debiases
    the prototype scores of the confidence update (§P4.2-P4.3)."""
    adjust_always: bool = False
    """PiCO+RECORDS reading (a): adjust the pseudo-label in warm-up epochs too (default: from upd_start on)."""
    proto_temp: float = 0.07
    """PiCO+RECORDS reading (b): temperature T_p of the prototype cosines before log pi-hat is subtracted."""
    zero_prototypes: str = "score"
    """PiCO: a prototype still zero scores 0 in the confidence update ('score', the reference: it beats candidates
    with a negative cosine), or is skipped ('skip'; the classifier's pseudo-label when every candidate's is zero)."""


READINGS = ("a", "b")
ZERO_PROTOTYPES = ("score", "skip")

# ---------------------------------------------------------------------------------------------------------------
# Pure functions


def phi_schedule(epoch: int, epochs: int, start: float, end: float, faithful: bool = False) -> float:
    """The confidence-EMA weight phi used while training epoch `epoch` (§P3.4, §P6-10).

    Fixed: linear from `start` at epoch 0 to `end` at the last epoch. Faithful: the reference sets the value after
    epoch e-1 as start + (e-1)/E (end - start), so epoch e >= 1 lags one step and never reaches `end`, and epoch 0
    runs with the constructor's 0.99 (unused while upd_start >= 1)."""
    if faithful:
        return 0.99 if epoch == 0 else start + (epoch - 1) / epochs * (end - start)
    return start if epochs <= 1 else start + (end - start) * epoch / (epochs - 1)


@torch.no_grad()
def update_prototypes(prototypes: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                      gamma: float) -> torch.Tensor:
    """The reference's per-sample loop `P[y_j] = gamma P[y_j] + (1 - gamma) q_j` over the batch in order, then one
    row normalisation, in closed form (§P6-12): sample j weighs (1 - gamma) gamma^r_j, r_j the number of later
    samples with its label, and class c's old row is scaled by gamma^n_c. A row never labelled stays as it was (zero
    rows stay zero: F.normalize divides by max(norm, eps))."""
    k = prototypes.shape[0]
    onehot = F.one_hot(labels, k).to(embeddings.dtype)  # n x K
    later = onehot.flip(0).cumsum(0).flip(0) - onehot  # later[j, c]: samples after j labelled c
    r = later.gather(1, labels[:, None]).squeeze(1)
    weights = (1.0 - gamma) * torch.pow(gamma, r)
    n_c = onehot.sum(0)
    new = prototypes * torch.pow(gamma, n_c)[:, None]
    # the scatter as a (K x n) @ (n x d) product: index_add on the CPU takes ~100 ms for a 64 x 128 batch here
    new = new + (onehot * weights[:, None]).T @ embeddings
    return F.normalize(new, p=2, dim=1)


def supcon_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, labels: torch.Tensor,
                queue_labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss of the B anchors q over F = [q; k; queue] (§P3.2): positives share the anchor's
    pseudo-label, the anchor's own column is excluded from numerator and denominator. Every anchor has a positive
    (its own key). Gradients flow through every q row; k and the queue are constants."""
    feats = torch.cat([q, k.detach(), queue.detach()])
    all_labels = torch.cat([labels, labels, queue_labels])
    logits = q @ feats.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self.diagonal().fill_(False)  # the anchors' own columns (CPU index tensors would be a host -> device copy)
    positive = (labels[:, None] == all_labels[None, :]) & not_self
    denom = torch.log((torch.exp(logits) * not_self).sum(dim=1, keepdim=True) + 1e-12)
    log_prob = logits - denom
    pos = positive.to(logits.dtype)
    return -((pos * log_prob).sum(dim=1) / pos.sum(dim=1)).mean()


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE (the warm-up's contrastive loss): each q's own key against every queue row."""
    pos = (q * k.detach()).sum(dim=1, keepdim=True)
    neg = q @ queue.detach().T
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-(1/B) sum_i sum_k w_ik log softmax(z_i)_k (PiCO's partial_loss)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def masked_argmax(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """argmax over each row's candidates, as the reference's argmax(softmax(.) * Y) (first index on ties)."""
    return (torch.softmax(scores, dim=1) * candidates).argmax(dim=1)


def prototype_choice(scores: torch.Tensor, candidates: torch.Tensor, usable: torch.Tensor | None,
                     fallback: torch.Tensor) -> torch.Tensor:
    """The confidence update's class: the best-scoring candidate (as masked_argmax); with `usable` (K bools), only
    candidates whose prototype is usable compete, and a row with none takes `fallback` (§P6-13 fix option)."""
    if usable is None:
        return masked_argmax(scores, candidates)
    allowed = candidates & usable[None, :]
    best = scores.masked_fill(~allowed, float("-inf")).argmax(dim=1)
    return torch.where(allowed.any(dim=1), best, fallback)


def initial_queue(size: int, dim: int, generator: torch.Generator, faithful: bool = False) -> torch.Tensor:
    """Gaussian keys, row-normalised (fixed) or normalised per column as the reference (§P6-9: rows of norm about
    1/sqrt(size/dim))."""
    queue = torch.randn(size, dim, generator=generator)
    return F.normalize(queue, dim=0 if faithful else 1)


class ProjectionHead(nn.Sequential):
    """PiCO's head on the backbone feature: Linear(d, d) -> ReLU -> Linear(d, low_dim); the embedding is its
    L2-normalised output."""

    def __init__(self, in_dim: int, low_dim: int):
        super().__init__(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, low_dim))


def embed(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    return F.normalize(head(features), dim=1)


# ---------------------------------------------------------------------------------------------------------------
# The method object


class Pico(PLLMethod):
    """State: W, the projection head, the key encoder (backbone + head copy), the queue with its labels and
    pointer, the prototypes, and RECORDS' feature mean mu (tracked for the pi-hat diagnostic in plain PiCO too)."""

    name = "pico"

    def __init__(self, cfg: TrialConfig, candidates: torch.Tensor, class_counts: list[int], device: torch.device,
                 comm: Comm | None = None):
        self.cfg = cfg
        self.hp: PicoParams = cfg.params
        self.comm = comm or Comm()
        self.device = device
        self.candidates = candidates.to(device=device, dtype=torch.bool)
        self.num_classes = self.candidates.shape[1]
        self.confidences = initial_confidences(self.candidates)
        gen = torch.Generator().manual_seed(cfg.seed + _QUEUE_SEED_OFFSET)
        self.queue = initial_queue(self.hp.queue, self.hp.low_dim, gen, cfg.is_faithful("pico_queue_init")).to(device)
        # -1 = an initial slot: never a positive. (The reference's Gaussian float labels never equal a class either,
        # so this is the same mask in both modes.)
        self.queue_labels = torch.full((self.hp.queue,), -1, dtype=torch.long, device=device)
        self.queue_ptr = 0  # host-side: the global batch size is fixed, so it needs no device read
        self.prototypes = torch.zeros(self.num_classes, self.hp.low_dim, device=device)
        self.records_prior = RecordsPrior(cfg.prior_momentum, self.comm)
        self.head: ProjectionHead | None = None
        self.key_net: nn.Module | None = None
        self.key_head: ProjectionHead | None = None
        self._pending: dict | None = None  # a loaded state waiting for the modules (built in extra_parameters)
        self._stats = self._new_stats()

    def _new_stats(self) -> dict[str, torch.Tensor]:
        return {name: torch.zeros((), dtype=torch.float64, device=self.device)
                for name in ("loss_cls", "loss_cont", "steps")}

    # -- modules -------------------------------------------------------------------------------------------------
    def extra_parameters(self, model) -> list[nn.Parameter]:
        """Build the projection head (trained with the model) and the key encoder (a frozen copy of backbone and
        head, moved by EMA only); a checkpoint's modules replace the fresh ones."""
        net = unwrap(model)
        head = ProjectionHead(net.feature_dim, self.hp.low_dim)
        init_parameters(head, torch.Generator().manual_seed(self.cfg.seed + _HEAD_SEED_OFFSET))
        device = next(net.parameters()).device
        self.head = head.to(device)
        self.key_net = copy.deepcopy(net)
        self.key_head = copy.deepcopy(self.head)
        for p in [*self.key_net.parameters(), *self.key_head.parameters()]:
            p.requires_grad_(False)
        if self._pending is not None:
            self.head.load_state_dict(self._pending["head"])
            self.key_net.load_state_dict(self._pending["key_net"])
            self.key_head.load_state_dict(self._pending["key_head"])
            self._pending = None
        self.key_net.train()
        return list(self.head.parameters())

    def before_optimizer_step(self) -> None:
        """The head lives outside the DDP model, so average its gradients over ranks here as DDP does for the
        model's (one flat all-reduce)."""
        if self.comm.world_size == 1 or self.head is None:
            return
        grads = [p.grad for p in self.head.parameters()]
        flat = self.comm.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / self.comm.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    @torch.no_grad()
    def _momentum_update(self, model) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q over the parameters (not the BN buffers: the key encoder's
        statistics come from its own train-mode forwards)."""
        m = self.hp.moco_m
        key = [*self.key_net.parameters(), *self.key_head.parameters()]
        query = [*unwrap(model.net).parameters(), *self.head.parameters()]
        torch._foreach_mul_(key, m)
        torch._foreach_add_(key, query, alpha=1.0 - m)

    # -- priors --------------------------------------------------------------------------------------------------
    def adjustment(self, classifier: nn.Linear) -> torch.Tensor | None:
        """log(pi-hat + eps) with the current mu and classifier, or None (plain PiCO, or before the first step)."""
        prior = self.prior_estimate(classifier) if self.cfg.records else None
        return None if prior is None else log_prior(prior)

    def adjust_test_logits(self, logits: torch.Tensor, classifier: nn.Linear) -> torch.Tensor:
        adj = self.adjustment(classifier)
        return logits if adj is None else logits - adj

    # -- one step ------------------------------------------------------------------------------------------------
    def train_step(self, model: ModelHandle, x_weak: torch.Tensor, x_strong: torch.Tensor, idx: torch.Tensor,
                   epoch: int, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, hp, comm = self.cfg, self.hp, self.comm
        updating = epoch >= cfg.upd_start
        y = self.candidates[idx]

        z, feat = model(x_weak)  # 1. query forward: logits and backbone features phi
        q = embed(self.head, feat)

        with torch.no_grad():
            # RECORDS' mu: EMA of the global batch-mean weak phi of the query encoder (§P4.1)
            self.records_prior.update(feat.detach())
            adj = self.adjustment(model.classifier)
            # 2. the classifier pseudo-label, debiased in reading (a) once updating (or always, if asked)
            z_d = z.detach()
            if adj is not None and hp.reading == "a" and (updating or hp.adjust_always):
                z_d = z_d - adj
            pseudo = masked_argmax(z_d, y)
            # 3. prototype scores against the prototypes before this step's update
            proto_logits = q.detach() @ self.prototypes.T
            usable = (self.prototypes.abs().sum(dim=1) > 0) if hp.zero_prototypes == "skip" else None
            # 4. prototypes: EMA over the global batch in rank order, every epoch
            all_q, all_pseudo = comm.all_gather_cat(q.detach()), comm.all_gather_cat(pseudo)
            self.prototypes = update_prototypes(self.prototypes, all_q, all_pseudo, hp.proto_m)
            # 5. key encoder: EMA, then the strong view's keys (train mode, no gradient)
            self._momentum_update(model)
            _, key_feat = ModelHandle(self.key_net, model.precision)(x_strong)
            k = embed(self.key_head, key_feat)
            # 6. the contrast set uses the queue as it was before this batch
            queue, queue_labels = self.queue.clone(), self.queue_labels.clone()
            # 7. enqueue the global batch's keys and labels
            all_k = comm.all_gather_cat(k)
            n = len(all_k)
            self.queue[self.queue_ptr:self.queue_ptr + n] = all_k
            self.queue_labels[self.queue_ptr:self.queue_ptr + n] = all_pseudo
            self.queue_ptr = (self.queue_ptr + n) % hp.queue
            # 8. confidences toward the nearest candidate prototype (before the loss, which uses the new rows)
            if updating:
                scores = proto_logits / hp.proto_temp - adj if adj is not None and hp.reading == "b" else proto_logits
                choice = prototype_choice(scores, y, usable, pseudo)
                phi = phi_schedule(epoch, cfg.epochs, hp.phi_start, hp.phi_end, cfg.is_faithful("pico_phi"))
                new_w = phi * self.confidences[idx] + (1.0 - phi) * F.one_hot(choice, self.num_classes).float()
                self.confidences[comm.all_gather_cat(idx)] = comm.all_gather_cat(new_w)
                targets = new_w
            else:
                targets = self.confidences[idx]

        # 9. contrastive loss: SupCon with pseudo-label positives once updating, MoCo InfoNCE in warm-up
        if updating:
            loss_cont = supcon_loss(q, k, queue, pseudo, queue_labels, hp.temperature)
        else:
            loss_cont = moco_loss(q, k, queue, hp.temperature)
        loss_cls = soft_cross_entropy(z, targets)  # 10. with the rows just updated
        loss = loss_cls + hp.loss_weight * loss_cont
        self._stats["loss_cls"] += loss_cls.detach()
        self._stats["loss_cont"] += loss_cont.detach()
        self._stats["steps"] += 1
        return loss, {"loss": loss.detach()}

    def end_epoch(self, stage: str, epoch: int, predict_train) -> dict[str, float]:
        s = self._stats
        steps = max(float(s["steps"]), 1.0)
        out = {"loss_cls": float(s["loss_cls"]) / steps, "loss_cont": float(s["loss_cont"]) / steps,
               "zero_prototypes": float((self.prototypes.abs().sum(dim=1) == 0).sum())}
        self._stats = self._new_stats()
        return out

    # -- checkpoint ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        modules = {name: {k: v.cpu() for k, v in getattr(self, name).state_dict().items()}
                   for name in ("head", "key_net", "key_head") if getattr(self, name) is not None}
        return {"confidences": self.confidences.cpu(), "mu": self.records_prior.state(),
                "queue": self.queue.cpu(), "queue_labels": self.queue_labels.cpu(), "queue_ptr": self.queue_ptr,
                "prototypes": self.prototypes.cpu(), **modules}

    def load_state_dict(self, state: dict) -> None:
        device = self.device
        self.confidences = state["confidences"].to(device)
        self.records_prior.load(state["mu"], device)
        self.queue = state["queue"].to(device)
        self.queue_labels = state["queue_labels"].to(device)
        self.queue_ptr = int(state["queue_ptr"])
        self.prototypes = state["prototypes"].to(device)
        self._pending = {name: state[name] for name in ("head", "key_net", "key_head")}


def _validate(cfg: TrialConfig) -> None:
    from ..config import ConfigError

    p: PicoParams = cfg.params
    if p.queue < cfg.batch_size or p.queue % cfg.batch_size:
        raise ConfigError(f"pico_queue={p.queue!r}: must be a multiple of batch_size={cfg.batch_size} (the queue "
                          "is written one global batch at a time)")
    for name in ("moco_m", "proto_m"):
        if not 0.0 <= getattr(p, name) < 1.0:
            raise ConfigError(f"pico_{name}={getattr(p, name)!r}: the EMA momentum must lie in [0, 1)")
    for name in ("phi_start", "phi_end"):
        if not 0.0 <= getattr(p, name) <= 1.0:
            raise ConfigError(f"pico_{name}={getattr(p, name)!r}: must lie in [0, 1]")
    for name in ("temperature", "proto_temp"):
        if not getattr(p, name) > 0:
            raise ConfigError(f"pico_{name}={getattr(p, name)!r}: must be > 0")
    if p.loss_weight < 0:
        raise ConfigError(f"pico_loss_weight={p.loss_weight!r}: must be >= 0")
    if p.low_dim < 1:
        raise ConfigError(f"pico_low_dim={p.low_dim!r}: must be >= 1")
    if p.zero_prototypes not in ZERO_PROTOTYPES:
        raise ConfigError(f"pico_zero_prototypes={p.zero_prototypes!r}: choose one of {list(ZERO_PROTOTYPES)}")
    if p.reading not in READINGS:
        raise ConfigError(f"pico_reading={p.reading!r}: choose one of {list(READINGS)}")


def pico_cost(cfg: TrialConfig, n_train: int, per_epoch: int, n_test: int) -> tuple[float, float]:
    """The weak view forward and backward (query encoder), the strong view forward only (key encoder)."""
    return per_epoch * cfg.epochs, (per_epoch + n_test) * cfg.epochs


SPEC = register(MethodSpec(
    name="pico", display="PiCO", impl=Pico, doc="PiCO: contrastive prototypes and a momentum key encoder; +RECORDS",
    params=PicoParams, param_prefix="pico_", switches=frozenset({"records"}),
    variants={"pico": {}, "pico+records": {"records": True}},
    epoch_columns={
        "loss_cls": "PiCO: mean classification term (soft cross-entropy against the updated confidences)",
        "loss_cont": "PiCO: mean contrastive term (SupCon after warm-up, MoCo InfoNCE during it), unweighted",
        "zero_prototypes": "PiCO: prototype rows still zero at the epoch's end (classes never pseudo-labelled)",
    },
    validate=_validate, cost=pico_cost,
))
