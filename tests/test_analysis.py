"""The analysis package against the hand-made sweep of analysis_fixtures (numbers known by construction)."""

from __future__ import annotations

import math
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analysis_fixtures import base, final_top1, make_sweep
from matplotlib.figure import Figure

from analysis import (
    PUBLISHED,
    SweepLoadError,
    compare_published,
    compare_published_tidy,
    failures,
    load_sweep,
    method_name,
    paper_table,
    paper_table_tidy,
    plot_accuracy_curves,
    plot_per_class_accuracy,
    plot_prior_estimate,
    plot_runtime,
    raw_vs_adjusted_tidy,
    shots_table,
    shots_table_tidy,
    status_table,
    tables_in,
    to_html,
    to_latex,
    to_markdown,
    varying_fields,
)
from analysis.report import main as report_main

REPO = Path(__file__).resolve().parents[1]
STD2 = math.sqrt(4.5)  # sample std (ddof=1) of base − 1 and base + 2
C10 = "CIFAR-10-LT"


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("sweeps") / "fixture")


@pytest.fixture(scope="session")
def frames(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, epochs = load_sweep(sweep_dir)
    return runs, epochs


def cell(tidy: pd.DataFrame, method: str, rho: float, q: float) -> pd.Series:
    sel = tidy[(tidy["method"] == method) & (tidy["rho"] == rho) & (tidy["q"] == q)]
    assert len(sel) == 1, (method, rho, q, len(sel))
    return sel.iloc[0]


# --- loading ----------------------------------------------------------------------------------------------------
def test_load_shapes_and_sweep_column(frames):
    runs, epochs = frames
    assert len(runs) == 6 * 4 * 2 + 2 + 2 + 4
    assert set(runs["sweep"]) == {"fixture"} and set(epochs["sweep"]) == {"fixture"}
    assert set(runs["status"]) == {"finished", "failed", "running", "pending"}
    assert set(epochs["stage"]) == {"train", "estimate"}
    assert tables_in(runs) == ["CIFAR-10-LT", "CIFAR-100-LT", "CIFAR-100-LT-NU"]


def test_load_several_sweeps_and_uri(sweep_dir, tmp_path):
    other = make_sweep(tmp_path / "second", seeds=(3,), sweep="second")
    runs, epochs = load_sweep([sweep_dir, f"file://{other}"])
    assert set(runs["sweep"]) == {"fixture", "second"} and set(epochs["sweep"]) == {"fixture", "second"}
    tidy = paper_table_tidy(runs, C10)
    corr = cell(tidy, "CORR", 50.0, 0.3)
    values = [final_top1("CORR", 50.0, 0.3, s) for s in (1, 2, 3)]
    assert corr["n"] == 3
    assert corr["mean"] == pytest.approx(statistics.mean(values))
    assert corr["std"] == pytest.approx(statistics.stdev(values))


def test_load_fsspec_uri(sweep_dir):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for name in ("runs.parquet", "epochs.parquet"):
        fs.pipe(f"/mem-sweep/{name}", (sweep_dir / name).read_bytes())
    runs, _ = load_sweep("memory://mem-sweep")
    assert len(runs) == 56 and set(runs["sweep"]) == {"mem-sweep"}


def test_same_cell_in_two_folders_warns(sweep_dir, tmp_path):
    copy = shutil.copytree(sweep_dir, tmp_path / "copy")
    with pytest.warns(UserWarning, match="more than one sweep folder"):
        load_sweep([sweep_dir, copy])


def test_load_fills_optional_columns_and_casts_types(sweep_dir, tmp_path):
    # An older or pandas-typed file (no explicit schema: large_string, no wall_s) still loads, typed as the schema.
    old = shutil.copytree(sweep_dir, tmp_path / "old")
    df = pq.read_table(old / "runs.parquet").to_pandas().drop(columns=["wall_s"])
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), old / "runs.parquet")
    runs, _ = load_sweep(old)
    assert runs["wall_s"].isna().all() and len(runs) == 56
    assert cell(paper_table_tidy(runs, C10), "CORR", 50.0, 0.3)["mean"] == 70.5


