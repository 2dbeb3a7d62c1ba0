"""Figures of a sweep: accuracy over epochs, the prior estimate π̂ against the true prior, per-class accuracy
against class size, and run time.

Every function takes the frames (runs, epochs), returns a matplotlib Figure and, with `save=path`, also writes
a PNG. Figures are built with `matplotlib.figure.Figure`, not pyplot: no backend is needed (Agg-safe) and no
figure stays registered in pyplot's global list. Curves use stage 'train' (SoLar's 'estimate' stage restarts
its epochs at 0). Methods are split by the config fields that vary, like the tables (see analysis.tables).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.methods import DEFAULT_ORACLE_MODE, METHOD_ORDER, order_methods, order_tables
from analysis.tables import DEFAULT_AVERAGE_OVER, annotate, column_label, row_labels, tables_in

# Fixed colours for the paper's rows so a method looks the same in every figure; others cycle through tab10.
_FIXED = dict(zip(METHOD_ORDER, ["tab:gray", "tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:green"]))
_CYCLE = ["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "black", "gold"]


def _colors(labels: Sequence[str]) -> dict[str, str]:
    out, extra = {}, 0
    for label in order_methods(labels):
        base = label.split(" [")[0]
        if base in _FIXED and base == label:
            out[label] = _FIXED[base]
        else:
            out[label] = _CYCLE[extra % len(_CYCLE)]
            extra += 1
    return out


def _save(fig: Figure, save: str | Path | None) -> Figure:
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def _table_runs(runs: pd.DataFrame, dataset_table: str | None, paper_oracle_mode: str,
                average_over: Sequence[str]) -> tuple[str, pd.DataFrame]:
    """(table, annotated runs of that table with a `row` label); the first table when none is named."""
    tables = tables_in(runs)
    if not tables:
        raise ValueError("the runs frame is empty")
    table = dataset_table or tables[0]
    sel = annotate(runs, paper_oracle_mode)
    sel = sel[sel["dataset_table"] == table]
    if sel.empty:
        raise ValueError(f"no runs for table {table!r}; the runs have {tables}")
    return table, sel.assign(row=row_labels(sel, average_over))


def _join_keys(runs: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    return ["sweep", "config_hash"] if "sweep" in runs.columns and "sweep" in epochs.columns else ["config_hash"]


def _epochs_of(runs: pd.DataFrame, epochs: pd.DataFrame, stage: str = "train") -> pd.DataFrame:
    """The epoch rows of these runs and stage, with the runs' annotation columns joined on."""
    keys = _join_keys(runs, epochs)
    cols = [*keys, "row", "method_name", "dataset_table", "rho", "q", "seed", "status", "class_counts"]
    ep = epochs[epochs["stage"] == stage]
    return ep.merge(runs[[c for c in cols if c in runs.columns]], on=keys, how="inner").sort_values("epoch")


def _cell_grid(sel: pd.DataFrame, width: float = 4.2, height: float = 3.2, extra_height: float = 0.8):
    """A figure with one axes per (ρ, q) cell: rows ρ, columns q."""
    rhos = sorted(sel["rho"].astype(float).unique())
    qs = sorted(sel["q"].astype(float).unique())
    # at least 7.5 inches wide, so a one-cell sweep still has room for the suptitle and the legend
    fig = Figure(figsize=(max(7.5, width * len(qs)), height * len(rhos) + extra_height), layout="constrained")
    axes = fig.subplots(len(rhos), len(qs), squeeze=False)
    return fig, {(r, q): axes[i, j] for i, r in enumerate(rhos) for j, q in enumerate(qs)}


def _legend(fig: Figure, axes: Sequence) -> None:
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(3, len(handles)),
                   fontsize="small")


def runs_shown(shown: pd.DataFrame) -> str:
    """What a figure shows, for its title: '7 finished runs', '5 runs: 4 finished, 1 running (epochs so far)'."""
    counts = shown["status"].astype(str).value_counts()
    n = len(shown)
    plural = "s" if n != 1 else ""
    if n == 0:
        return "no runs to show yet"
    if len(counts) == 1:
        text = f"{n} {counts.index[0]} run{plural}"
    else:
        text = f"{n} runs: " + ", ".join(f"{c} {s}" for s, c in counts.items())
    return text + (" (epochs so far)" if "running" in counts else "")


# --- accuracy over epochs ----------------------------------------------------------------------------------------
def plot_accuracy_curves(runs: pd.DataFrame, epochs: pd.DataFrame, dataset_table: str | None = None, *,
                         metric: str = "top1", statuses: Sequence[str] = ("finished", "running"),
                         paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                         average_over: Sequence[str] = DEFAULT_AVERAGE_OVER, save: str | Path | None = None) -> Figure:
    """Test accuracy over epochs, one panel per (ρ, q), one line per method: mean over seeds, ±1 std band.

    Runs whose status is not in `statuses` (by default the failed and pending ones) are left out; a running
    run contributes its epochs so far, so late epochs may average fewer seeds.
    """
    table, sel = _table_runs(runs, dataset_table, paper_oracle_mode, average_over)
    shown = sel[sel["status"].astype(str).isin(statuses)]
    ep = _epochs_of(shown, epochs)
    fig, grid = _cell_grid(sel)
    colors = _colors(sel["row"].unique())
    for (rho, q), ax in grid.items():
        cell = ep[(ep["rho"].astype(float) == rho) & (ep["q"].astype(float) == q)]
        for row in order_methods(cell["row"].unique()):
            per_run = cell[cell["row"] == row].pivot_table(index="epoch", columns="config_hash", values=metric)
            mean, std = per_run.mean(axis=1), per_run.std(axis=1, ddof=1)
            ax.plot(mean.index, mean.values, color=colors[row], label=row, lw=1.4)
            band = std.notna()
            ax.fill_between(mean.index[band], (mean - std)[band], (mean + std)[band], color=colors[row], alpha=0.2)
        ax.set_title(column_label(rho, q), fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test {metric} (%)")
        ax.grid(alpha=0.3)
        if cell.empty:
            ax.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(f"{table}: test {metric} (%) over epochs, mean ± std over seeds of {runs_shown(shown)}")
    _legend(fig, list(grid.values()))
    return _save(fig, save)


# --- the prior estimate -----------------------------------------------------------------------------------------
PRIOR_PREFERENCE = ("CORR + RECORDS", "CORR + RECORDS (w/ Mixup)", "SoLar (w/ Mixup)")


def true_prior(class_counts: object) -> np.ndarray | None:
    """class_counts / sum, or None when the run recorded no counts."""
    if class_counts is None or (isinstance(class_counts, float) and math.isnan(class_counts)):
        return None
    counts = np.asarray(class_counts, dtype=float)
    return counts / counts.sum() if counts.size and counts.sum() > 0 else None


def kl_to_true(prior: np.ndarray, estimate: object, eps: float = 1e-12) -> float:
    """KL(true ‖ estimate) in nats, as trainables.metrics.prior_kl (classes with zero count contribute 0)."""
    est = np.clip(np.asarray(estimate, dtype=float), eps, None)
    mask = prior > 0
    return float(np.sum(prior[mask] * (np.log(prior[mask]) - np.log(est[mask]))))


def _has_list(values: pd.Series) -> pd.Series:
    return values.map(lambda v: v is not None and not (isinstance(v, float) and math.isnan(v)) and len(v) > 0)


def _pick_prior_run(sel: pd.DataFrame, ep: pd.DataFrame, config_hash: str | None) -> pd.Series:
    with_prior = ep[_has_list(ep["prior_est"])]
    if config_hash is not None:
        match = sel[sel["config_hash"] == config_hash]
        if match.empty:
            raise ValueError(f"no run with config_hash {config_hash!r} in the selected runs")
        if not (with_prior["config_hash"] == config_hash).any():
            raise ValueError(f"run {config_hash} has no prior_est in its epochs (CORR and Oracle-LA estimate none)")
        return match.iloc[0]
    counts = with_prior.groupby("config_hash").size()
    cands = sel[sel["config_hash"].isin(counts.index)]
    if cands.empty:
        raise ValueError("no run with a prior estimate (prior_est) among the selected runs; RECORDS and SoLar "
                         "record one")
    rank = cands["method_name"].map(lambda m: PRIOR_PREFERENCE.index(m) if m in PRIOR_PREFERENCE else 99)
    order = pd.DataFrame({"rank": rank, "epochs": -cands["config_hash"].map(counts), "seed": cands["seed"]})
    return cands.loc[order.sort_values(["rank", "epochs", "seed"]).index[0]]


def plot_prior_estimate(runs: pd.DataFrame, epochs: pd.DataFrame, config_hash: str | None = None, *,
                        dataset_table: str | None = None, rho: float | None = None, q: float | None = None,
                        stage: str = "train", snapshots: Sequence[float] = (0.0, 0.1, 0.3, 1.0),
                        paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                        average_over: Sequence[str] = DEFAULT_AVERAGE_OVER, save: str | Path | None = None) -> Figure:
    """π̂ over epochs against the true training prior (class_counts / sum), for one run, plus KL for its cell.

    Panels: (a) π̂ of every class over epochs (colour = class, head to tail), dashed = the true prior;
    (b) snapshots of π̂ at the given fractions of training against the true prior, classes sorted by size;
    (c) KL(true ‖ π̂) over epochs for every run of the same (table, ρ, q) that records π̂, mean per method.
    The run defaults to a CORR + RECORDS run (else RECORDS w/ Mixup, else SoLar) with the most epochs.
    """
    table, sel = _table_runs(runs, dataset_table, paper_oracle_mode, average_over)
    if rho is not None:
        sel = sel[sel["rho"].astype(float) == float(rho)]
    if q is not None:
        sel = sel[sel["q"].astype(float) == float(q)]
    ep = _epochs_of(sel, epochs, stage)
    run = _pick_prior_run(sel, ep, config_hash)
    mine = ep[(ep["config_hash"] == run["config_hash"]) & _has_list(ep["prior_est"])]
    if "sweep" in mine.columns and "sweep" in run.index:
        mine = mine[mine["sweep"] == run["sweep"]]
    est = np.vstack(mine["prior_est"].map(lambda v: np.asarray(v, dtype=float)).to_list())
    prior = true_prior(run.get("class_counts"))
    k = est.shape[1]
    order = np.argsort(-prior, kind="stable") if prior is not None else np.arange(k)
    cmap = colormaps["viridis"]
    class_color = {c: cmap(i / max(k - 1, 1)) for i, c in enumerate(order)}

    fig = Figure(figsize=(16, 4.8), layout="constrained")
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    x = mine["epoch"].to_numpy()
    thin = max(1, k // 25)  # with 100 classes, dashing every true level would hide the estimate
    for i, c in enumerate(order):
        ax_a.plot(x, est[:, c], color=class_color[c], lw=1.0)
        if prior is not None and i % thin == 0:
            ax_a.axhline(prior[c], color=class_color[c], ls="--", lw=0.8, alpha=0.6)
    ax_a.set_yscale("log")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("π̂ (log)")
    ax_a.set_title("(a) π̂ per class (colour: head → tail); dashed: true prior", fontsize="medium")

    positions = sorted({min(len(x) - 1, round(f * (len(x) - 1))) for f in snapshots})
    snap_cmap = colormaps["plasma"]
    for j, pos in enumerate(positions):
        ax_b.plot(np.arange(k), est[pos, order], marker=".", lw=1.0, color=snap_cmap(j / max(len(positions), 1)),
                  label=f"π̂ epoch {int(x[pos])}")
    if prior is not None:
        ax_b.plot(np.arange(k), prior[order], color="black", lw=2.0, ls="--", label="true prior")
    ax_b.set_yscale("log")
    ax_b.set_xlabel("class, by training count (head → tail)")
    ax_b.set_ylabel("prior (log)")
    ax_b.set_title("(b) snapshots against the true prior", fontsize="medium")
    ax_b.legend(fontsize="small")

    cell = ep[(ep["rho"].astype(float) == float(run["rho"])) & (ep["q"].astype(float) == float(run["q"]))
              & _has_list(ep["prior_est"])]
    cell = cell.assign(kl=[kl_to_true(p, e) if (p := true_prior(cc)) is not None else np.nan
                           for cc, e in zip(cell["class_counts"], cell["prior_est"])])
    colors = _colors(sel["row"].unique())
    for row in order_methods(cell["row"].unique()):
        per_run = cell[cell["row"] == row].pivot_table(index="epoch", columns="config_hash", values="kl")
        ax_c.plot(per_run.index, per_run.mean(axis=1), color=colors[row], label=f"{row} (n={per_run.shape[1]})")
    ax_c.set_xlabel("epoch")
    ax_c.set_ylabel("KL(true ‖ π̂) (nats)")
    ax_c.set_title(f"(c) KL to the true prior, {column_label(run['rho'], run['q'])}", fontsize="medium")
    if len(cell) and cell["kl"].gt(0).all():  # a log axis would drop a KL of exactly 0
        ax_c.set_yscale("log")
    ax_c.legend(fontsize="small")
    for ax in (ax_a, ax_b, ax_c):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{table} {column_label(run['rho'], run['q'])}: {run['row']}, seed {run['seed']} "
                 f"({run['config_hash']}, {run['status']}), stage '{stage}'")
    return _save(fig, save)


# --- per-class accuracy -------------------------------------------------------------------------------------------
def _per_class(run: pd.Series, epochs: pd.DataFrame | None) -> np.ndarray | None:
    """The run's final per-class accuracy; from its last 'train' epoch when runs.parquet has none."""
    acc = run.get("final_per_class_acc")
    if _has_list(pd.Series([acc])).iloc[0]:
        return np.asarray(acc, dtype=float)
    if epochs is None or epochs.empty:
        return None
    ep = epochs[(epochs["config_hash"] == run["config_hash"]) & (epochs["stage"] == "train")]
    if "sweep" in ep.columns and "sweep" in run.index:
        ep = ep[ep["sweep"] == run["sweep"]]
    ep = ep[_has_list(ep["per_class_acc"])]
    return np.asarray(ep.sort_values("epoch")["per_class_acc"].iloc[-1], dtype=float) if len(ep) else None


def plot_per_class_accuracy(runs: pd.DataFrame, epochs: pd.DataFrame | None = None,
                            dataset_table: str | None = None, *, statuses: Sequence[str] = ("finished",),
                            paper_oracle_mode: str = DEFAULT_ORACLE_MODE,
                            average_over: Sequence[str] = DEFAULT_AVERAGE_OVER,
                            save: str | Path | None = None) -> Figure:
    """Last-epoch accuracy of each class against its training size (log x), one panel per (ρ, q).

    One line per method: classes of equal size are pooled over seeds (under NU the sizes move between
    classes with the seed, so pooling by size is what stays comparable). Finished runs only by default.
    """
    table, every = _table_runs(runs, dataset_table, paper_oracle_mode, average_over)
    sel = every[every["status"].astype(str).isin(statuses)]
    fig, grid = _cell_grid(every)  # every cell gets a panel, also one where no run finished yet
    colors = _colors(every["row"].unique())
    for (rho, q), ax in grid.items():
        cell = sel[(sel["rho"].astype(float) == rho) & (sel["q"].astype(float) == q)]
        for row in order_methods(cell["row"].unique()):
            points = []
            for _, run in cell[cell["row"] == row].iterrows():
                acc, prior = _per_class(run, epochs), run.get("class_counts")
                if acc is not None and _has_list(pd.Series([prior])).iloc[0]:
                    points.append(pd.DataFrame({"count": np.asarray(prior, dtype=float), "acc": acc}))
            if points:
                pooled = pd.concat(points).groupby("count")["acc"].mean()
                ax.plot(pooled.index, pooled.values, marker="o", ms=3, lw=1.0, color=colors[row], label=row)
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(column_label(rho, q), fontsize="medium")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"{table}: per-class test accuracy at the last epoch against class size, {runs_shown(sel)}")
    _legend(fig, list(grid.values()))
    return _save(fig, save)


# --- run time ---------------------------------------------------------------------------------------------------
def plot_runtime(runs: pd.DataFrame, epochs: pd.DataFrame | None = None, *,
                 paper_oracle_mode: str = DEFAULT_ORACLE_MODE, save: str | Path | None = None) -> Figure:
    """Wall time and training throughput of every run that has them: one point per run, x = method,
    colour = dataset table; the title counts runs by status and sums the wall hours."""
    r = annotate(runs, paper_oracle_mode)
    methods = order_methods(r["method_name"])
    tables = order_tables(r["dataset_table"])
    palette = dict(zip(tables, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"] * 4))
    fig = Figure(figsize=(max(8.0, 1.3 * len(methods) * 2), 5.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, column, scale, ylabel in ((axes[0], "wall_s", 1 / 3600, "wall time (h)"),
                                      (axes[1], "images_per_s", 1.0, "training images / s")):
        labelled = set()
        for ti, table in enumerate(tables):
            sub = r[(r["dataset_table"] == table) & r[column].notna()]
            for mi, method in enumerate(methods):
                vals = sub.loc[sub["method_name"] == method, column].to_numpy(dtype=float) * scale
                if not len(vals):
                    continue
                # A fixed spread (no random jitter) keeps runs of one cell apart and the figure reproducible.
                offset = (ti - (len(tables) - 1) / 2) * 0.8 / max(len(tables), 1)
                spread = np.linspace(-0.08, 0.08, len(vals)) if len(vals) > 1 else np.zeros(1)
                ax.scatter(mi + offset + spread, vals, s=18, color=palette[table], alpha=0.8,
                           label=None if table in labelled else table)
                labelled.add(table)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
        if not r[column].notna().any():
            ax.text(0.5, 0.5, f"no run has {column}", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_title("wall time per run", fontsize="medium")
    axes[1].set_title("throughput per run (mean over its epochs)", fontsize="medium")
    status = r["status"].astype(str).value_counts()
    counts = ", ".join(f"{status[s]} {s}" for s in ("finished", "running", "failed", "pending") if s in status)
    hours = r["wall_s"].sum(skipna=True) / 3600
    fig.suptitle(f"Run time: {len(r)} runs ({counts}); total wall {hours:.2f} h")
    _legend(fig, [axes[0]])
    return _save(fig, save)
