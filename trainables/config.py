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
# Images per class in the test split.
TEST_CLASS_SIZE = {"cifar10": 1000, "cifar100": 100}
ARCHS = ("resnet18", "small-cnn")
ORACLE_LA_MODES = ("disamb", "loss", "posthoc")
PRECISIONS = ("fp32", "bf16")
AUGMENTS = ("pil", "tensor")

# Reference behaviours we fix by default; each can be switched back on by name (METHOD.md §11).
FAITHFUL_QUIRKS = {
    "nu_shuffle": "key the CIFAR-100-LT-NU class-count shuffle on the training seed, as the reference does "
    "(§1.1), instead of on data_seed",
    "test_norm": "normalise test images with CIFAR-100 statistics for both datasets (reference bug, §1.3)",
    "cutout": "Cutout centre uniform on (1, 32] and an end-inclusive rectangle, as the reference (§1.4)",
    "disamb_arith": "the reference's probability-space arithmetic: disambiguate with eps instead of in log space "
    "(§11.13; can change which CORR candidates underflow and die), CORR's loss on softmax(z) instead of "
    "exp(log_softmax(z)), PRODEN's loss and update with no eps",
    "batch_order": "batch order keyed on seed 0 for every training seed, like the reference's "
    "DistributedSampler (§1.5), instead of on the training seed",
    "mixup_epoch0": "forward the mixed views in epoch 0 although their loss is off (§5.2); they still "
    "enter the BatchNorm statistics",
    "sinkhorn": "SoLar's Sinkhorn in probability space for always 50 iterations, as the reference (§7.3, "
    "§11.11), instead of in log space with a stop test",
    "pico_queue_init": "PiCO's initial key queue normalised per column (rows of norm ~0.125), as the reference "
    "(PLUGINS.md §P6-9), instead of per row; only the MoCo warm-up sees it",
    "pico_phi": "PiCO's confidence-EMA schedule one epoch late, as the reference (§P6-10): epoch e uses "
    "0.95 + (e-1)/E (0.8 - 0.95), 0.99 in epoch 0, never reaching 0.8",
}

# The flat fields of a config as they were when the config hash was first defined (hash version 1, before methods
# were plug-ins; SoLar's parameters were then flat fields of every config, None outside SoLar). `config_hash`
# always hashes these keys, and any other key only when it differs from its legacy value (LEGACY_VALUES), so every
# config that existed then keeps its hash (tests/data/config_hashes_v1.json) and a new field at its legacy value
# changes none.
HASH_V1_KEYS = (
    "dataset", "nu", "rho", "q", "img_max", "test_per_class", "data_seed", "method", "records", "mixup", "oracle_la",
    "prior_momentum", "mixup_weight", "mixup_beta", "upd_start", "est_epochs", "solar_rho_start", "solar_rho_end",
    "solar_gamma1", "solar_gamma2", "solar_lamd", "solar_eta", "solar_tau", "solar_warmup", "solar_queue_batches",
    "arch", "epochs", "batch_size", "lr", "weight_decay", "momentum", "lr_min_ratio", "precision", "seed", "faithful",
)


# What a key added after hash version 1 meant before it existed, where that is not its default today. Stored
# configs written earlier (config.json, checkpoints, sweep.json cells, runs.parquet) lack the key and are read
# with this value (`from_dict`, stored=True); user input that omits it (CLI, grids, --set: stored=False) gets the
# default. A key not listed here has its default as its legacy value.
LEGACY_VALUES: dict[str, Any] = {
    "augment": "pil",  # every run before the field made its views with PIL; the default is now 'tensor'
}


def legacy_values() -> dict[str, Any]:
    """The value every flat key had before it existed: its default, or its entry in LEGACY_VALUES."""
    return {**flat_defaults(), **LEGACY_VALUES}