def test_load_errors_name_file_and_columns(sweep_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SweepLoadError, match="runs.parquet: not found"):
        load_sweep(empty)
    with pytest.raises(SweepLoadError, match="no such sweep folder"):
        load_sweep(tmp_path / "absent")

    broken = shutil.copytree(sweep_dir, tmp_path / "broken")
    table = pq.read_table(broken / "runs.parquet").drop_columns(["status", "final_top1"])
    pq.write_table(table, broken / "runs.parquet")
    with pytest.raises(SweepLoadError) as err:
        load_sweep(broken)
    assert str(broken / "runs.parquet") in str(err.value)
    assert "'status'" in str(err.value) and "'final_top1'" in str(err.value)

    no_epochs = shutil.copytree(sweep_dir, tmp_path / "no_epochs")
    (no_epochs / "epochs.parquet").unlink()
    with pytest.raises(SweepLoadError, match="epochs.parquet: not found"):
        load_sweep(no_epochs)

    odd = shutil.copytree(sweep_dir, tmp_path / "odd")
    t = pq.read_table(odd / "runs.parquet")
    i = t.schema.get_field_index("status")
    pq.write_table(t.set_column(i, "status", pa.array(["done"] * len(t))), odd / "runs.parquet")
    with pytest.raises(SweepLoadError, match=r"unknown status value\(s\) \['done'\]"):
        load_sweep(odd)


# --- naming -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (("corr", False, False, None), "CORR"),
    (("corr", False, False, "disamb"), "CORR + Oracle-LA"),
    (("corr", False, False, "loss"), "CORR + Oracle-LA (loss)"),
    (("corr", False, False, "posthoc"), "CORR + Oracle-LA (post-hoc)"),
    (("corr", True, False, None), "CORR + RECORDS"),
    (("solar", False, False, None), "SoLar (w/ Mixup)"),
    (("corr", True, True, None), "CORR + RECORDS (w/ Mixup)"),
    (("corr", False, True, None), "CORR + Mixup"),
    (("corr", False, True, "loss"), "CORR + Oracle-LA (loss) (w/ Mixup)"),
    (("corr", False, False, float("nan")), "CORR"),
    (("proden", True, False, None), "PRODEN + RECORDS"),  # a registered method: its display name
    (("mystery", True, False, None), "mystery + RECORDS"),  # an unknown one keeps its name
])
def test_method_name(args, expected):
    assert method_name(*args) == expected


def test_paper_oracle_mode_chooses_the_plain_row():
    assert method_name("corr", False, False, "loss", paper_oracle_mode="loss") == "CORR + Oracle-LA"
    assert method_name("corr", False, False, "disamb", paper_oracle_mode="loss") == "CORR + Oracle-LA (disamb)"


# --- tables -------------------------------------------------------------------------------------------------------
def test_paper_table_hand_values(frames):
    runs, _ = frames
    tidy = paper_table_tidy(runs, C10)
    corr = cell(tidy, "CORR", 50.0, 0.3)  # seeds: 69 and 72
    assert list(corr["values"]) == [69.0, 72.0]
    assert corr["mean"] == 70.5 and corr["std"] == pytest.approx(2.1213203435596424) and corr["n"] == 2
    for method in ("CORR", "CORR + Oracle-LA", "CORR + RECORDS", "SoLar (w/ Mixup)", "CORR + RECORDS (w/ Mixup)"):
        c = cell(tidy, method, 100.0, 0.3)
        assert (c["mean"], c["n"]) == (base(method, 100.0, 0.3) + 0.5, 2)
        assert c["std"] == pytest.approx(STD2)

    table = paper_table(runs, C10)
    assert list(table.index) == ["CORR", "CORR + Oracle-LA", "CORR + RECORDS", "SoLar (w/ Mixup)",
                                 "CORR + RECORDS (w/ Mixup)", "CORR + Mixup", "CORR + Oracle-LA (loss)"]
    assert list(table.columns) == ["ρ=50 q=0.3", "ρ=50 q=0.5", "ρ=100 q=0.3", "ρ=100 q=0.5"]
    assert table.loc["CORR", "ρ=50 q=0.3"] == "70.50 ± 2.12 (n=2)"
    assert pd.isna(table.loc["CORR + Oracle-LA (loss)", "ρ=100 q=0.5"])  # no run in that cell
    assert "last epoch" in table.attrs["title"] and "ddof=1" in table.attrs["caption"]


