"""Tables, figures and a report from a sweep's runs.parquet / epochs.parquet (see each module's docstring).

    from analysis import load_sweep, paper_table, to_markdown
    runs, epochs = load_sweep("sweeps/quick")
    print(to_markdown(paper_table(runs, "CIFAR-10-LT")))
"""

from analysis.load import Sweep, SweepLoadError, load_sweep
from analysis.methods import PAPER_METHODS, dataset_table, method_name, order_methods
from analysis.plots import plot_accuracy_curves, plot_per_class_accuracy, plot_prior_estimate, plot_runtime
from analysis.published import PUBLISHED, published
from analysis.render import show, to_html, to_latex, to_markdown
from analysis.tables import (
    annotate,
    cell_stats,
    compare_published,
    compare_published_tidy,
    failures,
    filter_runs,
    paper_table,
    paper_table_tidy,
    raw_vs_adjusted,
    raw_vs_adjusted_tidy,
    shots_table,
    shots_table_tidy,
    status_table,
    tables_in,
    varying_fields,
)

__all__ = [
    "PAPER_METHODS", "PUBLISHED", "Sweep", "SweepLoadError", "annotate", "cell_stats", "compare_published",
    "compare_published_tidy", "dataset_table", "failures", "filter_runs", "load_sweep", "method_name",
    "order_methods", "paper_table", "paper_table_tidy", "plot_accuracy_curves", "plot_per_class_accuracy",
    "plot_prior_estimate", "plot_runtime", "published", "raw_vs_adjusted", "raw_vs_adjusted_tidy", "shots_table",
    "shots_table_tidy", "show", "status_table", "tables_in", "to_html", "to_latex", "to_markdown", "varying_fields",
    "write_report",
]


def __getattr__(name: str):
    # Imported lazily: importing analysis.report here would make `python -m analysis.report` warn that the
    # module was already in sys.modules when run as __main__.
    if name == "write_report":
        from analysis.report import write_report

        return write_report
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
