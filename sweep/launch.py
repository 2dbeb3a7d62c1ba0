"""From validated cells to a finished sweep: settings, data check, Ray start, resource check, Tune, Parquet."""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from trainables.config import ConfigError, TrialConfig

from .cluster import ClusterError, check_shared_storage, check_storage, connect, probe_address, start_local
from .lease import LeaseError, SweepLease
from .results import GridMismatch, SweepStore, finished_hashes, training_counts, write_results, write_sweep_manifest
from .tune import ResourceError, SweepSettings, check_fits, ray_runtime_env, run_cells


class LaunchError(ValueError):
    """A sweep cannot start; the message names the setting and the value."""


def settings_from(args, data_root: str, saved: dict) -> SweepSettings:
    def pick(name: str, default):
        value = getattr(args, name, None)
        return value if value is not None else saved.get(name, default)

    settings = SweepSettings(
        data_root=data_root,
        workers_per_trial=pick("workers_per_trial", 1),
        cpus_per_trial=float(pick("cpus_per_trial", 1.0)),
        gpus_per_trial=float(pick("gpus_per_trial", 0.0)),
        loader_workers=pick("loader_workers", None),
        max_failures=pick("max_failures", 2),
        device="cuda" if float(pick("gpus_per_trial", 0.0)) > 0 else "cpu",
    )
    if settings.loader_workers is not None and settings.loader_workers < 0:
        raise LaunchError(f"--loader-workers={settings.loader_workers}: must be >= 0")
    if settings.max_failures < -1:
        raise LaunchError(f"--max-failures={settings.max_failures}: must be >= -1 (-1 = retry forever)")
    if getattr(args, "max_concurrent", None) is not None and args.max_concurrent < 1:
        raise LaunchError(f"--max-concurrent={args.max_concurrent}: must be >= 1")
    try:
        check_fits(settings, [{"CPU": 1e9, "GPU": 1e9}])  # the per-trial rules alone, before any cluster
    except ResourceError as err:
        raise LaunchError(str(err)) from None
    return settings


def check_cells_against_settings(cells: list[TrialConfig], settings: SweepSettings) -> None:
    for cfg in cells:
        if cfg.batch_size % settings.workers_per_trial:
            raise LaunchError(f"batch_size={cfg.batch_size} of cell {cfg.describe()} does not split evenly over "
                              f"--workers-per-trial={settings.workers_per_trial}")
        try:
            cfg.check_batch_fits(sum(training_counts(cfg)))
        except ConfigError as err:
            raise LaunchError(str(err)) from None


def check_data(cells: list[TrialConfig], data_root: str) -> None:
    """Open each dataset's test split once: a missing or malformed root fails here, before Ray starts."""
    from trainables.data.sources import DataError, load_split

    for dataset in sorted({c.dataset for c in cells}):
        try:
            split = load_split(dataset, "test", data_root)
        except DataError as err:
            raise LaunchError(str(err)) from None
        if any(c.nu for c in cells if c.dataset == dataset) and split.coarse_labels is None:
            raise LaunchError(f"NU cells need CIFAR-100 coarse labels, which {split.source} does not have")


def start_ray(args, ship_code: bool):
    import ray

    runtime_env = ray_runtime_env(ship_code)
    port = getattr(args, "metrics_export_port", None)
    if args.address and port is not None:
        raise LaunchError(f"--metrics-export-port={port} sets the port of a local Ray; on a cluster give it to "
                          "`ray start --metrics-export-port` on each node")
    try:
        if args.address:
            ctx = connect(args.address, runtime_env=runtime_env, log_to_driver=args.worker_logs)
        else:
            ctx = start_local(num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                              include_dashboard=not args.no_dashboard, dashboard_host="127.0.0.1",
                              dashboard_port=args.dashboard_port, object_store_memory=args.object_store_mb * 2**20,
                              runtime_env=runtime_env, log_to_driver=args.worker_logs, _metrics_export_port=port)
    except ClusterError as err:
        raise LaunchError(str(err)) from None
    if port is not None:
        print(f"cell metrics (Prometheus text): http://127.0.0.1:{port}/metrics", flush=True)
    url = getattr(ctx, "dashboard_url", None)
    if url:
        token = Path.home() / ".ray" / "auth_token"
        how = (f"paste the token from {token} (or `ray get-auth-token`) when it asks"
               if os.environ.get("RAY_AUTH_MODE", "token") != "disabled" else "no authentication")
        print(f"Ray dashboard: http://{url}  ({how})", flush=True)
    return ray


