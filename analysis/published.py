"""The RECORDS README's result tables (METHOD.md §10) as data.

Every entry is one run with training seed 123 on data seed 0, top-1 % on the balanced test set; the README
gives no error bars and does not say whether it reports the last or the best epoch (§9.3). There is no
published table for CIFAR-100-LT-NU.
"""

from __future__ import annotations

import pandas as pd

SOURCE = "RECORDS README (ICLR 2023), single runs with seed 123 (METHOD.md §10)"
PUBLISHED_SEED = 123

# (rho, q) column order of each README table; rows follow the paper's method order.
_COLUMNS = {
    "CIFAR-10-LT": [(50, 0.3), (50, 0.5), (50, 0.7), (100, 0.3), (100, 0.5), (100, 0.7)],
    "CIFAR-100-LT": [(50, 0.03), (50, 0.05), (50, 0.07), (100, 0.03), (100, 0.05), (100, 0.07)],
}
_ROWS = {
    "CIFAR-10-LT": {
        "CORR": [76.12, 56.45, 41.56, 66.38, 50.09, 38.11],
        "CORR + Oracle-LA": [36.27, 17.61, 12.77, 29.97, 15.80, 11.75],
        "CORR + RECORDS": [82.57, 80.28, 67.24, 77.66, 72.90, 57.46],
        "SoLar (w/ Mixup)": [83.88, 76.55, 54.61, 75.38, 70.63, 53.15],
        "CORR + RECORDS (w/ Mixup)": [84.25, 82.50, 71.24, 79.79, 74.07, 62.25],
    },
    "CIFAR-100-LT": {
        "CORR": [42.29, 38.03, 36.59, 38.39, 34.09, 31.05],
        "CORR + Oracle-LA": [22.56, 5.59, 3.12, 11.37, 3.32, 1.98],
        "CORR + RECORDS": [48.06, 45.56, 42.51, 42.25, 40.59, 38.65],
        "SoLar (w/ Mixup)": [47.93, 46.85, 45.10, 42.51, 41.71, 39.15],
        "CORR + RECORDS (w/ Mixup)": [52.08, 50.58, 47.91, 46.57, 45.22, 44.73],
    },
}


def _build() -> pd.DataFrame:
    rows = []
    for table, methods in _ROWS.items():
        for method, values in methods.items():
            for (rho, q), top1 in zip(_COLUMNS[table], values, strict=True):
                rows.append({"dataset_table": table, "method": method, "rho": float(rho), "q": q, "top1": top1})
    return pd.DataFrame(rows)


PUBLISHED: pd.DataFrame = _build()
"""Tidy frame: dataset_table, method, rho, q, top1 (one row per README entry)."""

PUBLISHED_TABLES: tuple[str, ...] = tuple(_ROWS)


def published(dataset_table: str | None = None) -> pd.DataFrame:
    """A copy of the published numbers, optionally of one table ('CIFAR-10-LT' or 'CIFAR-100-LT')."""
    df = PUBLISHED.copy()
    if dataset_table is not None:
        df = df[df["dataset_table"] == dataset_table].reset_index(drop=True)
    return df


def published_value(dataset_table: str, method: str, rho: float, q: float) -> float | None:
    """The README's top-1 for one cell, or None where the README has no such entry."""
    sel = PUBLISHED[(PUBLISHED["dataset_table"] == dataset_table) & (PUBLISHED["method"] == method)
                    & (PUBLISHED["rho"].round(6) == round(float(rho), 6))
                    & (PUBLISHED["q"].round(6) == round(float(q), 6))]
    return float(sel["top1"].iloc[0]) if len(sel) else None
