"""What a PLL method is to the rest of the package: a `MethodSpec` (its declaration, read by the config, the CLI,
the grids, the schemas and the analysis) and a `PLLMethod` (its state and hooks, driven by the training loop).

See docs/methods.md for the methods themselves and for how to add one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

# The cross-method switches of a trial config; a method names the ones it implements (`MethodSpec.switches`).
SWITCHES = ("records", "mixup", "oracle_la")


def two_view_cost(cfg, n_train: int, per_epoch: int, n_test: int) -> tuple[float, float]:
    """Image-passes of a method that forwards and backpropagates the weak and the strong view of every sample each
    epoch, and runs the test set once per epoch: (fwd+bwd, forward-only)."""
    return per_epoch * 2 * cfg.epochs, n_test * cfg.epochs


@dataclass(frozen=True)
class MethodSpec:
    """A method's declaration: one `register(MethodSpec(...))` line at the end of its module."""

    name: str
    """The value of `--method` / `TrialConfig.method`."""
    display: str
    """Its name in tables and run labels ('PRODEN')."""
    impl: type
    """The `PLLMethod` subclass that trains it."""
    doc: str = ""
    """One line for --help."""
    params: type | None = None
    """A frozen dataclass of its own hyper-parameters, nested in `TrialConfig.params` (part of the hash)."""
    param_prefix: str = ""
    """Flat (CLI, grid, Parquet column) name of a parameter = prefix + field name, unless `flat_names` says else."""
    flat_names: Mapping[str, str] = field(default_factory=dict)
    switches: frozenset[str] = frozenset()
    """Which of SWITCHES apply; setting any other one is refused, so one training never gets two hashes."""
    oracle_la_modes: tuple[str, ...] = ()
    """The `oracle_la` values it implements (when 'oracle_la' is a switch)."""
    own_mixup: bool = False
    """Always trains with its own mixup (the paper then names it 'X (w/ Mixup)')."""
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Grid variants: name -> switch settings (the unnamed switches are off)."""
    epoch_columns: Mapping[str, str] = field(default_factory=dict)
    """Extra per-epoch scalar columns it logs (name -> meaning); the epoch schema extends itself with them."""
    validate: Callable[[Any], None] | None = None
    """Its own checks of a config (raise trainables.config.ConfigError); switches and types are checked for it."""
    resolve: Callable[[Any, Any], Any] | None = None
    """(cfg, params) -> params with config-dependent defaults (e.g. per dataset) filled in, before hashing."""
    cost: Callable[[Any, int, int, int], tuple[float, float]] = two_view_cost
    """(cfg, n_train, per-epoch samples, n_test) -> (fwd+bwd, forward-only) image-passes, for --dry-run."""
    extra_epochs: Callable[[Any], int] = lambda cfg: 0
    """Epochs it runs beyond cfg.epochs (SoLar's estimation stage): every one of them logs a row."""

    def flat_name(self, param: str) -> str:
        return self.flat_names.get(param, self.param_prefix + param)

    def param_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.params)) if self.params is not None else []

    def flatten(self, params: Any) -> dict[str, Any]:
        """Nested parameters -> {flat name: value}."""
        return {self.flat_name(f.name): getattr(params, f.name) for f in self.param_fields()}

    def unflatten(self, flat: Mapping[str, Any]) -> dict[str, Any]:
        """{flat name: value} (its own keys only) -> {field name: value}."""
        back = {self.flat_name(f.name): f.name for f in self.param_fields()}
        return {back[k]: v for k, v in flat.items() if k in back}

    def flat_keys(self) -> list[str]:
        return [self.flat_name(f.name) for f in self.param_fields()]


REGISTRY: dict[str, MethodSpec] = {}

# Oracle-LA's modes as a name suffix; the paper's single Oracle-LA row takes the plain name (mode `paper_oracle_mode`).
ORACLE_SUFFIX = {"disamb": "disamb", "loss": "loss", "posthoc": "post-hoc"}


