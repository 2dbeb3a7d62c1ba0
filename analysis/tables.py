"""The paper's tables from a sweep's runs frame: tidy numbers plus a formatted pivot for reading.

Rules (the same for every table here):
- One table per dataset table (CIFAR-10-LT, CIFAR-100-LT, CIFAR-100-LT-NU); rows are methods in the paper's
  order, columns ρ × q from whatever values the runs have.
- A cell aggregates the runs of one (method, ρ, q) over the fields in `average_over` (default: the training
  seed). Any other config field that varies within the table (epochs, arch, img_max, precision, faithful,
  data_seed, ...) is never averaged over: it becomes an extra row key (an index level of the pivot and a
  column of the tidy frame), so e.g. 200- and 800-epoch runs sit on separate rows. SoLar-only fields count as
  varying only when they vary among the SoLar runs.
- mean and std are over *finished* runs only; std is pandas' sample std (ddof=1), so n=1 has no std. n counts
  the finished runs that have a value.
- Runs that are failed, running or pending are never dropped silently: the cell names them after the numbers,
  e.g. "81.00 ± 1.41 (n=2; failed)", "81.00 (n=1; running 2/4)"; with no finished run the cell is only
  that, e.g. "failed ×2" or "running 12/800". A (method, ρ, q) with no run at all is NaN ("–" when rendered).
- Numbers come from runs.parquet: `final_*` (the last epoch) by default, `best_top1` (the best epoch, which is
  selected on the test set) on request; titles and captions say which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.methods import DEFAULT_ORACLE_MODE, add_method_names, method_sort_key, order_methods, order_tables
from analysis.methods import dataset_table as table_name  # `dataset_table` is a parameter name below
from analysis.published import PUBLISHED, PUBLISHED_TABLES
from analysis.published import SOURCE as PUBLISHED_SOURCE
from trainables.config import flat_fields
from trainables.methods import REGISTRY

CONFIG_FIELDS = tuple(name for name, _ in flat_fields())
# A method's own parameter -> that method (its column is null in the other methods' runs).
PARAM_OWNER = {key: spec.name for spec in REGISTRY.values() for key in spec.flat_keys()}
# Fields that place a run in a table, a row and a column; every other config field is a candidate row key.
PLACEMENT = ("dataset", "nu", "rho", "q", "method", "records", "mixup", "oracle_la")
DEFAULT_AVERAGE_OVER = ("seed",)
SHOTS = ("many", "medium", "few")
STD_NOTE = "sample std (ddof=1) over seeds"


# --- annotating runs ------------------------------------------------------------------------------------------
def annotate(runs: pd.DataFrame, paper_oracle_mode: str = DEFAULT_ORACLE_MODE) -> pd.DataFrame:
    """A copy of runs with `dataset_table` and `method_name` (the paper's names) added."""
    out = runs.copy()
    out["dataset_table"] = [table_name(d, n) for d, n in zip(out["dataset"], out["nu"])]
    out["method_name"] = add_method_names(out, paper_oracle_mode)
    return out


def _key(value: object) -> str:
    """A config value as a short, hashable label (None/NaN -> 'None', 100.0 -> '100')."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "None"
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    return str(value)


def varying_fields(runs: pd.DataFrame, average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> list[str]:
    """Config fields (besides placement and `average_over`) that take more than one value in these runs."""
    out = []
    for name in CONFIG_FIELDS:
        if name in PLACEMENT or name in average_over or name not in runs.columns:
            continue
        sub = runs[runs["method"] == PARAM_OWNER[name]] if name in PARAM_OWNER else runs
        if sub[name].map(_key).nunique() > 1:
            out.append(name)
    return out


def row_labels(runs: pd.DataFrame, average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.Series:
    """Method name plus the varying fields of these (annotated) runs, e.g. 'CORR [epochs=200]': plot legends."""
    extra = varying_fields(runs, average_over)
    if not extra:
        return runs["method_name"].astype(object)
    tags = [", ".join(f"{f}={_key(v)}" for f, v in zip(extra, values))
            for values in runs[extra].itertuples(index=False)]
    return pd.Series([f"{m} [{t}]" for m, t in zip(runs["method_name"], tags)], index=runs.index, dtype=object)


def filter_runs(runs: pd.DataFrame, **equals: object) -> pd.DataFrame:
    """Rows whose columns equal the given values, e.g. filter_runs(runs, epochs=800, arch='resnet18')."""
    mask = pd.Series(True, index=runs.index)
    for name, value in equals.items():
        if name not in runs.columns:
            raise KeyError(f"no column {name!r} in runs; columns: {sorted(runs.columns)}")
        mask &= runs[name].map(_key) == _key(value)
    return runs[mask]


def tables_in(runs: pd.DataFrame) -> list[str]:
    """The dataset tables present in a runs frame, in the paper's order."""
    return order_tables(table_name(d, n) for d, n in zip(runs["dataset"], runs["nu"]))


def _select(runs: pd.DataFrame, table: str, paper_oracle_mode: str) -> pd.DataFrame:
    r = annotate(runs, paper_oracle_mode)
    sel = r[r["dataset_table"] == table]
    if sel.empty:
        raise ValueError(f"no runs for table {table!r}; the runs have {tables_in(runs)}")
    return sel


# --- one cell ---------------------------------------------------------------------------------------------------
def _count(word: str, n: int) -> str:
    return word if n == 1 else f"{word} ×{n}"


def _notes(group: pd.DataFrame, n_no_value: int) -> list[str]:
    """What the mean leaves out, in words: failed / running k/N / pending / finished without a value."""
    status = group["status"].astype(str)
    notes = []
    if (status == "failed").any():
        notes.append(_count("failed", int((status == "failed").sum())))
    running = group[status == "running"]
    if 0 < len(running) <= 3:
        for done, total in zip(running["epochs_done"], running["epochs_total"]):
            notes.append(f"running {_key(done) if not pd.isna(done) else '?'}/{_key(total)}")
    elif len(running):
        notes.append(_count("running", len(running)))
    if (status == "pending").any():
        notes.append(_count("pending", int((status == "pending").sum())))
    if n_no_value:
        notes.append(_count("no value", n_no_value))
    return notes


def format_cell(mean: float, std: float, n: int, notes: Sequence[str] = (), digits: int = 2) -> str:
    """'81.00 ± 1.41 (n=2)', '81.00 (n=1; failed)', or only the notes when no run finished."""
    if n == 0:
        return ", ".join(notes) if notes else "–"
    head = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 and not math.isnan(std) else "")
    return f"{head} (n={n}" + (f"; {', '.join(notes)}" if notes else "") + ")"


def _summarize(group: pd.DataFrame, column: str) -> dict:
    finished = group[group["status"].astype(str) == "finished"]
    values = finished[column].dropna().astype(float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    notes = _notes(group, len(finished) - n)
    status = group["status"].astype(str)
    return {
        "mean": mean, "std": std, "n": n,
        "n_failed": int((status == "failed").sum()), "n_running": int((status == "running").sum()),
        "n_pending": int((status == "pending").sum()), "n_runs": len(group),
        "values": values.tolist(), "seeds": finished.loc[values.index, "seed"].tolist(),
        "note": ", ".join(notes), "cell": format_cell(mean, std, n, notes),
    }


# --- tidy frames ------------------------------------------------------------------------------------------------
def cell_stats(runs: pd.DataFrame, column: str, dataset_table: str | None = None, *,
               paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
               average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """Tidy per-cell summary of one runs column (e.g. 'final_top1').

    Columns: dataset_table, method, <varying fields>, rho, q, mean, std, n, n_failed, n_running, n_pending,
    n_runs, values, seeds, note, cell. `attrs['row_keys']` lists the varying fields of each table. With
    dataset_table=None every table is summarised (varying fields found per table).
    """
    if column not in runs.columns:
        raise KeyError(f"no column {column!r} in runs")
    tables = tables_in(runs) if dataset_table is None else [dataset_table]
    parts, row_keys = [], {}
    for table in tables:
        sel = _select(runs, table, paper_oracle_mode)
        extra = varying_fields(sel, average_over)
        row_keys[table] = extra
        sel = sel.assign(**{f: sel[f].map(_key) for f in extra})
        keys = ["method_name", *extra, "rho", "q"]
        for key, group in sel.groupby(keys, sort=False, dropna=False):
            row = dict(zip(["method", *extra, "rho", "q"], key))
            parts.append({"dataset_table": table, **row, **_summarize(group, column)})
    tidy = pd.DataFrame(parts)
    extra_cols = _extra_columns(tidy)
    tidy = tidy[["dataset_table", "method", *extra_cols, "rho", "q",
                 *[c for c in tidy.columns if c not in ("dataset_table", "method", "rho", "q", *extra_cols)]]]
    tidy = _sort(tidy, extra_cols)
    tidy.attrs["row_keys"] = row_keys
    return tidy


def _extra_columns(tidy: pd.DataFrame) -> list[str]:
    """The varying config fields that a tidy frame carries as row keys."""
    return [c for c in tidy.columns if c in CONFIG_FIELDS and c not in PLACEMENT]


def _sort(tidy: pd.DataFrame, extra: Sequence[str], last: Sequence[str] = ()) -> pd.DataFrame:
    order = {t: i for i, t in enumerate(order_tables(tidy["dataset_table"]))}
    methods = {m: i for i, m in enumerate(order_methods(tidy["method"]))}
    keys = pd.DataFrame({
        "_t": tidy["dataset_table"].map(order),
        "_m": tidy["method"].map(methods),
        **{f"_x{i}": tidy[c].astype(str) for i, c in enumerate(extra)},
        "_r": tidy["rho"].astype(float), "_q": tidy["q"].astype(float),
        **{f"_l{i}": tidy[c] for i, c in enumerate(last)},
    })
    return tidy.loc[keys.sort_values(list(keys.columns)).index].reset_index(drop=True)


def column_label(rho: float, q: float) -> str:
    return f"ρ={_key(float(rho))} q={_key(float(q))}"


def _pivot(tidy: pd.DataFrame, value: str, row_extra: Sequence[str] = ()) -> pd.DataFrame:
    """Rows (method, varying fields..., row_extra...), columns 'ρ=.. q=..' sorted by ρ then q."""
    if tidy.empty:
        return pd.DataFrame()
    extra = [c for c in _extra_columns(tidy) if tidy[c].notna().any()]
    index = ["method", *extra, *row_extra]
    cells = sorted({(float(r), float(q)) for r, q in zip(tidy["rho"], tidy["q"])})
    frame = tidy.assign(_col=[column_label(r, q) for r, q in zip(tidy["rho"], tidy["q"])])
    wide = frame.set_index([*index, "_col"])[value].unstack("_col")
    wide = wide.reindex(columns=[column_label(r, q) for r, q in cells])
    # unstack sorts the rows alphabetically; restore the paper's order from the (already sorted) tidy frame.
    rows = list(dict.fromkeys(tuple(x) if len(index) > 1 else x[0] for x in frame[index].itertuples(index=False)))
    wide = wide.reindex(rows)
    wide.columns.name = None
    return wide


def _metric_column(metric: str, best: bool) -> str:
    if best:
        if metric != "top1":
            raise ValueError(f"best=True exists only for top1 (runs.parquet has best_top1), not {metric!r}")
        return "best_top1"
    return f"final_{metric}"


def _when(best: bool) -> str:
    return ("at the best epoch (selected on the test set: optimistic, not a held-out selection)" if best
            else "at the last epoch")


def _rule(extra: Sequence[str]) -> str:
    text = (f"Cells: mean ± {STD_NOTE}, n = finished runs; failed, running and pending runs are named in the "
            "cell and left out of the mean.")
    if extra:
        text += f" Rows are split by the config fields that vary: {', '.join(extra)}."
    return text


def _decorate(df: pd.DataFrame, title: str, caption: str, tidy: pd.DataFrame) -> pd.DataFrame:
    df.attrs = {"title": title, "caption": caption, "tidy": tidy}
    return df


# --- the tables ---------------------------------------------------------------------------------------------------
def paper_table_tidy(runs: pd.DataFrame, dataset_table: str | None = None, *, metric: str = "top1",
                     best: bool = False, paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                     average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """The numbers behind `paper_table`: one row per (table, method, varying fields, ρ, q)."""
    return cell_stats(runs, _metric_column(metric, best), dataset_table, paper_oracle_mode=paper_oracle_mode,
                      average_over=average_over)


def paper_table(runs: pd.DataFrame, dataset_table: str, *, metric: str = "top1", best: bool = False,
                paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """The paper's table for one dataset table: rows methods, columns ρ × q, cells 'mean ± std (n=..)'.

    The tidy numbers are in `.attrs['tidy']`, the title and caption in `.attrs['title']`/`['caption']`.
    """
    tidy = paper_table_tidy(runs, dataset_table, metric=metric, best=best, paper_oracle_mode=paper_oracle_mode,
                            average_over=average_over)
    title = f"{dataset_table}: test {metric} (%) {_when(best)}"
    return _decorate(_pivot(tidy, "cell"), title, _rule(tidy.attrs["row_keys"][dataset_table]), tidy)


def compare_published_tidy(runs: pd.DataFrame, dataset_table: str | None = None, *, best: bool = False,
                           paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                           average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """paper_table_tidy (top1) plus `published` (README value or NaN) and `diff` = mean − published."""
    tidy = paper_table_tidy(runs, dataset_table, best=best, paper_oracle_mode=paper_oracle_mode,
                            average_over=average_over)
    pub = PUBLISHED.rename(columns={"top1": "published"})
    key = lambda df: pd.DataFrame({"t": df["dataset_table"], "m": df["method"], "r": df["rho"].astype(float).round(6),
                                   "q": df["q"].astype(float).round(6)})
    lookup = {tuple(k): v for k, v in zip(key(pub).itertuples(index=False), pub["published"])}
    out = tidy.copy()
    out["published"] = [lookup.get(tuple(k), math.nan) for k in key(tidy).itertuples(index=False)]
    out["diff"] = out["mean"] - out["published"]
    out["cell"] = [f"{c} vs {_fmt(p)}" + ("" if math.isnan(d) else f" (Δ {d:+.2f})")
                   for c, p, d in zip(out["cell"], out["published"], out["diff"])]
    out.attrs = tidy.attrs
    return out


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def compare_published(runs: pd.DataFrame, dataset_table: str, *, best: bool = False,
                      paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                      average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """Our top-1 beside the README's, cells 'ours vs paper (Δ ours − paper)'; 'n/a' where the README has none."""
    tidy = compare_published_tidy(runs, dataset_table, best=best, paper_oracle_mode=paper_oracle_mode,
                                  average_over=average_over)
    if dataset_table in PUBLISHED_TABLES:
        note = (f"Published: {PUBLISHED_SOURCE}; the README's Oracle-LA row is compared with mode "
                f"{paper_oracle_mode!r}; other variants have no published value (n/a).")
    else:
        note = f"There is no published table for {dataset_table} (the README has CIFAR-10-LT and CIFAR-100-LT only)."
    title = f"{dataset_table}: test top1 (%) {_when(best)} vs the published numbers"
    caption = f"{_rule(tidy.attrs['row_keys'][dataset_table])} {note} Δ = our mean − published."
    off = off_paper_settings(in_table(runs, dataset_table))
    if off:
        caption += (" Caution: these runs differ from the paper's settings (" + ", ".join(off)
                    + "), so the published numbers are not their target.")
    return _decorate(_pivot(tidy, "cell"), title, caption, tidy)


# The settings behind the published numbers (METHOD.md Appendix A); SoLar's own knobs are its per-dataset defaults.
PAPER_SETTINGS = {"arch": "resnet18", "epochs": 800, "batch_size": 256, "lr": 0.01, "weight_decay": 1e-3,
                  "momentum": 0.9, "lr_min_ratio": 1e-3, "img_max": None, "test_per_class": None, "data_seed": 0,
                  "upd_start": 1, "prior_momentum": 0.9, "mixup_weight": 1.0, "mixup_beta": 4.0}


def off_paper_settings(runs: pd.DataFrame) -> list[str]:
    """'field=value' for each setting in which some of these runs differ from the paper's."""
    out = []
    for name, paper in PAPER_SETTINGS.items():
        if name not in runs.columns:
            continue
        values = {_key(v) for v in runs[name]}
        other = sorted(v for v in values if v != _key(paper))
        if other:
            out.append(f"{name}={'/'.join(other)}")
    return out


def shots_table_tidy(runs: pd.DataFrame, dataset_table: str | None = None, *, raw: bool = False,
                     paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                     average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """Many / medium / few-shot accuracy at the last epoch, one row per cell and shot group (`shot` column)."""
    columns = [(shot, f"final_{shot}_raw" if raw else f"final_{shot}") for shot in SHOTS]
    return _stacked_stats(runs, columns, "shot", dataset_table, paper_oracle_mode, average_over)


def _stacked_stats(runs: pd.DataFrame, columns: Sequence[tuple[str, str]], key: str, dataset_table: str | None,
                   paper_oracle_mode: str, average_over: Sequence[str]) -> pd.DataFrame:
    """cell_stats of several columns stacked into one tidy frame, labelled by `key` (in the given order)."""
    parts = [cell_stats(runs, column, dataset_table, paper_oracle_mode=paper_oracle_mode,
                        average_over=average_over).assign(**{key: label}) for label, column in columns]
    tidy = pd.concat(parts, ignore_index=True)
    extra = _extra_columns(tidy)
    tidy[key] = pd.Categorical(tidy[key], categories=[label for label, _ in columns], ordered=True)
    tidy = _sort(tidy, extra, last=[key])
    tidy[key] = tidy[key].astype(str)
    tidy.attrs = parts[0].attrs
    return tidy


def shots_table(runs: pd.DataFrame, dataset_table: str, *, raw: bool = False,
                paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """Rows (method, shot group), columns ρ × q; the method's prediction, or the unadjusted logits if raw."""
    tidy = shots_table_tidy(runs, dataset_table, raw=raw, paper_oracle_mode=paper_oracle_mode,
                            average_over=average_over)
    what = "unadjusted logits" if raw else "the method's prediction"
    title = f"{dataset_table}: many / medium / few-shot accuracy (%) at the last epoch ({what})"
    caption = (f"{_rule(tidy.attrs['row_keys'][dataset_table])} Shot groups from the training class counts "
               "(METHOD.md §9.2); each group's accuracy is the mean of its per-class accuracies.")
    return _decorate(_pivot(tidy, "cell", row_extra=["shot"]), title, caption, tidy)


def in_table(runs: pd.DataFrame, dataset_table: str) -> pd.DataFrame:
    """The runs that belong to one of the paper's dataset tables ('CIFAR-10-LT', 'CIFAR-100-LT-NU', ...)."""
    return runs[[table_name(d, n) == dataset_table for d, n in zip(runs["dataset"], runs["nu"])]]


RAW_KINDS = ("adjusted (top1)", "raw (top1_raw)", "gain (top1 − top1_raw)")


def raw_vs_adjusted_tidy(runs: pd.DataFrame, dataset_table: str | None = None, *, all_methods: bool = False,
                         paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                         average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """Prior-adjusted vs raw top-1 at the last epoch for RECORDS rows (all methods if all_methods).

    The gain is computed per run, then summarised, so its std is the paired std over seeds.
    """
    sel = runs if all_methods else runs[runs["records"].fillna(False).astype(bool)]
    if dataset_table is not None:
        sel = in_table(sel, dataset_table)
    if sel.empty:
        return pd.DataFrame()
    sel = sel.assign(_gain=sel["final_top1"] - sel["final_top1_raw"])
    columns = list(zip(RAW_KINDS, ("final_top1", "final_top1_raw", "_gain")))
    return _stacked_stats(sel, columns, "kind", dataset_table, paper_oracle_mode, average_over)


def raw_vs_adjusted(runs: pd.DataFrame, dataset_table: str, *, all_methods: bool = False,
                    paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                    average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """Rows (method, kind: adjusted / raw / gain), columns ρ × q; empty frame when the table has no RECORDS run."""
    tidy = raw_vs_adjusted_tidy(runs, dataset_table, all_methods=all_methods, paper_oracle_mode=paper_oracle_mode,
                                average_over=average_over)
    title = f"{dataset_table}: prior-adjusted vs raw test top-1 (%) at the last epoch"
    if tidy.empty:
        return _decorate(pd.DataFrame(), title, "No RECORDS run in this table.", tidy)
    caption = (f"{_rule(tidy.attrs['row_keys'][dataset_table])} adjusted = the method's prediction "
               "(logits − log π̂ for RECORDS); raw = the unadjusted logits; gain per run, then summarised.")
    return _decorate(_pivot(tidy, "cell", row_extra=["kind"]), title, caption, tidy)


GAIN_KINDS = ("plain", "+ RECORDS", "gain (RECORDS − plain)")


def records_gain_tidy(runs: pd.DataFrame, dataset_table: str | None = None, *, metric: str = "top1",
                      paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                      average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """What RECORDS adds to each PLL method: every +RECORDS run (without Mixup or Oracle-LA) is paired with the plain
    run of the same method whose config differs only in `records`; per pair, the final metric of both and the gain.

    Rows are named by the plain method ('CORR', 'PRODEN'); a pair counts as finished when both runs are. The gain is
    computed per pair (same seed), then summarised, so its std is the paired std over seeds.
    """
    column = f"final_{metric}"
    off = runs["mixup"].fillna(False).astype(bool) | runs["oracle_la"].notna()
    base = runs[~off]
    if dataset_table is not None:
        base = in_table(base, dataset_table)
    fields = [f for f in CONFIG_FIELDS if f in base.columns and f != "records"]
    key = lambda row: tuple(_key(row[f]) for f in fields)
    is_records = base["records"].fillna(False).astype(bool)
    plain = {key(row): row for _, row in base[~is_records].iterrows()}
    pairs = []
    for _, rec in base[is_records].iterrows():
        pl = plain.get(key(rec))
        if pl is None:
            continue
        row = pl.copy()
        statuses = (str(pl["status"]), str(rec["status"]))
        row["status"] = next((s for s in statuses if s != "finished"), "finished")
        row["_plain"], row["_records"] = pl[column], rec[column]
        row["_gain"] = rec[column] - pl[column]
        pairs.append(row)
    if not pairs:
        return pd.DataFrame()
    sel = pd.DataFrame(pairs)
    columns = list(zip(GAIN_KINDS, ("_plain", "_records", "_gain")))
    return _stacked_stats(sel, columns, "kind", dataset_table, paper_oracle_mode, average_over)


def records_gain(runs: pd.DataFrame, dataset_table: str, *, metric: str = "top1",
                 paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                 average_over: Sequence[str] = DEFAULT_AVERAGE_OVER) -> pd.DataFrame:
    """Rows (method, kind: plain / + RECORDS / gain), columns ρ × q: the gain RECORDS brings to each method; empty
    frame when the table has no method with both a plain and a +RECORDS run."""
    tidy = records_gain_tidy(runs, dataset_table, metric=metric, paper_oracle_mode=paper_oracle_mode,
                             average_over=average_over)
    title = f"{dataset_table}: what RECORDS adds to each method, test {metric} (%) at the last epoch"
    if tidy.empty:
        return _decorate(pd.DataFrame(), title, "No method has both a plain and a +RECORDS run here.", tidy)
    caption = (f"{_rule(tidy.attrs['row_keys'][dataset_table])} Each +RECORDS run is paired with the plain run "
               "that differs only in records (same seed); gain per pair, then summarised.")
    return _decorate(_pivot(tidy, "cell", row_extra=["kind"]), title, caption, tidy)


def status_table(runs: pd.DataFrame, *, paper_oracle_mode: str = DEFAULT_ORACLE_MODE) -> pd.DataFrame:
    """Run counts per (dataset table, method) and status, with a total column."""
    from sweep.schema import RUN_STATUSES

    r = annotate(runs, paper_oracle_mode)
    counts = r.groupby(["dataset_table", "method_name"])["status"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=list(RUN_STATUSES), fill_value=0)
    counts["total"] = counts.sum(axis=1)
    order = sorted(counts.index, key=lambda k: (order_tables(r["dataset_table"]).index(k[0]), method_sort_key(k[1])))
    counts = counts.loc[order]
    counts.index.names = ["dataset_table", "method"]
    counts.columns.name = None
    counts.attrs = {"title": "Runs by status", "caption": "Counts of runs.parquet rows."}
    return counts


def failures(runs: pd.DataFrame, *, paper_oracle_mode: str = DEFAULT_ORACLE_MODE) -> pd.DataFrame:
    """The failed runs with the last line of their error (the exception's message)."""
    r = annotate(runs, paper_oracle_mode)
    r = r[r["status"].astype(str) == "failed"]
    out = pd.DataFrame({
        "sweep": r["sweep"] if "sweep" in r else "", "dataset_table": r["dataset_table"], "method": r["method_name"],
        "rho": r["rho"].map(_key), "q": r["q"].map(_key), "seed": r["seed"], "config_hash": r["config_hash"],
        "epochs": [f"{_key(d)}/{_key(t)}" for d, t in zip(r["epochs_done"], r["epochs_total"])],
        "error": [str(e).strip().splitlines()[-1] if isinstance(e, str) and e.strip() else "" for e in r["error"]],
    }).reset_index(drop=True)
    out.attrs = {"title": "Failed runs", "caption": "The last line of each run's error."}
    return out
