"""Markdown and LaTeX text of a table frame, without tabulate or jinja2 (not project dependencies).

Index levels become the first columns; NaN renders as '–'; floats with `floatfmt`. The title and caption
come from the arguments or else from `df.attrs` (set by the functions in analysis.tables).
"""

from __future__ import annotations

import math
import numbers

import pandas as pd


def _has_index(df: pd.DataFrame) -> bool:
    return not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)


def _text(value: object, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, numbers.Real) and not isinstance(value, bool | numbers.Integral):
        return format(float(value), floatfmt)
    return str(value)


def _cells(df: pd.DataFrame, floatfmt: str, index: bool) -> tuple[list[str], list[list[str]]]:
    """Header and body as strings; repeated leading index values are blanked, like pandas prints them."""
    frame = df
    n_index = 0
    if index and _has_index(df):
        n_index = df.index.nlevels
        names = [n if n is not None else "" for n in df.index.names]
        frame = df.reset_index()
        frame.columns = [*names, *[str(c) for c in df.columns]]
    header = [str(c) for c in frame.columns]
    body, previous = [], None
    for row in frame.itertuples(index=False):
        texts = [_text(v, floatfmt) for v in row]
        shown = list(texts)
        if previous is not None and n_index > 1:
            for i in range(n_index - 1):  # the last level always shows
                if texts[: i + 1] != previous[: i + 1]:
                    break
                shown[i] = ""
        previous = texts
        body.append(shown)
    return header, body


def to_markdown(df: pd.DataFrame, title: str | None = None, caption: str | None = None, *,
                floatfmt: str = ".2f", index: bool = True) -> str:
    """A GitHub-flavoured Markdown table, with the title as a heading line and the caption below."""
    title = title if title is not None else df.attrs.get("title")
    caption = caption if caption is not None else df.attrs.get("caption")
    blocks = [f"**{title}**"] if title else []
    if df.empty:
        blocks.append("(no rows)")
    else:
        header, body = _cells(df, floatfmt, index)

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

        blocks.append("\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, body)]))
    if caption:
        blocks.append(caption)
    return "\n\n".join(blocks) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "ρ": r"$\rho$", "Δ": r"$\Delta$", "×": r"$\times$", "–": "--", "−": "$-$",
                  "π̂": r"$\hat\pi$", "π": r"$\pi$", "≥": r"$\geq$", "≤": r"$\leq$"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for uni, tex in _LATEX_UNICODE.items():
        out = out.replace(uni, tex)
    return out


def to_latex(df: pd.DataFrame, caption: str | None = None, label: str | None = None, *,
             floatfmt: str = ".2f", index: bool = True) -> str:
    """A booktabs `table` environment; the caption defaults to attrs' title and caption joined."""
    if caption is None:
        caption = ". ".join(s for s in (df.attrs.get("title"), df.attrs.get("caption")) if s) or None
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    if df.empty:
        lines.append(r"(no rows)")
    else:
        header, body = _cells(df, floatfmt, index)
        n_index = df.index.nlevels if index and _has_index(df) else 0
        spec = "l" * n_index + "r" * (len(header) - n_index)
        lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                  " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


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
