"""One trial = one frozen, validated `TrialConfig`; how and where it runs = `RunOptions`.

`TrialConfig` is the experiment's identity: it is validated once, hashed (`config_hash`) and stored with every
result row and checkpoint. `RunOptions` holds what does not change the result (paths, device, loader workers,
checkpoint cadence), so the same cell run from another data copy or machine keeps its identity.
Defaults are the README commands of the reference (METHOD.md Appendix A), not its argparse defaults.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import textwrap
from dataclasses import dataclass, field
from typing import Any

DATASETS = {"cifar10": 10, "cifar100": 100}
# Images per class in the full training split: the head-class size n_0 of the LT profile.
FULL_CLASS_SIZE = {"cifar10": 5000, "cifar100": 500}
METHODS = ("corr", "solar")
ARCHS = ("resnet18", "small-cnn")
ORACLE_LA_MODES = ("disamb", "loss", "posthoc")
PRECISIONS = ("fp32", "bf16")

# Reference behaviours we fix by default; each can be switched back on by name (METHOD.md §11).
FAITHFUL_QUIRKS = {
    "nu_shuffle": "key the CIFAR-100-LT-NU class-count shuffle on the training seed, as the reference does "
    "(§1.1), instead of on data_seed",
    "test_norm": "normalise test images with CIFAR-100 statistics for both datasets (reference bug, §1.3)",
    "cutout": "Cutout centre uniform on (1, 32] and an end-inclusive rectangle, as the reference (§1.4)",
    "disamb_arith": "disambiguate in probability space with eps, as the reference, instead of in log space "
    "(§11.13); can change which CORR candidates underflow and die",
    "batch_order": "batch order keyed on seed 0 for every training seed, like the reference's "
    "DistributedSampler (§1.5), instead of on the training seed",
    "mixup_epoch0": "forward the mixed views in epoch 0 although their loss is off (§5.2); they still "
    "enter the BatchNorm statistics",
    "sinkhorn": "SoLar's Sinkhorn in probability space for always 50 iterations, as the reference (§7.3, "
    "§11.11), instead of in log space with a stop test",
}

# SoLar's per-dataset hyper-parameters (METHOD.md §7.5); None in a config means "the dataset's value".
SOLAR_DEFAULTS = {
    "cifar10": dict(est_epochs=100, solar_rho_start=0.2, solar_rho_end=0.6, solar_gamma1=0.1, solar_gamma2=0.01),
    "cifar100": dict(est_epochs=20, solar_rho_start=0.2, solar_rho_end=0.5, solar_gamma1=0.05, solar_gamma2=0.01),
}
SOLAR_FIELDS = (
    "est_epochs", "solar_rho_start", "solar_rho_end", "solar_gamma1", "solar_gamma2", "solar_lamd",
    "solar_eta", "solar_tau", "solar_warmup", "solar_queue_batches",
)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one LT-PLL training run (one cell of a sweep)."""

    # --- data -------------------------------------------------------------------------------------------
    dataset: str = "cifar10"
    """Base dataset: 'cifar10' (K=10) or 'cifar100' (K=100)."""
    nu: bool = False
    """CIFAR-100-LT-NU: labels inside the true label's superclass join the candidate set with probability 8q,
    the others with q; also shuffles which class gets which count (METHOD.md §1.1-1.2). CIFAR-100 only."""
    rho: float = 100.0
    """Imbalance ratio n_max / n_min (50 or 100 in the paper): n_c = int(img_max * (1/rho)^(c/(K-1)))."""
    q: float = 0.3
    """Ambiguity: probability that each non-true label enters a sample's candidate set."""
    img_max: int | None = None
    """Head-class size n_0; None = the whole class (5000 for CIFAR-10, 500 for CIFAR-100). Smaller values
    give quick runs on a proportionally smaller LT set."""
    test_per_class: int | None = None
    """Test images kept per class (the first in file order); None = the full balanced test split."""
    data_seed: int = 0
    """Seed of the LT subset and of the candidate sets (the reference hard-codes 0, §11.1)."""

    # --- method -----------------------------------------------------------------------------------------
    method: str = "corr"
    """PLL method: 'corr' (the CORR family: CORR, +RECORDS, +Mixup, +Oracle-LA) or 'solar' (SoLar, §7)."""
    records: bool = False
    """RECORDS: disambiguate and predict with the momentum-estimated prior softmax(A mu + b) (§4)."""
    mixup: bool = False
    """Add the mixup loss on mixed weak/strong views from epoch `upd_start` on (§5); works with or without
    RECORDS."""
    oracle_la: str | None = None
    """CORR + Oracle-LA with the true training prior: 'disamb' (RECORDS with the oracle prior), 'loss'
    (logit-adjusted loss), 'posthoc' (plain CORR, adjusted prediction); None = off (§6)."""
    prior_momentum: float = 0.9
    """m: momentum of the feature-mean EMA behind RECORDS' prior estimate (`--m` in the reference)."""
    mixup_weight: float = 1.0
    """alpha: weight of the mixup loss (the reference's `--alpha`; not the Beta parameter)."""
    mixup_beta: float = 4.0
    """Mixup's lambda ~ Beta(b, b), then max(lambda, 1 - lambda); the reference hard-codes 4."""
    upd_start: int = 1
    """First epoch in which confidences are updated (and the mixup loss is on); before it W stays uniform
    over the candidates."""

    # --- SoLar (method='solar' only; None = the dataset's value from METHOD.md §7.5) --------------------------
    est_epochs: int | None = None
    """SoLar stage A: epochs of the prior pre-estimation run (100 on CIFAR-10, 20 on CIFAR-100)."""
    solar_rho_start: float | None = None
    """SoLar: share of each class's quota selected as reliable at epoch 0 (0.2)."""
    solar_rho_end: float | None = None
    """SoLar: that share after the 50-epoch ramp (0.6 on CIFAR-10, 0.5 on CIFAR-100)."""
    solar_gamma1: float | None = None
    """SoLar: moving-average rate of the class prior r in stage A (0.1 on CIFAR-10, 0.05 on CIFAR-100)."""
    solar_gamma2: float | None = None
    """SoLar: moving-average rate of r in stage B (0.01)."""
    solar_lamd: float | None = None
    """SoLar: Sinkhorn exponent lambda on the masked predictions (3)."""
    solar_eta: float | None = None
    """SoLar: final weight of the reliable-set losses (0.9)."""
    solar_tau: float | None = None
    """SoLar: high-confidence threshold that also marks a sample reliable (0.99)."""
    solar_warmup: int | None = None
    """SoLar: epochs of the eta and rho ramps (50)."""
    solar_queue_batches: int | None = None
    """SoLar: length of the prediction queue, in batches (64 -> 16,384 rows at batch 256)."""

    # --- model and optimisation -------------------------------------------------------------------------
    arch: str = "resnet18"
    """Backbone: 'resnet18' (CIFAR ResNet-18, §2) or 'small-cnn' (a few-conv net for CPU smoke runs)."""
    epochs: int = 800
    """Training epochs (the cosine schedule's length)."""
    batch_size: int = 256
    """Global batch size (split across data-parallel workers); the last incomplete batch is dropped."""
    lr: float = 0.01
    """Initial learning rate of SGD."""
    weight_decay: float = 1e-3
    """Weight decay on all parameters, BN and biases included (§8.1)."""
    momentum: float = 0.9
    """SGD momentum (no Nesterov)."""
    lr_min_ratio: float = 1e-3
    """The cosine schedule ends at lr * lr_min_ratio (eta_min = 1e-5 for lr 0.01)."""
    precision: str = "fp32"
    """'fp32', or 'bf16': bf16 autocast and channels_last for the backbone; losses, W, mu and the prior stay
    in fp32 (§11.16)."""
    seed: int = 123
    """Training seed: model init, batch order, augmentation and mixup draws."""
    faithful: tuple[str, ...] = ()
    """Reference quirks to reproduce instead of fixing, by name (see FAITHFUL_QUIRKS); ('all',) = every one."""

    # ------------------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        # Canonicalise what has several spellings, so equal trials hash equally.
        faithful = self.faithful
        if isinstance(faithful, str):
            faithful = tuple(s for s in faithful.replace(" ", "").split(",") if s)
        faithful = tuple(faithful)
        if "all" in faithful:
            faithful = tuple(FAITHFUL_QUIRKS)
        object.__setattr__(self, "faithful", tuple(sorted(set(faithful))))
        if self.oracle_la in ("", "none", "None"):
            object.__setattr__(self, "oracle_la", None)
        for name in ("rho", "q", "lr", "weight_decay", "momentum", "lr_min_ratio", "prior_momentum",
                     "mixup_weight", "mixup_beta"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        self.validate()
        if self.method == "solar":
            for key, value in self.solar_resolved().items():
                object.__setattr__(self, key, value)

    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset]

    @property
    def head_class_size(self) -> int:
        return self.img_max if self.img_max is not None else FULL_CLASS_SIZE[self.dataset]

    def is_faithful(self, quirk: str) -> bool:
        assert quirk in FAITHFUL_QUIRKS, quirk
        return quirk in self.faithful

    def solar_resolved(self) -> dict[str, Any]:
        """SoLar fields with None replaced by the dataset's value (§7.5)."""
        base = dict(SOLAR_DEFAULTS[self.dataset], solar_lamd=3.0, solar_eta=0.9, solar_tau=0.99,
                    solar_warmup=50, solar_queue_batches=64)
        return {k: (getattr(self, k) if getattr(self, k) is not None else base[k]) for k in SOLAR_FIELDS}

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        def check_type(name: str, kinds: tuple[type, ...], optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) and bool not in kinds:
                raise bad(name, f"expected {' or '.join(k.__name__ for k in kinds)}, got a bool")
            if not isinstance(value, kinds):
                raise bad(name, f"expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")

        for f in dataclasses.fields(self):
            if f.name in ("nu", "records", "mixup"):
                check_type(f.name, (bool,))
            elif f.name in ("dataset", "method", "arch", "precision"):
                check_type(f.name, (str,))
            elif f.name in ("img_max", "test_per_class", "est_epochs", "solar_warmup", "solar_queue_batches"):
                check_type(f.name, (int,), optional=True)
            elif f.name in ("data_seed", "upd_start", "epochs", "batch_size", "seed"):
                check_type(f.name, (int,))
            elif f.name in ("oracle_la",):
                check_type(f.name, (str,), optional=True)
            elif f.name == "faithful":
                pass
            elif f.name.startswith("solar_"):
                check_type(f.name, (int, float), optional=True)
            else:
                check_type(f.name, (int, float))
                if not math.isfinite(getattr(self, f.name)):
                    raise bad(f.name, "must be finite")

        if self.dataset not in DATASETS:
            raise bad("dataset", f"choose one of {sorted(DATASETS)}")
        if self.nu and self.dataset != "cifar100":
            raise bad("nu", "the non-uniform (NU) candidates need CIFAR-100's superclasses; use dataset=cifar100")
        if not self.rho >= 1.0:
            raise bad("rho", "the imbalance ratio n_max/n_min must be >= 1 (50 or 100 in the paper)")
        if not 0.0 <= self.q <= 1.0:
            raise bad("q", "a probability in [0, 1] is needed")
        if self.nu and 8 * self.q > 1.0:
            raise bad("q", "with nu=True the within-superclass rate 8q must stay <= 1, so q <= 0.125")
        full = FULL_CLASS_SIZE[self.dataset]
        if self.img_max is not None and not 1 <= self.img_max <= full:
            raise bad("img_max", f"must lie in [1, {full}] for {self.dataset}")
        test_full = 1000 if self.dataset == "cifar10" else 100
        if self.test_per_class is not None and not 1 <= self.test_per_class <= test_full:
            raise bad("test_per_class", f"must lie in [1, {test_full}] for {self.dataset}")
        if self.data_seed < 0:
            raise bad("data_seed", "must be >= 0")
        if self.seed < 0:
            raise bad("seed", "must be >= 0")

        if self.method not in METHODS:
            raise bad("method", f"choose one of {list(METHODS)}")
        if self.oracle_la is not None and self.oracle_la not in ORACLE_LA_MODES:
            raise bad("oracle_la", f"choose one of {list(ORACLE_LA_MODES)} or leave it unset")
        if self.records and self.oracle_la is not None:
            raise ConfigError(
                f"records=True with oracle_la={self.oracle_la!r}: RECORDS estimates the prior that Oracle-LA "
                "takes from the true labels; choose one")
        if self.method == "solar":
            for name in ("records", "mixup"):
                if getattr(self, name):
                    raise bad(name, "is a CORR-family switch; SoLar has its own (always-on) mixup and prior")
            if self.oracle_la is not None:
                raise bad("oracle_la", "is a CORR-family switch; it does not apply to method='solar'")
        else:
            for name in SOLAR_FIELDS:
                if getattr(self, name) is not None:
                    raise bad(name, "applies to method='solar' only")
        if not 0.0 <= self.prior_momentum < 1.0:
            raise bad("prior_momentum", "the EMA momentum must lie in [0, 1)")
        if self.mixup_weight < 0:
            raise bad("mixup_weight", "must be >= 0")
        if self.mixup_beta <= 0:
            raise bad("mixup_beta", "the Beta parameter must be > 0")
        if self.upd_start < 0:
            raise bad("upd_start", "must be >= 0")

        if self.arch not in ARCHS:
            raise bad("arch", f"choose one of {list(ARCHS)}")
        if self.epochs < 1:
            raise bad("epochs", "must be >= 1")
        if self.batch_size < 2:
            raise bad("batch_size", "must be >= 2 (BatchNorm needs more than one sample)")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if not 0.0 <= self.momentum < 1.0:
            raise bad("momentum", "must lie in [0, 1)")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise bad("lr_min_ratio", "must lie in [0, 1]")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"choose one of {list(PRECISIONS)}")
        unknown = [q for q in self.faithful if q not in FAITHFUL_QUIRKS]
        if unknown:
            raise ConfigError(f"faithful={list(self.faithful)!r}: unknown quirk(s) {unknown}; "
                              f"known: {sorted(FAITHFUL_QUIRKS)} or 'all'")
        if self.method == "solar":
            s = self.solar_resolved()
            if s["est_epochs"] < 0:
                raise bad("est_epochs", "must be >= 0")
            for name in ("solar_rho_start", "solar_rho_end", "solar_gamma1", "solar_gamma2", "solar_eta",
                         "solar_tau"):
                if not 0.0 <= s[name] <= 1.0:
                    raise ConfigError(f"{name}={s[name]!r}: must lie in [0, 1]")
            if s["solar_lamd"] <= 0:
                raise ConfigError(f"solar_lamd={s['solar_lamd']!r}: must be > 0")
            if s["solar_warmup"] < 1 or s["solar_queue_batches"] < 0:
                raise ConfigError("solar_warmup must be >= 1 and solar_queue_batches >= 0")

    # --- identity and (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["faithful"] = list(self.faithful)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known: {sorted(names)}")
        d = dict(d)
        if "faithful" in d and d["faithful"] is not None and not isinstance(d["faithful"], str):
            d["faithful"] = tuple(d["faithful"])
        return cls(**d)

    @functools.cached_property
    def config_hash(self) -> str:
        """Stable identity of the trial: sha256 of the canonical JSON of every field, 12 hex digits."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """Short human name: 'cifar10 rho=100 q=0.3 CORR+RECORDS+Mixup seed=123'."""
        name = {"corr": "CORR", "solar": "SoLar"}[self.method]
        if self.records:
            name += "+RECORDS"
        if self.oracle_la:
            name += f"+OLA({self.oracle_la})"
        if self.mixup:
            name += "+Mixup"
        ds = self.dataset + ("-NU" if self.nu else "")
        return f"{ds} rho={self.rho:g} q={self.q:g} {name} seed={self.seed}"


def _default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class RunOptions:
    """Where and how a trial runs; none of it changes the numbers, so none of it is in the config hash."""

    data_root: str = "data"
    """Folder with cifar-10-batches-py/ or cifar-100-python/ (torchvision), or cifar10|cifar100/{train,test}
    .parquet; or the word 'synthetic' for the generated smoke-test image set."""
    out_dir: str | None = None
    """Run folder: config.json, checkpoint.pt, epochs.parquet. None = keep nothing on disk."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    num_workers: int = field(default_factory=_default_workers)
    """DataLoader worker processes for the augmentation pipeline (0 = in the training process)."""
    checkpoint_every: int = 1
    """Write the full checkpoint every this many epochs (and always after the last one)."""
    download: bool = False
    """Download torchvision's CIFAR pickles into data_root when they are missing (needs network, or a mirror in
    $RECORDS_DATA_MIRROR)."""
    verbose: bool = True
    """Print one line per epoch."""
    progress_bar: bool = False
    """A tqdm bar over each epoch's steps on stderr, erased when the epoch ends (the CLI turns it on when stderr is a
    terminal, so logs keep one line per epoch)."""


@functools.cache
def field_docs(cls: type = TrialConfig) -> dict[str, str]:
    """The attribute docstrings of a dataclass, for --help texts and the README."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[attr-defined]
    return docs