def test_unfinished_cells_are_shown(frames):
    runs, _ = frames
    tidy = paper_table_tidy(runs, C10)
    # Every (method, cell) that has a run is a row of the tidy frame: 6 methods x 4 cells + Oracle-LA (loss).
    assert len(tidy) == 6 * 4 + 1
    one_failed = cell(tidy, "CORR + RECORDS", 100.0, 0.5)
    assert (one_failed["mean"], one_failed["n"], one_failed["n_failed"]) == (64.0, 1, 1)
    assert math.isnan(one_failed["std"]) and one_failed["cell"] == "64.00 (n=1; failed)"
    both_failed = cell(tidy, "SoLar (w/ Mixup)", 100.0, 0.5)
    assert both_failed["n"] == 0 and math.isnan(both_failed["mean"]) and both_failed["cell"] == "failed ×2"
    assert cell(tidy, "CORR + Mixup", 50.0, 0.5)["cell"] == "running 2/4, pending"
    assert cell(tidy, "CORR + RECORDS (w/ Mixup)", 100.0, 0.5)["cell"] == "68.00 (n=1; running 2/4)"


def test_best_epoch_table(frames):
    runs, _ = frames
    last, best = paper_table_tidy(runs, C10), paper_table_tidy(runs, C10, best=True)
    assert (best["mean"] - last["mean"]).dropna().eq(1.0).all()  # the fixture's best epoch is final + 1
    assert "selected on the test set" in paper_table(runs, C10, best=True).attrs["title"]
    with pytest.raises(ValueError, match="best=True"):
        paper_table_tidy(runs, C10, metric="many", best=True)


def test_published_comparison(frames):
    runs, _ = frames
    tidy = compare_published_tidy(runs, C10)
    corr = cell(tidy, "CORR", 50.0, 0.3)
    assert corr["published"] == 76.12 and corr["diff"] == pytest.approx(70.5 - 76.12)
    assert corr["cell"] == "70.50 ± 2.12 (n=2) vs 76.12 (Δ -5.62)"
    assert math.isnan(cell(tidy, "CORR + Mixup", 50.0, 0.3)["published"])
    assert cell(tidy, "SoLar (w/ Mixup)", 100.0, 0.5)["cell"] == "failed ×2 vs 70.63"

    c100 = cell(compare_published_tidy(runs, "CIFAR-100-LT"), "CORR + RECORDS", 100.0, 0.05)
    assert c100["published"] == 40.59 and c100["diff"] == pytest.approx(75.5 - 40.59)

    nu = compare_published(runs, "CIFAR-100-LT-NU")
    assert nu.attrs["tidy"]["published"].isna().all()
    assert "no published table for CIFAR-100-LT-NU" in nu.attrs["caption"]


def test_published_comparison_warns_when_settings_differ_from_the_paper(frames):
    runs, _ = frames
    paper_like = runs.assign(arch="resnet18", epochs=800, img_max=None, test_per_class=None, batch_size=256)
    assert "Caution" not in compare_published(paper_like, C10).attrs["caption"]
    small = paper_like.assign(arch="small-cnn", epochs=4)
    caption = compare_published(small, C10).attrs["caption"]
    assert "differ from the paper's settings (arch=small-cnn, epochs=4)" in caption

    # With 'loss' as the paper's Oracle-LA mode, the loss runs take the README row and the disamb runs lose it.
    loss = compare_published_tidy(runs, C10, paper_oracle_mode="loss")
    assert cell(loss, "CORR + Oracle-LA", 50.0, 0.3)["published"] == 36.27
    assert cell(loss, "CORR + Oracle-LA", 50.0, 0.3)["mean"] == base("CORR + Oracle-LA (loss)", 50.0, 0.3) + 0.5
    assert math.isnan(cell(loss, "CORR + Oracle-LA (disamb)", 50.0, 0.3)["published"])


def test_published_data():
    assert len(PUBLISHED) == 2 * 5 * 6
    assert set(PUBLISHED.columns) == {"dataset_table", "method", "rho", "q", "top1"}
    p = PUBLISHED
    row = p[(p["dataset_table"] == "CIFAR-100-LT") & (p["method"] == "CORR + RECORDS (w/ Mixup)")
            & (p["rho"] == 100) & (p["q"] == 0.07)]
    assert row["top1"].tolist() == [44.73]