def launch(args, cells: list[TrialConfig], name: str, data_root: str, saved: dict) -> int:
    settings = settings_from(args, data_root, saved)
    check_cells_against_settings(cells, settings)
    check_data(cells, data_root)

    store = SweepStore(args.storage, name)
    try:
        if args.address:
            probe_address(args.address)  # before anything is written: a wrong address changes nothing
        check_storage(store)
    except ClusterError as err:
        raise LaunchError(str(err)) from None
    lease = SweepLease(store)
    try:
        lease.acquire()
    except LeaseError as err:
        raise LaunchError(str(err)) from None
    try:
        return _launch_held(args, cells, name, store, settings)
    finally:
        lease.release()


def _launch_held(args, cells: list[TrialConfig], name: str, store: SweepStore, settings: SweepSettings) -> int:
    """The launch proper, while this run holds the sweep's lease."""
    try:
        manifest = write_sweep_manifest(store, cells, asdict(settings), extend=getattr(args, "extend", False))
    except GridMismatch as err:
        raise LaunchError(str(err)) from None
    manifest_cells = [TrialConfig.from_dict(c) for c in manifest["cells"]]
    done = finished_hashes(store, cells)
    todo = [c for c in cells if c.config_hash not in done]
    print(f"sweep {name} at {store.uri}: {len(cells)} cells, {len(done)} already finished, {len(todo)} to run",
          flush=True)
    if todo:
        ray = start_ray(args, ship_code=bool(args.address))
        try:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            try:
                check_shared_storage(store, alive)
            except ClusterError as err:
                raise LaunchError(str(err)) from None
            nodes = [n["Resources"] for n in alive]
            try:
                fitting = check_fits(settings, nodes)
            except ResourceError as err:
                raise LaunchError(str(err)) from None
            max_concurrent = fitting if args.max_concurrent is None else min(args.max_concurrent, fitting)
            if args.max_concurrent is not None and args.max_concurrent > fitting:
                print(f"note: --max-concurrent={args.max_concurrent} but only {fitting} cells fit at once",
                      file=sys.stderr)
            print(f"{max_concurrent} cell(s) at a time, each {settings.workers_per_trial} worker(s) x "
                  f"{settings.cpus_per_worker:g} CPU / {settings.gpus_per_worker:g} GPU", flush=True)
            run_cells(store, todo, settings, max_concurrent, log_to=getattr(args, "log_to", ("tensorboard",)))
        finally:
            ray.shutdown()
    runs, epochs = write_results(store, manifest_cells)
    mine = {c.config_hash for c in cells}
    status = Counter(s for h, s in zip(runs.column("config_hash").to_pylist(), runs.column("status").to_pylist())
                     if h in mine)
    print(f"results: {store.uri}/runs.parquet ({runs.num_rows} cells), {store.uri}/epochs.parquet "
          f"({epochs.num_rows} epoch rows)")
    print("status: " + ", ".join(f"{k} {v}" for k, v in sorted(status.items())), flush=True)
    if status.get("failed"):
        failed = [(lab, err) for h, lab, s, err in zip(runs.column("config_hash").to_pylist(),
                                                       runs.column("label").to_pylist(),
                                                       runs.column("status").to_pylist(),
                                                       runs.column("error").to_pylist()) if h in mine and s == "failed"]
        for label, err in failed:
            last = (err or "").strip().splitlines()[-1:] or ["?"]
            print(f"  failed: {label}: {last[0]}", file=sys.stderr)
    unfinished = len(cells) - status.get("finished", 0)
    if unfinished:
        print(f"{unfinished} cell(s) not finished; run again with --resume --name {name} --storage {args.storage} "
              "to continue them", file=sys.stderr)
        return 1
    return 0
