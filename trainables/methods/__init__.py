"""The method registry: every PLL method is one module that ends with `register(MethodSpec(...))` (see base.py and
docs/methods.md). The built-in methods are imported here; more can be loaded without touching the package by naming
importable modules in the environment variable RECORDS_SWEEP_METHODS (comma-separated): Ray workers and
subprocesses inherit it, so a sweep runs such a method end to end.
"""

from __future__ import annotations

import importlib
import os

from . import corr, pico, proden, solar  # noqa: F401,E402  (each registers itself)
from .base import REGISTRY, SWITCHES, MethodSpec, PLLMethod, register, unregister

PLUGIN_ENV = "RECORDS_SWEEP_METHODS"


def load_plugins() -> None:
    for name in filter(None, (s.strip() for s in os.environ.get(PLUGIN_ENV, "").split(","))):
        importlib.import_module(name)


load_plugins()


def get_spec(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise KeyError(name)
    return REGISTRY[name]


def create_method(cfg, candidates, class_counts, device, comm=None) -> PLLMethod:
    """The method object for `cfg.method`, initialised from the training set's candidate matrix."""
    return get_spec(cfg.method).impl(cfg, candidates, class_counts, device, comm)


__all__ = ["REGISTRY", "SWITCHES", "MethodSpec", "PLLMethod", "create_method", "get_spec", "load_plugins",
           "register", "unregister"]