def test_shots_and_raw_vs_adjusted(frames):
    runs, _ = frames
    shots = shots_table_tidy(runs, C10)
    corr = shots[(shots["method"] == "CORR") & (shots["rho"] == 50.0) & (shots["q"] == 0.3)]
    assert corr.set_index("shot")["mean"].to_dict() == {"many": 80.5, "medium": 70.5, "few": 60.5}
    table = shots_table(runs, C10)
    assert table.index.names == ["method", "shot"] and table.loc[("CORR", "few"), "ρ=50 q=0.3"].startswith("60.50")

    raw = raw_vs_adjusted_tidy(runs, C10)
    assert set(raw["method"]) == {"CORR + RECORDS", "CORR + RECORDS (w/ Mixup)"}
    gain = raw[(raw["method"] == "CORR + RECORDS") & (raw["rho"] == 50.0) & (raw["q"] == 0.3)
               & raw["kind"].str.startswith("gain")].iloc[0]
    assert gain["mean"] == 4.5 and gain["std"] == pytest.approx(math.sqrt(0.5))  # gaps 5 and 4


def test_varying_fields_split_rows(frames):
    runs, _ = frames
    assert varying_fields(runs[runs["dataset"] == "cifar10"]) == []  # SoLar's own fields do not count
    longer = runs[(runs["method"] == "corr") & ~runs["records"] & ~runs["mixup"] & runs["oracle_la"].isna()
                  & (runs["dataset"] == "cifar10")].copy()
    longer["epochs"] = 8
    longer["config_hash"] = longer["config_hash"] + "-e8"
    both = pd.concat([runs, longer], ignore_index=True)
    table = paper_table(both, C10)
    assert table.index.names == ["method", "epochs"]
    assert ("CORR", "4") in table.index and ("CORR", "8") in table.index
    assert ("CORR + RECORDS", "4") in table.index and ("CORR + RECORDS", "8") not in table.index
    assert "epochs" in table.attrs["caption"]


def test_status_and_failures(frames):
    runs, _ = frames
    st = status_table(runs)
    assert st.loc[(C10, "SoLar (w/ Mixup)"), "failed"] == 2 and st["total"].sum() == len(runs)
    fails = failures(runs)
    assert len(fails) == 3 and set(fails["error"]) == {"RuntimeError: CUDA out of memory"}


def _cells_of(md: str) -> list[list[str]]:
    """A Markdown table's rows as lists of stripped cells (tabulate pads columns to a common width)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines() if line.startswith("|")]


def test_renderers(frames):
    runs, _ = frames
    md = to_markdown(paper_table(runs, C10))
    assert md.startswith("**CIFAR-10-LT: test top1 (%) at the last epoch**")
    rows = _cells_of(md)
    assert rows[0] == ["method", "ρ=50 q=0.3", "ρ=50 q=0.5", "ρ=100 q=0.3", "ρ=100 q=0.5"]
    assert ["CORR", "70.50 ± 2.12 (n=2)"] == rows[2][:2] and any("–" in r for r in rows)
    assert len({len(line) for line in md.splitlines() if line.startswith("|")}) == 1  # aligned columns
    shots = _cells_of(to_markdown(shots_table(runs, C10)))
    assert shots[2][:2] == ["CORR", "many"] and shots[3][:2] == ["", "medium"]  # repeated index values blanked
    tex = to_latex(paper_table(runs, C10), label="tab:c10")
    assert r"\toprule" in tex and r"70.50 $\pm$ 2.12 (n=2)" in tex and r"\label{tab:c10}" in tex
    assert r"(\%)" in tex and r"$\rho$=50 q=0.3" in tex
    # one header row (index names folded in), repeated index values blanked, booktabs rules around the body
    shots_tex = to_latex(shots_table(runs, C10)).splitlines()
    top = shots_tex.index(r"\toprule")
    assert shots_tex[top + 1].startswith("method & shot & ") and shots_tex[top + 2] == r"\midrule"
    assert shots_tex[top + 4].startswith(" & medium & ")
    html = to_html(paper_table(runs, C10))
    assert "<h3>CIFAR-10-LT: test top1 (%) at the last epoch</h3>" in html and "70.50 ± 2.12 (n=2)" in html


# --- figures, report, notebook -------------------------------------------------------------------------------------
def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(frames, tmp_path):
    runs, epochs = frames
    made = {
        "acc": plot_accuracy_curves(runs, epochs, C10, save=tmp_path / "acc.png"),
        "prior": plot_prior_estimate(runs, epochs, dataset_table="CIFAR-100-LT-NU", save=tmp_path / "prior.png"),
        "per_class": plot_per_class_accuracy(runs, epochs, C10, save=tmp_path / "per_class.png"),
        "runtime": plot_runtime(runs, epochs, save=tmp_path / "runtime.png"),
    }
    for name, fig in made.items():
        assert isinstance(fig, Figure)
        assert _is_png(tmp_path / f"{name}.png"), name
    # titles say which runs are drawn, not which filter was applied
    shown = runs[(runs["dataset"] == "cifar10") & runs["status"].isin(["finished", "running"])]
    counts = shown["status"].value_counts()
    title = made["acc"]._suptitle.get_text()
    assert "statuses" not in title and title.endswith(
        f"of {len(shown)} runs: {counts['finished']} finished, {counts['running']} running (epochs so far)"), title
    finished = (runs["dataset"] == "cifar10") & (runs["status"] == "finished")
    assert made["per_class"]._suptitle.get_text().endswith(f", {finished.sum()} finished runs")
    with pytest.raises(ValueError, match="prior_est"):
        plot_prior_estimate(runs[~runs["records"]], epochs, dataset_table="CIFAR-100-LT-NU")


@pytest.fixture(scope="module")
def best_report(sweep_dir, tmp_path_factory) -> tuple[Path, str]:
    """The report command's output folder on the fixture sweep (--best), and what it printed."""
    import contextlib
    import io

    out, printed = tmp_path_factory.mktemp("report") / "report", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert report_main([str(sweep_dir), "--out", str(out), "--best"]) == 0
    return out, printed.getvalue()


