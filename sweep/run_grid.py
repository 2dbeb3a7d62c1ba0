"""Run a grid of LT-PLL trials on Ray: `python sweep/run_grid.py --preset quick`.

On a first run without a data root, the CIFAR the grid needs is downloaded into ./data (once, checked) before
Ray starts. Every cell of the grid is validated before Ray starts; `--dry-run` lists the cells and their cost and starts
nothing. Results land in STORAGE/NAME/runs.parquet and epochs.parquet. Re-running the same command skips the
finished cells; `--resume --name NAME` continues an interrupted sweep from its own saved grid.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Run as a script (`python sweep/run_grid.py`), Python puts sweep/ itself first on sys.path, where our module
# names (schema, results, tune) could shadow other packages' imports; put the repository root there instead. The
# console command `records-sweep` (pyproject.toml) imports this module normally and needs none of it.
if __name__ == "__main__":
    _HERE = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    sys.path.insert(0, str(_HERE.parent))

from sweep.grids import PRESETS, GridError, describe_cells, load_grid_file, parse_seeds, parse_set, variants  # noqa: E402

DEFAULT_DATA_ROOTS = ("./data", "../shared/data")
DOWNLOAD_ROOT = "./data"  # where a first run puts the CIFAR it downloads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python sweep/run_grid.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("the grid")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="named grid: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    g.add_argument("--grid-file", help="a YAML or TOML grid (blocks/base/seeds, or extends: PRESET plus set:)")
    g.add_argument("--seeds", help="training seeds, comma-separated (default: the grid's, 123)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=V[,V...]",
                   help="narrow an axis to values it has (--set q=0.3,0.5 --set records=true) or override a field "
                        "for every cell (--set epochs=5); repeatable; variant names: " + ", ".join(variants()))
    g.add_argument("--dry-run", action="store_true", help="print the cells, their count and cost; start nothing")
    g = p.add_argument_group("where")
    g.add_argument("--storage", default="./sweeps", help="sweeps folder: a path or any URI pyarrow opens")
    g.add_argument("--name", help="sweep name (default: the preset or grid name)")
    g.add_argument("--data-root", default=None,
                   help="CIFAR data root (torchvision pickles, or cifar10|cifar100/{train,test}.parquet), or "
                        "'synthetic'; default: $RECORDS_DATA_ROOT, else the first of "
                        + ", ".join(DEFAULT_DATA_ROOTS) + " that exists")
    g.add_argument("--resume", action="store_true",
                   help="continue the sweep STORAGE/NAME with its saved grid and settings")
    g.add_argument("--data-mirror", default=None, metavar="URL_OR_PATH",
                   help="fetch torchvision's CIFAR archives from this base URL or folder instead of the official "
                        "site (default: $RECORDS_DATA_MIRROR)")
    g.add_argument("--download-only", action="store_true",
                   help="download the CIFAR the grid needs into the data root (default " + DOWNLOAD_ROOT
                        + "), then exit")
    g.add_argument("--extend", action="store_true",
                   help="add this grid's cells to the existing sweep STORAGE/NAME (without it a different grid under "
                        "an existing name is refused)")
    g.add_argument("--log-to", default=None, metavar="TRACKER[,TRACKER]",
                   help="experiment trackers, through Ray Tune's logger callbacks: any of tensorboard, mlflow, wandb "
                        "(comma-separated), or none; default: tensorboard. MLflow writes STORAGE/NAME/mlflow.db "
                        "(or $MLFLOW_TRACKING_URI); W&B runs offline into STORAGE/NAME/wandb unless WANDB_MODE is set")
    g = p.add_argument_group("resources")
    g.add_argument("--address", help="an existing Ray cluster ('auto' or host:port); default: start a local one")
    g.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    g.add_argument("--num-gpus", type=int, help="GPUs of the local Ray (default: all)")
    g.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs per cell, split over its workers "
                   "(default 1)")
    g.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per cell, fractions allowed to pack cells on a GPU (default 0)")
    g.add_argument("--workers-per-trial", type=int, default=None, help="DDP workers per cell (default 1)")
    g.add_argument("--max-concurrent", type=int, help="cells at once (default: as many as fit)")
    g.add_argument("--loader-workers", type=int, help="DataLoader processes per worker of augment=pil cells "
                   "(default: CPUs-1); augment=tensor cells use none")
    g.add_argument("--max-failures", type=int, default=None, help="restarts of a cell from its checkpoint (2)")
    g.add_argument("--object-store-mb", type=int, default=256, help="object store of the local Ray, MiB")
    g.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")
    g.add_argument("--dashboard-port", type=int, default=8265)
    g.add_argument("--metrics-export-port", type=int, default=None,
                   help="port where the local Ray's node serves its metrics, the cells' live epoch/top-1/samples per "
                        "s included, in Prometheus text format (default: a free port Ray picks)")
    g.add_argument("--worker-logs", action="store_true", help="forward the workers' logs to this terminal")
    return p


def resolve_data_root(arg: str | None) -> tuple[str, bool]:
    """(data root, whether missing CIFAR may be downloaded into it): only the default ./data is ours to fill."""
    if arg:
        return (arg if arg == "synthetic" else str(Path(arg).expanduser().resolve())), False
    env = os.environ.get("RECORDS_DATA_ROOT")
    if env:
        return str(Path(env).expanduser().resolve()), False
    for candidate in DEFAULT_DATA_ROOTS:
        if Path(candidate).is_dir():
            return str(Path(candidate).resolve()), Path(candidate) == Path(DOWNLOAD_ROOT)
    return str(Path(DOWNLOAD_ROOT).resolve()), True


def ensure_data(datasets: set[str], data_root: str, mirror: str | None) -> None:
    """Download each dataset that data_root lacks in any layout, before Ray starts (a GridError says how else)."""
    from trainables.data.download import ARCHIVES, MIRROR_ENV, DownloadError, download_cifar, source_of
    from trainables.data.sources import DataError, load_split

    for dataset in sorted(datasets):
        try:
            load_split(dataset, "test", data_root)
            continue
        except DataError:
            pass
        mirror = mirror or os.environ.get(MIRROR_ENV) or None
        print(f"downloading {dataset} from {source_of(ARCHIVES[dataset], mirror)} into {data_root}", flush=True)
        try:
            download_cifar(dataset, data_root, mirror=mirror)
        except DownloadError as err:
            raise GridError(
                f"could not download {dataset} ({err}); provide CIFAR instead with --data-root DIR, or "
                f"RECORDS_DATA_ROOT=DIR, or Parquet files in the Hub layout (DIR/{dataset}/{{train,test}}.parquet); "
                f"a cluster without internet can name a copy of the archives with --data-mirror or {MIRROR_ENV}"
            ) from None


def grid_from_args(args):
    if bool(args.preset) == bool(args.grid_file):
        raise GridError("choose exactly one of --preset and --grid-file")
    grid = PRESETS[args.preset] if args.preset else load_grid_file(args.grid_file)
    if args.seeds:
        grid = grid.with_seeds(parse_seeds(args.seeds))
    for expr in args.set:
        grid = grid.with_override(*parse_set(expr))
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from sweep.results import SweepStore, grid_difference, read_sweep_manifest
    from sweep.trackers import DEFAULT_LOG_TO, parse_log_to
    from trainables.config import TrialConfig

    try:
        args.log_to = parse_log_to(args.log_to if args.log_to is not None else DEFAULT_LOG_TO)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    try:
        if args.resume:
            if not args.name:
                raise GridError("--resume needs --name (the sweep folder under --storage)")
            store = SweepStore(args.storage, args.name)
            manifest = read_sweep_manifest(store)
            cells = [TrialConfig.from_dict(c) for c in manifest["cells"]]
            if args.preset or args.grid_file or args.set or args.seeds:  # accepted when it names the saved grid
                diff = grid_difference(manifest["cells"], grid_from_args(args).cells())
                if diff:
                    raise GridError(f"--resume: the grid given differs from the one saved in {store.uri}: {diff}. "
                                    "Drop --preset/--grid-file/--set/--seeds to resume the saved grid, or re-run "
                                    "without --resume, with --extend, to add cells to it")
            saved = manifest.get("settings", {})
            name = args.name
        else:
            grid = grid_from_args(args)
            cells = grid.cells()
            name = args.name or grid.name
            saved = {}
    except (GridError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from sweep.launch import LaunchError, check_cells_against_settings, launch, settings_from

    if args.dry_run:
        # The per-trial settings are checked here too, so a dry run that passes is a launch that starts (the data
        # root and the cluster's size are checked at launch: a dry run needs neither).
        try:
            check_cells_against_settings(cells, settings_from(args, args.data_root or "", saved))
        except LaunchError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(describe_cells(cells))
        return 0

    try:
        if args.resume and not args.data_root:
            data_root, may_download = saved.get("data_root"), False
        else:
            data_root, may_download = resolve_data_root(args.data_root)
        datasets = {c.dataset for c in cells}
        if args.download_only:
            if data_root == "synthetic":
                raise GridError("--download-only with --data-root synthetic: there is nothing to download")
            ensure_data(datasets, data_root, args.data_mirror)
            print(f"data ready in {data_root}")
            return 0
        if may_download:
            ensure_data(datasets, data_root, args.data_mirror)
        return launch(args, cells, name, data_root, saved)
    except (GridError, LaunchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
