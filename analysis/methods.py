"""Paper names of methods and dataset tables, and the paper's row order.

A method is identified by four config columns: method, records, mixup, oracle_la. The README shows one
Oracle-LA row without naming its mode; `paper_oracle_mode` says which mode takes the plain name, the other
modes get a suffix. Combinations the paper does not have get a composed name, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from trainables.methods.base import ORACLE_SUFFIX, display_name  # noqa: F401  (ORACLE_SUFFIX: for the report)

DEFAULT_ORACLE_MODE = "disamb"

# The README's rows in its order, then the variants this project adds.
PAPER_METHODS = ("CORR", "CORR + Oracle-LA", "CORR + RECORDS", "SoLar (w/ Mixup)", "CORR + RECORDS (w/ Mixup)")
METHOD_ORDER = PAPER_METHODS + ("CORR + Mixup",)



def _missing(value: object) -> bool:
    # None, NaN and pd.NA all mean "unset" once a column went through Arrow and pandas.
    return value is None or (not isinstance(value, str | bool) and bool(pd.isna(value)))


def method_name(method: str, records: bool = False, mixup: bool = False, oracle_la: str | None = None,
                paper_oracle_mode: str = DEFAULT_ORACLE_MODE) -> str:
    """The paper's name of a method, e.g. ('corr', True, True, None) -> 'CORR + RECORDS (w/ Mixup)'."""
    records = bool(records) and not _missing(records)
    mixup = bool(mixup) and not _missing(mixup)
    oracle = None if _missing(oracle_la) or oracle_la in ("", "none", "None") else str(oracle_la)
    return display_name(str(method), records, mixup, oracle, paper_oracle_mode)


def add_method_names(runs: pd.DataFrame, paper_oracle_mode: str = DEFAULT_ORACLE_MODE) -> pd.Series:
    """The method name of every row of a runs (or runs-joined) frame."""
    def name(row: pd.Series) -> str:
        return method_name(row["method"], row.get("records", False), row.get("mixup", False),
                           row.get("oracle_la"), paper_oracle_mode)
    if runs.empty:
        return pd.Series([], index=runs.index, dtype=object)
    return runs.apply(name, axis=1).astype(object)


def method_sort_key(name: str) -> tuple[int, str]:
    """Paper rows first in the paper's order, then CORR + Mixup, then the rest alphabetically."""
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def order_methods(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=method_sort_key)


# --- dataset tables --------------------------------------------------------------------------------------------
_TABLES = {("cifar10", False): "CIFAR-10-LT", ("cifar100", False): "CIFAR-100-LT",
           ("cifar100", True): "CIFAR-100-LT-NU"}
TABLE_ORDER = ("CIFAR-10-LT", "CIFAR-100-LT", "CIFAR-100-LT-NU")


def dataset_table(dataset: str, nu: bool = False) -> str:
    """'cifar10' -> 'CIFAR-10-LT'; ('cifar100', nu=True) -> 'CIFAR-100-LT-NU'; unknown datasets keep their name."""
    nu = bool(nu) and not _missing(nu)
    return _TABLES.get((str(dataset), nu), f"{dataset}-LT" + ("-NU" if nu else ""))


def order_tables(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=lambda t: (TABLE_ORDER.index(t), "") if t in TABLE_ORDER else (len(TABLE_ORDER), t))