def test_report_command(best_report):
    out, printed = best_report
    for name in ("report.html", "tables.md", "tables.tex", "README.md", "runtime.png", "prior-cifar-10-lt.png"):
        assert (out / name).exists() and f"wrote {out / name}" in printed
    assert all(_is_png(p) for p in out.glob("*.png")) and len(list(out.glob("*.png"))) == 10
    md = (out / "tables.md").read_text()
    assert "selected on the test set" in md and "failed ×2" in md and "no published table for CIFAR-100-LT-NU" in md


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome"))), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on PATH (chromium, chromium-browser, google-chrome); "
                    ".ci/run installs it with apt where it can")
def test_report_html_renders_in_a_headless_browser(best_report, tmp_path):
    import base64

    from PIL import Image

    out, _ = best_report
    page = (out / "report.html").as_uri()
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "<h1>Sweep report</h1>" in dom and "CUDA out of memory" in dom  # the page loaded, failures shown
    tables = (out / "tables.md").read_text().count("\n|---")  # one separator row per Markdown table
    assert dom.count("<table") == tables >= 10  # every table of the report, as a table element
    figures = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', dom)
    assert sorted(alt for alt, _ in figures) == sorted(p.stem for p in out.glob("*.png"))  # every figure, inline
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in figures)
    shot = tmp_path / "shot.png"
    subprocess.run([*browser, "--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120)
    with Image.open(shot) as image:  # something was drawn: text and table rules, not a blank page
        assert image.size == (1280, 1600) and len(image.convert("L").getcolors(256 * 256) or []) > 20


def test_report_bad_input_exits_cleanly(sweep_dir, tmp_path):
    broken = shutil.copytree(sweep_dir, tmp_path / "broken")
    pq.write_table(pq.read_table(broken / "runs.parquet").drop_columns(["seed"]), broken / "runs.parquet")
    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(broken), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "runs.parquet" in proc.stderr and "'seed'" in proc.stderr and "Traceback" not in proc.stderr


def test_notebook_is_clean_and_executes(sweep_dir, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = REPO / "analysis" / "paper_tables.ipynb"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # committed without outputs
    assert 'SWEEP_DIR = os.environ.get("RECORDS_SWEEP_DIR", "sweeps/quick")' in code[0].source

    monkeypatch.setenv("RECORDS_SWEEP_DIR", str(sweep_dir))
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 10
    assert any("CORR + RECORDS" in o.get("data", {}).get("text/markdown", "") for o in outputs)
