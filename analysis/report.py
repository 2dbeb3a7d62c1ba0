"""`python -m analysis.report SWEEP_DIR [SWEEP_DIR ...] --out REPORT_DIR [--best] [--notebook]`: every table and
figure.

Writes into REPORT_DIR: `report.html` (one self-contained page to open in a browser: the sweep's settings, run
counts, failures, every table and every figure inline), `tables.md` (all tables, Markdown), `tables.tex` (the same,
LaTeX), one PNG per figure, and `README.md` (an index: run counts, links, the figures inline). `--notebook` also
executes analysis/paper_tables.ipynb on the sweep and exports it as `notebook.html` (nbconvert). Prints each path
it wrote. An unreadable sweep exits with status 2 and a one-line message, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import plots, tables
from analysis.load import Sweep, SweepLoadError, load_sweep, read_manifest
from analysis.methods import DEFAULT_ORACLE_MODE, ORACLE_SUFFIX
from analysis.render import to_html, to_latex, to_markdown


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
        gain = tables.records_gain(runs, table, **kw)
        if not gain.empty:
            out.append((f"{s}-records-gain", gain))
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
    html = report_html(data, named, figures, notes, head=f"Top-1 {when}; the README's Oracle-LA row is compared "
                       f"with mode {paper_oracle_mode!r}.")
    (out / "report.html").write_text(html, encoding="utf-8")
    written.insert(0, out / "report.html")
    return written


# One page, no external files: the figures are inlined as base64 PNG so the page can be mailed or archived alone.
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
p.caption { font-size: 0.8em; color: #555; max-width: 60em; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1.5em; }
nav li { font-size: 0.9em; }
.failed { color: #a00; }
</style></head>
<body>
<h1>{{ title }}</h1>
<p>Source: {{ sources }}. {{ head }}</p>
<p>Runs: {{ status }}.</p>
<nav><ul>
<li><a href="#settings">Sweep settings</a></li>
<li><a href="#failures">Failures</a></li>
{% for key, name, _ in tables %}<li><a href="#{{ key }}">{{ name }}</a></li>
{% endfor %}{% for key, name, _ in figures %}<li><a href="#{{ key }}">Figure: {{ name }}</a></li>
{% endfor %}</ul></nav>
<h2 id="settings">Sweep settings</h2>
{% for block in settings %}{{ block }}
{% else %}<p>No sweep.json next to the Parquet files: the run settings are unknown.</p>
{% endfor %}
<h2 id="failures">Failures</h2>
{% if failures %}{{ failures }}{% else %}<p>No run failed.</p>{% endif %}
<h2>Tables</h2>
{% for key, _, table in tables %}<section id="{{ key }}">{{ table }}</section>
{% endfor %}
<h2>Figures</h2>
{% for key, name, src in figures %}<section id="{{ key }}"><h3>{{ name }}</h3>
<img alt="{{ name }}" src="data:image/png;base64,{{ src }}"></section>
{% endfor %}
{% if notes %}<h2>Figures not drawn</h2><ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
</body></html>
"""


def report_html(data: Sweep, named: list[tuple[str, pd.DataFrame]], figures: list[Path], notes: list[str],
                head: str = "") -> str:
    """The self-contained HTML page: settings, run counts, failures, every table, every figure inline."""
    import base64

    import jinja2
    import markupsafe

    env = jinja2.Environment(autoescape=True)
    # the tables are HTML already (pandas Styler, which escapes their text): mark them safe, escape the rest
    safe = markupsafe.Markup
    settings = []
    for source in data.sources:
        manifest = read_manifest(source)
        if manifest is None:
            continue
        values = {"sweep": source, "cells": len(manifest.get("cells", [])), **manifest.get("settings", {})}
        frame = pd.DataFrame({"value": [str(v) for v in values.values()]}, index=pd.Index(list(values), name="setting"))
        settings.append(safe(to_html(frame)))
    tables = [(key, df.attrs.get("title", key), safe(to_html(df))) for key, df in named if key != "failures"]
    failed = [df for key, df in named if key == "failures"]
    status = data.runs["status"].astype(str).value_counts()
    images = [(f"figure-{p.stem}", p.stem, base64.b64encode(p.read_bytes()).decode("ascii")) for p in figures]
    return env.from_string(_PAGE).render(
        title="Sweep report", sources=", ".join(data.sources), head=head,
        status=", ".join(f"{n} {s}" for s, n in status.items()) + f" ({len(data.runs)} in all)",
        settings=settings, failures=safe(to_html(failed[0])) if failed else None, tables=tables, figures=images,
        notes=notes)


def write_notebook_html(sweep_dirs: Sequence[str], out_dir: str | os.PathLike, timeout_s: int = 600) -> Path:
    """Execute analysis/paper_tables.ipynb on the sweep(s) and export it, outputs included, as notebook.html."""
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
        from nbconvert import HTMLExporter
    except ImportError as err:
        raise OSError(f"--notebook needs nbformat, nbclient and nbconvert ({err}); pip install -e '.[notebook]'") \
            from None
    if len(sweep_dirs) != 1:
        raise OSError(f"--notebook reads one sweep folder (RECORDS_SWEEP_DIR), got {len(sweep_dirs)}")
    nb = nbformat.read(Path(__file__).with_name("paper_tables.ipynb"), as_version=4)
    previous = os.environ.get("RECORDS_SWEEP_DIR")
    os.environ["RECORDS_SWEEP_DIR"] = str(sweep_dirs[0])
    try:
        NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                       resources={"metadata": {"path": str(out_dir)}}).execute()
    except CellExecutionError as err:
        last = [line for line in str(err).splitlines() if line.strip()][-1:] or ["?"]
        raise OSError(f"the notebook failed on {sweep_dirs[0]}: {last[0]}") from None
    finally:
        if previous is None:
            os.environ.pop("RECORDS_SWEEP_DIR", None)
        else:
            os.environ["RECORDS_SWEEP_DIR"] = previous
    body, _ = HTMLExporter().from_notebook_node(nb)  # images are embedded as data URIs by default
    path = Path(out_dir) / "notebook.html"
    path.write_text(body, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", help="sweep folder(s) or URI(s) holding runs.parquet and "
                        "epochs.parquet; several are concatenated")
    parser.add_argument("--out", required=True, help="folder to write the report into (created)")
    parser.add_argument("--best", action="store_true",
                        help="tables use the best epoch's top-1 (selected on the test set) instead of the last")
    parser.add_argument("--oracle-mode", default=DEFAULT_ORACLE_MODE, choices=sorted(ORACLE_SUFFIX),
                        help="the Oracle-LA mode compared with the README's 'CORR + Oracle-LA' row")
    parser.add_argument("--notebook", action="store_true",
                        help="also execute analysis/paper_tables.ipynb on the sweep and export it as notebook.html")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.sweep_dirs, args.out, best=args.best, paper_oracle_mode=args.oracle_mode)
        if args.notebook:
            written.append(write_notebook_html(args.sweep_dirs, args.out))
    except (SweepLoadError, OSError) as err:
        # Bad input is the user's to fix: one line, no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