def display_name(method: str, records: bool = False, mixup: bool = False, oracle_la: str | None = None,
                 paper_oracle_mode: str = "disamb") -> str:
    """The one spelling of a method's name, the paper's: ('corr', True, True, None) -> 'CORR + RECORDS (w/ Mixup)';
    'CORR + Mixup' without a prior; 'SoLar (w/ Mixup)' for a method with its own mixup; unknown methods keep their
    name."""
    spec = REGISTRY.get(method)
    parts = [spec.display if spec is not None else method]
    if records:
        parts.append("RECORDS")
    if oracle_la is not None:
        parts.append("Oracle-LA" if oracle_la == paper_oracle_mode
                     else f"Oracle-LA ({ORACLE_SUFFIX.get(oracle_la, oracle_la)})")
    name = " + ".join(parts)
    if (spec is not None and spec.own_mixup) or (mixup and (records or oracle_la is not None)):
        return name + " (w/ Mixup)"
    return name + " + Mixup" if mixup else name


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; its name, its variant names and its flat parameter names must not clash with others'."""
    if spec.name in REGISTRY and REGISTRY[spec.name].impl is not spec.impl:
        raise ValueError(f"method {spec.name!r} is registered twice")
    unknown = set(spec.switches) - set(SWITCHES)
    if unknown:
        raise ValueError(f"method {spec.name!r}: unknown switches {sorted(unknown)}; known: {list(SWITCHES)}")
    for other in REGISTRY.values():
        if other.name == spec.name:
            continue
        clash = (set(other.variants) & set(spec.variants)) | (set(other.flat_keys()) & set(spec.flat_keys()))
        if clash:
            raise ValueError(f"method {spec.name!r}: {sorted(clash)} already belong to method {other.name!r}")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method (for tests that register a throw-away one)."""
    REGISTRY.pop(name, None)


class PLLMethod:
    """State and hooks of one method in one training run. The loop calls, per stage:
    `extra_parameters(model)` (joins the optimiser) -> `enter_stage` -> per step `train_step`, backward,
    `before_optimizer_step`, SGD step, `after_step` -> per epoch `end_epoch`, the test pass (`adjust_test_logits`),
    and `state_dict` for checkpoints.
    Only `train_step` and the state are required; the rest have neutral defaults."""

    confidences: torch.Tensor  # W [N, K]: the current label confidences of the training samples
    records_prior = None  # a RecordsPrior (methods/records.py) for a method that tracks RECORDS' mu

    def __init__(self, cfg, candidates: torch.Tensor, class_counts: list[int], device: torch.device, comm=None):
        raise NotImplementedError

    def stages(self) -> list[tuple[str, int]]:
        """(stage name, epochs) in order; each stage starts from a fresh model and optimiser."""
        return [("train", self.cfg.epochs)]

    def enter_stage(self, stage: str, fresh: bool) -> None:
        """Called when a stage starts: fresh=True at its first epoch, False when a checkpoint resumes it mid-way."""

    def extra_parameters(self, model) -> Iterable[torch.nn.Parameter]:
        """Called once per stage after the model is built and before the optimiser: a method that trains modules
        of its own (a projection head, ...) builds them here and returns their parameters for the optimiser;
        modules that take no gradient (a momentum encoder) are built here too and kept in `state_dict`."""
        return ()

    def train_step(self, model, x_weak: torch.Tensor, x_strong: torch.Tensor, idx: torch.Tensor, epoch: int,
                   step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One mini-batch, forward included: (loss to backpropagate, {log name: 0-d tensor}). Log names other
        than 'loss' must be epoch columns of the schema (the base ones or the method's `epoch_columns`)."""
        raise NotImplementedError

    def before_optimizer_step(self) -> None:
        """After backward, before the optimiser step: a method whose `extra_parameters` live outside the (DDP)
        model averages their gradients over ranks here, as DDP does for the model's."""

    def after_step(self, model, epoch: int, step: int) -> None:
        """After the optimiser step (e.g. a momentum encoder's EMA)."""

    def end_epoch(self, stage: str, epoch: int, predict_train) -> dict[str, float]:
        """After each epoch's steps, before the test pass. `predict_train()` returns (indices, logits): eval-mode,
        test-transform logits of this rank's share of the training set (a forward-only pass; the shares of all
        ranks cover the set once). Extra scalar logs are returned."""
        return {}

    @property
    def mu(self) -> torch.Tensor | None:
        """RECORDS' feature mean, where the method tracks it."""
        return None if self.records_prior is None else self.records_prior.mu

    def prior_estimate(self, classifier: torch.nn.Linear) -> torch.Tensor | None:
        """The method's current class-prior estimate (logged as pi_hat each epoch), or None."""
        return None if self.records_prior is None else self.records_prior.estimate(classifier)

    def adjust_test_logits(self, logits: torch.Tensor, classifier: torch.nn.Linear) -> torch.Tensor:
        return logits

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError
