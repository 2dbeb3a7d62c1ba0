"""Markdown, LaTeX and HTML text of a table frame, through pandas: `to_markdown` (tabulate) and `Styler` (jinja2).

Index levels become the first columns; NaN renders as '–'; floats with `floatfmt`. The title and caption come
from the arguments or else from `df.attrs` (set by the functions in analysis.tables).

What the libraries do not do, and is done here:
- Markdown: tabulate prints a MultiIndex as one column of tuples and repeats every level on every row. The index
  is reset into columns and repeated leading values are blanked, as pandas prints a frame; the title and caption
  (tabulate has neither) are a bold line above and a paragraph below.
- LaTeX: Styler's `escape="latex"` escapes LaTeX's special characters but leaves Unicode (ρ, ±, Δ, π̂) as is, which
  pdfLaTeX without Unicode support rejects, and it does not escape the caption at all. One small `latex_escape`
  does both for cells, headers and caption. Styler prints index names on a second header row; the paper's tables
  have one, so the two rows are merged. The paper's `\\small` is not a Styler option and is inserted after
  `\\centering`.
"""

from __future__ import annotations

import math
import numbers

import pandas as pd

NA = "–"


def _has_index(df: pd.DataFrame) -> bool:
    return not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)


def _text(value: object, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return NA
    if isinstance(value, numbers.Real) and not isinstance(value, bool | numbers.Integral):
        return format(float(value), floatfmt)
    return str(value)


def _title_caption(df: pd.DataFrame, title: str | None, caption: str | None) -> tuple[str | None, str | None]:
    return (title if title is not None else df.attrs.get("title"),
            caption if caption is not None else df.attrs.get("caption"))


def to_markdown(df: pd.DataFrame, title: str | None = None, caption: str | None = None, *,
                floatfmt: str = ".2f", index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (pandas -> tabulate), with the title as a bold line and the caption below."""
    title, caption = _title_caption(df, title, caption)
    blocks = [f"**{title}**"] if title else []
    if df.empty:
        blocks.append("(no rows)")
    else:
        frame = df
        if index and _has_index(df):
            names = [n if n is not None else "" for n in df.index.names]
            frame = df.reset_index()
            frame.columns = [*names, *[str(c) for c in df.columns]]
            # blank a leading index value equal to the row above's (the last level always shows)
            levels = frame.columns[: df.index.nlevels - 1]
            keys = frame[list(levels)].astype(str)
            for i, level in enumerate(levels):
                repeated = (keys.iloc[:, : i + 1] == keys.iloc[:, : i + 1].shift()).all(axis=1)
                frame[level] = frame[level].astype(object).where(~repeated, "")
        text = frame.map(lambda v: _text(v, floatfmt).replace("|", "\\|").replace("\n", " "))
        blocks.append(text.to_markdown(index=False, tablefmt="github", disable_numparse=True))
    if caption:
        blocks.append(caption)
    return "\n\n".join(blocks) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "ρ": r"$\rho$", "Δ": r"$\Delta$", "×": r"$\times$", "–": "--", "−": "$-$",
                  "π̂": r"$\hat\pi$", "π": r"$\pi$", "≥": r"$\geq$", "≤": r"$\leq$"}


def latex_escape(text: str) -> str:
    """LaTeX's special characters escaped, then Unicode symbols as math (used for cells, headers and caption)."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for uni, tex in _LATEX_UNICODE.items():
        out = out.replace(uni, tex)
    return out


def to_latex(df: pd.DataFrame, caption: str | None = None, label: str | None = None, *,
             floatfmt: str = ".2f", index: bool = True) -> str:
    """A booktabs `table` environment (pandas Styler); the caption defaults to attrs' title and caption joined."""
    if caption is None:
        caption = ". ".join(s for s in (df.attrs.get("title"), df.attrs.get("caption")) if s) or None
    if df.empty:
        lines = [r"\begin{table}[t]", r"\centering", r"\small"]
        lines += [rf"\caption{{{latex_escape(caption)}}}"] if caption else []
        lines += [rf"\label{{{label}}}"] if label else []
        return "\n".join([*lines, "(no rows)", r"\end{table}"]) + "\n"
    frame = df if index and _has_index(df) else df.reset_index(drop=True)
    style = frame.style
    if not (index and _has_index(df)):
        style = style.hide(axis="index")
    style = (style.format(lambda v: latex_escape(_text(v, floatfmt)))
             .format_index(lambda v: latex_escape(_text(v, floatfmt)), axis=0)
             .format_index(lambda v: latex_escape(_text(v, floatfmt)), axis=1))
    n_index = frame.index.nlevels if index and _has_index(df) else 0
    tex = style.to_latex(
        column_format="l" * n_index + "r" * frame.shape[1], position="t", position_float="centering",
        hrules=True, label=label, caption=latex_escape(caption) if caption else None,
        sparse_index=True, multirow_align="naive",  # repeated index values blank, without the multirow package
        clines=None, environment="table")
    if frame.index.names and any(n is not None for n in frame.index.names) and n_index:
        tex = _merge_index_names(tex)
    return tex.replace("\\centering\n", "\\centering\n\\small\n", 1)


def _merge_index_names(tex: str) -> str:
    """Styler prints the index names on a second header row; fold them into the first (blank there), like the
    paper's tables, which have one header row."""
    lines = tex.split("\n")
    i = lines.index("\\toprule")
    head, names = lines[i + 1], lines[i + 2]
    head_cells = head.removesuffix(" \\\\").split(" & ")
    name_cells = names.removesuffix(" \\\\").split(" & ")
    if len(head_cells) == len(name_cells):
        merged = [n if n.strip() else h for h, n in zip(head_cells, name_cells)]
        lines[i + 1: i + 3] = [" & ".join(merged) + " \\\\"]
    return "\n".join(lines)


def to_html(df: pd.DataFrame, title: str | None = None, caption: str | None = None, *,
            floatfmt: str = ".2f", index: bool = True) -> str:
    """An HTML table (pandas Styler) with the title as its caption and the caption as a note below it."""
    title, caption = _title_caption(df, title, caption)
    if df.empty:
        body = "<p>(no rows)</p>"
    else:
        style = df.style.format(lambda v: _text(v, floatfmt), escape="html").format_index(escape="html", axis=0)
        style = style.format_index(escape="html", axis=1)
        if not (index and _has_index(df)):
            style = style.hide(axis="index")
        body = style.set_table_attributes('class="table"').to_html(doctype_html=False)
    from html import escape

    head = f"<h3>{escape(title)}</h3>\n" if title else ""
    note = f"<p class=\"caption\">{escape(caption)}</p>\n" if caption else ""
    return f"{head}{body}\n{note}"


def show(df: pd.DataFrame) -> None:
    """Display a table in a notebook as rendered Markdown (title, table, caption); print it elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        print(to_markdown(df))
        return
    if get_ipython() is None:
        print(to_markdown(df))
    else:
        display(Markdown(to_markdown(df)))