def _methods():
    """The method registry (imported late: the method modules import this one)."""
    from . import methods

    return methods


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
    """PLL method, by registered name: 'corr' (the CORR family: CORR, +RECORDS, +Mixup, +Oracle-LA), 'solar'
    (SoLar), 'proden' (PRODEN, +RECORDS, +Oracle-LA), 'pico' (PiCO, +RECORDS); see docs/methods.md."""
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

    params: Any = None
    """The method's own hyper-parameters: an instance of its registered dataclass (None = its defaults; a dict
    of field -> value is accepted too). Flat names (CLI flags, grid keys, Parquet columns) come from the spec."""

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
    augment: str = "tensor"
    """How the training views are made from the same per-sample draws: 'tensor' (batched tensor ops on the
    trial's device, no loader workers; equal to 'pil' except for rare rotate/shear pixels, see
    tests/test_tensor_views.py) or 'pil' (PIL ops per image in DataLoader workers: the reference's pixels, and
    what every run before this field used; `faithful` does not switch it, pass augment='pil' as well)."""
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
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _as_float(f.type, getattr(self, f.name)))
        self.validate()

    @property
    def spec(self):
        """The registered `MethodSpec` of `method`."""
        return _methods().get_spec(self.method)

    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset]

    @property
    def head_class_size(self) -> int:
        return self.img_max if self.img_max is not None else FULL_CLASS_SIZE[self.dataset]

    @property
    def nu_shuffle_seed(self) -> int | None:
        """Seed of the NU class-count shuffle (None without NU): data_seed, or the training seed as the reference."""
        if not self.nu:
            return None
        return self.seed if self.is_faithful("nu_shuffle") else self.data_seed

    def check_batch_fits(self, n_train: int) -> None:
        """The last incomplete batch is dropped, so a batch larger than the training set would run no step."""
        if n_train < self.batch_size:
            raise ConfigError(f"batch_size={self.batch_size} exceeds the {n_train} training images of "
                              f"{self.describe()} (the last incomplete batch is dropped, so no step would run)")

    def is_faithful(self, quirk: str) -> bool:
        assert quirk in FAITHFUL_QUIRKS, quirk
        return quirk in self.faithful

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        for f in dataclasses.fields(self):
            check_field_type(f.name, f.type, getattr(self, f.name))

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
        test_full = TEST_CLASS_SIZE[self.dataset]
        if self.test_per_class is not None and not 1 <= self.test_per_class <= test_full:
            raise bad("test_per_class", f"must lie in [1, {test_full}] for {self.dataset}")
        if self.data_seed < 0:
            raise bad("data_seed", "must be >= 0")
        if self.seed < 0:
            raise bad("seed", "must be >= 0")

        self._validate_method()
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
        if self.augment not in AUGMENTS:
            raise bad("augment", f"choose one of {list(AUGMENTS)}")
        unknown = [q for q in self.faithful if q not in FAITHFUL_QUIRKS]
        if unknown:
            raise ConfigError(f"faithful={list(self.faithful)!r}: unknown quirk(s) {unknown}; "
                              f"known: {sorted(FAITHFUL_QUIRKS)} or 'all'")
        if self.spec.validate is not None:
            self.spec.validate(self)

    def _validate_method(self) -> None:
        """The method is registered, uses only the switches it implements, and its parameters are its own type
        (built from None or a dict, completed by the method's `resolve`, type-checked)."""
        registry = _methods().REGISTRY
        if self.method not in registry:
            raise ConfigError(f"method={self.method!r}: choose one of {list(registry)}")
        spec = registry[self.method]
        for name in _methods().SWITCHES:
            value = getattr(self, name)
            if name not in spec.switches and value not in (None, False):
                raise ConfigError(f"{name}={value!r}: does not apply to method={self.method!r} ({spec.display} "
                                  f"takes {', '.join(sorted(spec.switches)) or 'no switches'})")
        if self.oracle_la is not None and self.oracle_la not in spec.oracle_la_modes:
            raise ConfigError(f"oracle_la={self.oracle_la!r}: choose one of {list(spec.oracle_la_modes)} or leave it "
                              "unset")
        if self.records and self.oracle_la is not None:
            raise ConfigError(
                f"records=True with oracle_la={self.oracle_la!r}: RECORDS estimates the prior that Oracle-LA "
                "takes from the true labels; choose one")
        params = self.params
        if spec.params is None:
            if params not in (None, {}):
                raise ConfigError(f"params={params!r}: method={self.method!r} has no parameters")
            object.__setattr__(self, "params", None)
            return
        if params is None:
            params = {}
        if isinstance(params, dict):
            unknown = sorted(set(params) - {f.name for f in spec.param_fields()})
            if unknown:
                raise ConfigError(f"params {unknown}: not parameters of method={self.method!r}; known: "
                                  f"{[f.name for f in spec.param_fields()]}")
            params = spec.params(**{f.name: _as_float(f.type, params.get(f.name, f.default))
                                    for f in spec.param_fields()})
        elif not isinstance(params, spec.params):
            raise ConfigError(f"params={params!r}: method={self.method!r} takes {spec.params.__name__}")
        if spec.resolve is not None:
            params = spec.resolve(self, params)
        for f in spec.param_fields():
            check_field_type(spec.flat_name(f.name), f.type, getattr(params, f.name))
        object.__setattr__(self, "params", params)

    # --- identity and (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The flat form (config.json, the sweep manifest, runs.parquet): the fields, with the method's parameters
        under their flat names instead of `params`."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}
        d["faithful"] = list(self.faithful)
        if self.params is not None:
            d.update(self.spec.flatten(self.params))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], other_methods: str = "error", stored: bool = True) -> TrialConfig:
        """The inverse of `to_dict`. Flat parameters of another method are refused when set, unless
        other_methods='ignore' (a grid's base may set SoLar's knobs for the SoLar cells only); None values of
        them are dropped (configs written before methods were plug-ins list SoLar's fields as None).

        stored=True (a config read back from a file: config.json, a checkpoint, sweep.json, runs.parquet): a key
        it lacks takes its LEGACY_VALUES value, what it meant when the file was written. stored=False (user input:
        CLI flags, grid cells, --set): a key it lacks takes its default."""
        d = {**LEGACY_VALUES, **d} if stored else dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        method = d.get("method", cls.method)
        registry = _methods().REGISTRY
        owner = {key: spec for spec in registry.values() for key in spec.flat_keys()}
        own, unknown = {}, []
        for key in [k for k in d if k not in names]:
            value = d.pop(key)
            if key not in owner:
                unknown.append(key)
            elif owner[key].name == method:
                own[key] = value
            elif value is not None and other_methods != "ignore":
                raise ConfigError(f"{key}={value!r}: applies to method={owner[key].name!r} only")
        if unknown:
            known = sorted((names - {"params"}) | set(owner))
            raise ConfigError(f"unknown config field(s) {sorted(unknown)}; known: {known}")
        if own:
            if d.get("params") is not None:
                raise ConfigError(f"params and the flat parameters {sorted(own)} given together; use one form")
            spec = registry[method]
            d["params"] = {k: v for k, v in spec.unflatten(own).items() if v is not None}
        if "faithful" in d and d["faithful"] is not None and not isinstance(d["faithful"], str):
            d["faithful"] = tuple(d["faithful"])
        return cls(**d)

    def hash_dict(self) -> dict[str, Any]:
        """What `config_hash` hashes: the HASH_V1_KEYS of the flat form (None where absent) and every other key
        whose value differs from its legacy value (`legacy_values`)."""
        flat = self.to_dict()
        out = {k: flat.get(k) for k in HASH_V1_KEYS}
        legacy = legacy_values()
        for k, v in flat.items():
            if k not in out and (k not in legacy or v != legacy[k]):
                out[k] = v
        return out

    @functools.cached_property
    def config_hash(self) -> str:
        """Stable identity of the trial: sha256 of the canonical JSON of `hash_dict()`, 12 hex digits."""
        blob = json.dumps(self.hash_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with some fields changed (flat parameter names accepted); a new method starts from its own
        default parameters unless `params` is given."""
        flat = self.to_dict()
        if "method" in changes and changes["method"] != self.method:
            flat = {k: v for k, v in flat.items() if k in {f.name for f in dataclasses.fields(self)}}
        flat.update(changes)
        return TrialConfig.from_dict(flat)

    def describe(self) -> str:
        """Short human name: 'cifar10 rho=100 q=0.3 CORR + RECORDS (w/ Mixup) seed=123'."""
        name = _methods().base.display_name(self.method, self.records, self.mixup, self.oracle_la)
        ds = self.dataset + ("-NU" if self.nu else "")
        return f"{ds} rho={self.rho:g} q={self.q:g} {name} seed={self.seed}"


def type_name(annotation: Any) -> str:
    """A field's annotation as text ('float', 'int | None'), whether the module postponed annotations or not."""
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _as_float(annotation: Any, value: Any) -> Any:
    """An int given for a float field becomes a float, so 100 and 100.0 hash alike."""
    if "float" in type_name(annotation) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


_KINDS = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float)}


def check_field_type(name: str, annotation: Any, value: Any) -> None:
    """Check a value against its field's annotation ('int', 'float | None', ...); floats must be finite."""
    parts = [p.strip() for p in type_name(annotation).split("|")]
    if "None" in parts and value is None:
        return
    kinds = tuple(k for p in parts if p in _KINDS for k in _KINDS[p])
    if not kinds:  # tuple[str, ...] (canonicalised in __post_init__), Any (checked by its owner)
        return
    names = " or ".join(p for p in parts if p in _KINDS)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{name}={value!r}: expected {names}, got a bool")
    if not isinstance(value, kinds):
        raise ConfigError(f"{name}={value!r}: expected {names}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}={value!r}: must be finite")


def flat_defaults() -> dict[str, Any]:
    """Default of every flat config key: the fields' and every registered method's parameters'."""
    out = {f.name: f.default for f in dataclasses.fields(TrialConfig) if f.name != "params"}
    out["faithful"] = []
    for spec in _methods().REGISTRY.values():
        out.update({spec.flat_name(f.name): f.default for f in spec.param_fields()})
    return out


def flat_fields() -> list[tuple[str, str]]:
    """(flat name, annotation) of every flat config key: the fields, then each registered method's parameters."""
    out = [(f.name, type_name(f.type)) for f in dataclasses.fields(TrialConfig) if f.name != "params"]
    for spec in _methods().REGISTRY.values():
        out += [(spec.flat_name(f.name), type_name(f.type)) for f in spec.param_fields()]
    return out


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
