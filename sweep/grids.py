"""Named grids (presets), overrides, the expansion into validated cells, and the cost estimate.

A grid is a list of *blocks*; each block maps an axis to its values and contributes the cartesian product of its
axes. `variant` is a pseudo-axis naming a method of the paper's table (see VARIANTS); `base` fixes fields for every
cell; seeds multiply everything. Every cell becomes a validated `TrialConfig` before Ray starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.config import TEST_CLASS_SIZE, ConfigError, TrialConfig, flat_fields
from trainables.data.longtail import class_counts
from trainables.methods import REGISTRY, SWITCHES


def variants() -> dict[str, dict[str, Any]]:
    """Grid variant name -> the method and its switches (every switch set: the unnamed ones off), from the methods'
    declarations."""
    off = {"records": False, "mixup": False, "oracle_la": None}
    assert set(off) == set(SWITCHES)
    return {name: {"method": spec.name, **off, **switches}
            for spec in REGISTRY.values() for name, switches in spec.variants.items()}


def axes() -> tuple[str, ...]:
    """Grid keys: 'variant' and every flat config key (the methods' parameters included)."""
    return ("variant", *(name for name, _ in flat_fields()))


VARIANTS = variants()  # as of import; the functions see methods registered later


class GridError(ValueError):
    """A grid, preset, override or grid file is invalid; the message names the key and value."""


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    blocks: tuple[dict[str, tuple], ...]
    base: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (123,)
    overrides: tuple[tuple[str, tuple], ...] = ()  # applied in order after expansion (see apply_override)

    def with_seeds(self, seeds: tuple[int, ...]) -> Grid:
        return dataclasses.replace(self, seeds=tuple(seeds))

    def with_override(self, key: str, values: tuple) -> Grid:
        _check_key(key)
        return dataclasses.replace(self, overrides=self.overrides + ((key, tuple(values)),))

    def cells(self) -> list[TrialConfig]:
        return expand(self)


_PAPER_CIFAR10 = {"dataset": ("cifar10",), "rho": (50, 100), "q": (0.3, 0.5, 0.7)}
_PAPER_CIFAR100 = {"dataset": ("cifar100",), "nu": (False,), "rho": (50, 100), "q": (0.03, 0.05, 0.07)}
_PAPER_CIFAR100_NU = {**_PAPER_CIFAR100, "nu": (True,)}
PAPER_VARIANTS = ("corr", "corr+mixup", "records", "records+mixup", "oracle-la", "solar")

PRESETS: dict[str, Grid] = {
    "paper": Grid(
        name="paper",
        description="The paper's two tables and their NU variant at the paper's settings (800 epochs, ResNet-18): "
        "CIFAR-10-LT (rho 50/100 x q 0.3/0.5/0.7), CIFAR-100-LT and CIFAR-100-LT-NU (rho 50/100 x q 0.03/0.05/0.07), "
        "each with CORR, CORR+Mixup, CORR+RECORDS, CORR+RECORDS+Mixup, CORR+Oracle-LA and SoLar (its two stages: "
        "100+800 epochs on CIFAR-10, 20+800 on CIFAR-100).",
        blocks=tuple({**b, "variant": PAPER_VARIANTS} for b in (_PAPER_CIFAR10, _PAPER_CIFAR100, _PAPER_CIFAR100_NU)),
        base=dict(arch="resnet18", epochs=800),
    ),
    "plugins": Grid(
        name="plugins",
        description="RECORDS as a plug-in: {CORR, PRODEN, PiCO} x {plain, +RECORDS} on the paper's three tables at "
        "the paper's settings (800 epochs, ResNet-18); the report's records-gain table shows what RECORDS adds to "
        "each method. PRODEN forwards one view per sample, so its cells cost about half of CORR's; PiCO backpropagates "
        "one view and forwards the other through its key encoder, about two thirds.",
        blocks=tuple({**b, "variant": ("corr", "records", "proden", "proden+records", "pico", "pico+records")}
                     for b in (_PAPER_CIFAR10, _PAPER_CIFAR100, _PAPER_CIFAR100_NU)),
        base=dict(arch="resnet18", epochs=800),
    ),
    "quick": Grid(
        name="quick",
        description="A CPU-sized slice: CIFAR-10-LT rho=100 q=0.3 with a third of each class (img_max 1666), "
        "CORR vs CORR+RECORDS, with and without Mixup, small CNN, batch 64, 6 epochs; about 10 minutes on 2 cores.",
        blocks=({"dataset": ("cifar10",), "rho": (100,), "q": (0.3,),
                 "variant": ("corr", "records", "corr+mixup", "records+mixup")},),
        base=dict(arch="small-cnn", epochs=6, batch_size=64, img_max=1666, test_per_class=500),
    ),
    "smoke": Grid(
        name="smoke",
        description="The smallest grid that exercises every code path (CIFAR-10 and CIFAR-100-NU, every variant's "
        "branch, SoLar's two stages) with a tiny LT set: for tests and CI.",
        blocks=(
            {"dataset": ("cifar10",), "rho": (10,), "q": (0.3,),
             "variant": ("corr", "records+mixup", "oracle-la-loss", "oracle-la-posthoc", "solar")},
            {"dataset": ("cifar100",), "nu": (True,), "rho": (10,), "q": (0.05,), "img_max": (12,),
             "variant": ("records", "oracle-la")},
        ),
        base=dict(arch="small-cnn", epochs=2, img_max=60, test_per_class=10, batch_size=32, est_epochs=1,
                  solar_queue_batches=2),
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Parsing values and overrides


def parse_value(text: str) -> Any:
    """'true'/'false' -> bool, 'none'/'null' -> None, ints, floats, else the string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null", ""):
        return None
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def parse_set(expr: str) -> tuple[str, tuple]:
    """'q=0.3,0.5' -> ('q', (0.3, 0.5))."""
    if "=" not in expr:
        raise GridError(f"--set {expr!r}: expected KEY=VALUE[,VALUE...]")
    key, _, values = expr.partition("=")
    key = key.strip().replace("-", "_")
    _check_key(key)
    if key == "faithful":  # each comma item is one setting; '+' joins quirks inside it ('all', 'none', 'a+b')
        return key, tuple(_canonical_faithful(v) for v in values.split(","))
    return key, tuple(parse_value(v) for v in values.split(","))


def _canonical_faithful(value) -> tuple[str, ...]:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return ()
    items = value.split("+") if isinstance(value, str) else list(value)
    return TrialConfig(faithful=tuple(items)).faithful


def _check_key(key: str) -> None:
    if key not in axes():
        raise GridError(f"unknown grid key {key!r}; valid keys: {', '.join(axes())}")


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise GridError(f"--seeds {text!r}: expected a comma-separated list of integers, e.g. 123,124,125") from None
    if not seeds or any(s < 0 for s in seeds):
        raise GridError(f"--seeds {text!r}: expected one or more non-negative integers")
    return seeds


# ---------------------------------------------------------------------------------------------------------------
# Expansion


def _variant_of(cell: dict) -> str | None:
    for name, fields in variants().items():
        if all(cell.get(k, getattr(TrialConfig, k)) == v for k, v in fields.items()):
            return name
    return None


def _raw_cells(grid: Grid) -> list[dict]:
    cells = []
    for block in grid.blocks:
        for key in block:
            _check_key(key)
        keys = list(block)
        for combo in itertools.product(*(block[k] for k in keys)):
            cell = dict(grid.base)
            cell.update(zip(keys, combo))
            for seed in grid.seeds:
                cells.append({**cell, "seed": seed})
    return cells


def _resolve_variant(cell: dict) -> dict:
    cell = dict(cell)
    name = cell.pop("variant", None)
    if name is not None:
        known = variants()
        if name not in known:
            raise GridError(f"variant={name!r}: choose one of {', '.join(known)}")
        cell.update(known[name])
    return cell


def apply_override(cells: list[dict], key: str, values: tuple) -> list[dict]:
    """Narrow or override one key.

    If every given value already occurs in the grid, keep only the cells with those values (narrowing: `--set
    q=0.3` on the paper grid keeps CIFAR-10's q=0.3 cells). If none occurs, set the key to each value in every cell
    (overriding: `--set epochs=5`). A mix of both is ambiguous and refused.
    """
    def value_of(cell: dict) -> Any:
        if key == "variant":
            return _variant_of(cell)
        v = cell.get(key, getattr(TrialConfig, key, None))
        return tuple(v) if isinstance(v, list) else v

    present = {value_of(c) for c in cells}
    if key == "faithful":
        wanted = [_canonical_faithful(v) for v in values]
    else:
        wanted = [tuple(v) if isinstance(v, list) else v for v in values]
    hits = [v for v in wanted if v in present]
    if len(hits) == len(wanted):
        kept = [c for c in cells if value_of(c) in wanted]
        return kept
    if hits:
        missing = [v for v in wanted if v not in present]
        raise GridError(f"--set {key}={','.join(map(str, values))}: {hits} narrow the grid but {missing} are not in "
                        f"it (it has {sorted(map(str, present))}); narrow and extend in two separate runs")
    out = []
    for cell in cells:
        for v in wanted:
            new = dict(cell)
            if key == "variant":
                known = variants()
                if v not in known:
                    raise GridError(f"variant={v!r}: choose one of {', '.join(known)}")
                new.update(known[v])
            else:
                new[key] = v
            out.append(new)
    return out


def expand(grid: Grid) -> list[TrialConfig]:
    """The grid's cells as validated configs, duplicates removed, in grid order."""
    cells = [_resolve_variant(c) for c in _raw_cells(grid)]
    for key, values in grid.overrides:
        cells = apply_override(cells, key, values)
    if not cells:
        raise GridError(f"grid {grid.name!r} has no cells left after the overrides "
                        f"{[f'{k}={v}' for k, v in grid.overrides]}")
    configs, seen = [], set()
    for cell in cells:
        try:  # a method's own knobs (e.g. SoLar's est_epochs in a base) apply to that method's cells only
            cfg = TrialConfig.from_dict(cell, other_methods="ignore", stored=False)  # user input: defaults
        except ConfigError as err:
            raise GridError(f"grid {grid.name!r}: invalid cell {json.dumps(cell, default=str)}: {err}") from None
        except TypeError as err:
            raise GridError(f"grid {grid.name!r}: invalid cell {json.dumps(cell, default=str)}: {err}") from None
        if cfg.config_hash not in seen:
            seen.add(cfg.config_hash)
            configs.append(cfg)
    return configs



# ---------------------------------------------------------------------------------------------------------------
# Grid files


def load_grid_file(path: str | Path) -> Grid:
    """A YAML or TOML grid: `name`, `description`, `blocks` (list of axis -> values), `base`, `seeds`; or `extends`
    (a preset name) plus `set` (key -> values, applied like --set)."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            doc = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            raise GridError(f"grid file {path}: expected a .yaml, .yml or .toml file")
    except (tomllib.TOMLDecodeError, ValueError) as err:
        if isinstance(err, GridError):
            raise
        raise GridError(f"grid file {path} does not parse: {err}") from None
    except Exception as err:  # yaml.YAMLError and friends
        raise GridError(f"grid file {path} does not parse: {err}") from None
    if not isinstance(doc, dict):
        raise GridError(f"grid file {path}: expected a mapping at the top level")
    known = {"name", "description", "blocks", "base", "seeds", "extends", "set"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise GridError(f"grid file {path}: unknown key(s) {unknown}; known: {sorted(known)}")

    def as_tuple(v):
        return tuple(v) if isinstance(v, (list, tuple)) else (v,)

    if "extends" in doc:
        if doc["extends"] not in PRESETS:
            raise GridError(f"grid file {path}: extends={doc['extends']!r} is not a preset ({', '.join(PRESETS)})")
        grid = PRESETS[doc["extends"]]
        grid = dataclasses.replace(grid, name=doc.get("name", path.stem),
                                   description=doc.get("description", grid.description))
    else:
        if "blocks" not in doc:
            raise GridError(f"grid file {path}: needs 'blocks' (a list of axis -> values) or 'extends' (a preset)")
        blocks = doc["blocks"]
        if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
            raise GridError(f"grid file {path}: 'blocks' must be a list of mappings")
        for b in blocks:
            for k in b:
                _check_key(k)
        grid = Grid(name=doc.get("name", path.stem), description=doc.get("description", f"grid file {path}"),
                    blocks=tuple({k: as_tuple(v) for k, v in b.items()} for b in blocks),
                    base=dict(doc.get("base") or {}))
        for k in grid.base:
            _check_key(k)
    if "seeds" in doc:
        grid = grid.with_seeds(tuple(int(s) for s in as_tuple(doc["seeds"])))
    for key, values in (doc.get("set") or {}).items():
        values = as_tuple(values)
        if key == "faithful" and values and all(isinstance(v, str) for v in values):
            values = (tuple(values),)  # a list of quirks is one setting
        grid = grid.with_override(key, values)
    return grid


# ---------------------------------------------------------------------------------------------------------------
# Cost estimate (METHOD.md §12)

ASSUMED_THROUGHPUTS = {"8k img/s (fp32, older GPU)": 8_000, "15k img/s (A100 AMP)": 15_000,
                       "25k img/s (H100 bf16)": 25_000}


def cell_cost(cfg: TrialConfig) -> dict[str, float]:
    """Image-passes of one cell: fwd+bwd training passes and forward-only passes (test, SoLar's estimation)."""
    n = sum(class_counts(cfg.head_class_size, cfg.num_classes, cfg.rho))
    per_epoch = (n // cfg.batch_size) * cfg.batch_size
    test = cfg.num_classes * (cfg.test_per_class or TEST_CLASS_SIZE[cfg.dataset])
    fwd_bwd, fwd_only = cfg.spec.cost(cfg, n, per_epoch, test)
    return {"n_train": n, "fwd_bwd": fwd_bwd, "fwd_only": fwd_only}


def gpu_hours(fwd_bwd: float, fwd_only: float, throughput: float) -> float:
    """Hours at a sustained fwd+bwd throughput; a forward-only pass counts a third (§12.3)."""
    return (fwd_bwd + fwd_only / 3.0) / throughput / 3600.0


def describe_cells(cells: list[TrialConfig]) -> str:
    """The --dry-run listing: one line per cell, the count, and the cost estimate."""
    lines = []
    total_fb = total_fo = 0.0
    for i, cfg in enumerate(cells):
        cost = cell_cost(cfg)
        total_fb += cost["fwd_bwd"]
        total_fo += cost["fwd_only"]
        lines.append(f"{i + 1:>4}  {cfg.config_hash}  {cfg.describe():<58} arch={cfg.arch} epochs={cfg.epochs} "
                     f"N={cost['n_train']}  {cost['fwd_bwd'] / 1e6:8.2f}M fwd+bwd")
    lines.append(f"{len(cells)} cells")
    lines.append(f"image-passes: {total_fb / 1e6:,.2f} M fwd+bwd, {total_fo / 1e6:,.2f} M forward-only")
    archs = sorted({c.arch for c in cells})
    note = "" if archs == ["resnet18"] else " (throughputs are ResNet-18's; smaller models run faster)"
    for label, rate in ASSUMED_THROUGHPUTS.items():
        lines.append(f"GPU-hours at {label}: {gpu_hours(total_fb, total_fo, rate):.3g}{note}")
    return "\n".join(lines)

