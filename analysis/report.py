"""`python -m analysis.report SWEEP_DIR [SWEEP_DIR ...] --out REPORT_DIR [--best]`: every table and figure.

Writes into REPORT_DIR: `tables.md` (all tables, Markdown), `tables.tex` (the same, LaTeX), one PNG per
figure, and `README.md` (an index: run counts, links, the figures inline). Prints each path it wrote.
An unreadable sweep exits with status 2 and a one-line message, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import plots, tables
from analysis.load import Sweep, SweepLoadError, load_sweep
from analysis.methods import DEFAULT_ORACLE_MODE, ORACLE_SUFFIX
from analysis.render import to_latex, to_markdown


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def report_tables(runs: pd.DataFrame, *, best: bool = False,
                  paper_oracle_mode: str = DEFAULT_ORACLE_MODE) -> list[tuple[str, pd.DataFrame]]:
    """(key, table) for every table of the report, in reading order."""
    out = [("status", tables.status_table(runs, paper_oracle_mode=paper_oracle_mode))]
    failed = tables.failures(runs, paper_oracle_mode=paper_oracle_mode)
    if len(failed):
        out.append(("failures", failed))
    kw = {"paper_oracle_mode": paper_oracle_mode}
    for table in tables.tables_in(runs):
        s = _slug(table)
        out.append((f"{s}-top1", tables.paper_table(runs, table, best=best, **kw)))
        out.append((f"{s}-published", tables.compare_published(runs, table, best=best, **kw)))
        out.append((f"{s}-shots", tables.shots_table(runs, table, **kw)))
        raw = tables.raw_vs_adjusted(runs, table, **kw)
        if not raw.empty:
            out.append((f"{s}-raw-vs-adjusted", raw))
    return out


def report_figures(runs: pd.DataFrame, epochs: pd.DataFrame, out_dir: Path, *,
                   paper_oracle_mode: str = DEFAULT_ORACLE_MODE) -> tuple[list[Path], list[str]]:
    """Write every figure as PNG; returns (paths, notes on figures that could not be drawn)."""
    paths, notes = [], []
    kw = {"paper_oracle_mode": paper_oracle_mode}

    def draw(name: str, make) -> None:
        path = out_dir / f"{name}.png"
        try:
            make(path)
        except ValueError as err:  # e.g. no run records π̂ in this table: say so instead of failing the report
            notes.append(f"{name}: not drawn ({err})")
            return
        paths.append(path)

    for table in tables.tables_in(runs):
        s = _slug(table)
        draw(f"accuracy-{s}", lambda p, t=table: plots.plot_accuracy_curves(runs, epochs, t, save=p, **kw))
        draw(f"prior-{s}", lambda p, t=table: plots.plot_prior_estimate(runs, epochs, dataset_table=t, save=p, **kw))
        draw(f"per-class-{s}", lambda p, t=table: plots.plot_per_class_accuracy(runs, epochs, t, save=p, **kw))
    draw("runtime", lambda p: plots.plot_runtime(runs, epochs, save=p, **kw))
    return paths, notes


def write_report(sweep: Sweep | str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 best: bool = False, paper_oracle_mode: str = DEFAULT_ORACLE_MODE) -> list[Path]:
    """Write tables.md, tables.tex, the PNGs and README.md into out_dir; returns the paths written."""
    data = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    runs, epochs = data.runs, data.epochs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    named = report_tables(runs, best=best, paper_oracle_mode=paper_oracle_mode)
    sources = ", ".join(data.sources)
    when = "at the best epoch (selected on the test set)" if best else "at the last epoch"
    head = (f"# Sweep report\n\nSource: {sources}. Top-1 {when}; the README's Oracle-LA row is compared with "
            f"mode {paper_oracle_mode!r}.\n")
    md = head + "".join(f"\n<a id=\"{key}\"></a>\n\n{to_markdown(df)}" for key, df in named)
    tex = "".join(to_latex(df, label=f"tab:{key}") + "\n" for key, df in named)
    written = []
    for name, text in (("tables.md", md), ("tables.tex", tex)):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    figures, notes = report_figures(runs, epochs, out, paper_oracle_mode=paper_oracle_mode)
    written += figures

    status = runs["status"].astype(str).value_counts()
    index = [f"# Sweep report\n\nSource: {sources}\n",
             "Runs: " + ", ".join(f"{n} {s}" for s, n in status.items()) + f" ({len(runs)} in all).\n",
             "- [tables.md](tables.md): every table\n"
             + "\n".join(f"  - [{df.attrs.get('title', key)}](tables.md#{key})" for key, df in named),
             "- [tables.tex](tables.tex): the same tables in LaTeX (booktabs)\n"]
    index += [f"## {p.stem}\n\n![{p.stem}]({p.name})\n" for p in figures]
    if notes:
        index.append("## Figures not drawn\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    (out / "README.md").write_text("\n".join(index), encoding="utf-8")
    written.append(out / "README.md")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", help="sweep folder(s) or URI(s) holding runs.parquet and "
                        "epochs.parquet; several are concatenated")
    parser.add_argument("--out", required=True, help="folder to write the report into (created)")
    parser.add_argument("--best", action="store_true",
                        help="tables use the best epoch's top-1 (selected on the test set) instead of the last")
    parser.add_argument("--oracle-mode", default=DEFAULT_ORACLE_MODE, choices=sorted(ORACLE_SUFFIX),
                        help="the Oracle-LA mode compared with the README's 'CORR + Oracle-LA' row")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.sweep_dirs, args.out, best=args.best, paper_oracle_mode=args.oracle_mode)
    except (SweepLoadError, OSError) as err:
        # Bad input is the user's to fix: one line, no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
