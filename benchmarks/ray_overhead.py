"""What Ray costs: the same small grid through `sweep/run_grid.py` and as plain sequential single-process runs.

    python benchmarks/ray_overhead.py                 # a 2-cell grid of ~1-minute trials, both ways
    python benchmarks/ray_overhead.py --quick-memory  # also the `quick` preset's peak memory, all processes

Prints both wall times and their ratio, Ray's start-up time (ray.init to a usable cluster), and the peak memory of
all processes of the sweep together (sum of RSS, and of PSS, which counts shared pages once), sampled every 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from procmem import run_monitored  # noqa: E402

from sweep.grids import PRESETS, parse_set  # noqa: E402


def monitored(cmd: list[str], env: dict | None = None) -> tuple[float, float, float, int]:
    """Run `cmd` from the repository root; (wall s, peak RSS sum GiB, peak PSS sum GiB, exit code). Its output
    goes to a log file (a pipe nobody reads would fill and stall it), whose tail is printed on failure."""
    with tempfile.TemporaryFile("w+") as log:
        wall, rss, pss, rc = run_monitored(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if rc:
            log.seek(0)
            print(log.read()[-3000:], file=sys.stderr)
    return wall, rss, pss, rc


def ray_startup_s() -> float:
    code = ("import time; t=time.perf_counter(); import ray; "
            "ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128*2**20, log_to_driver=False); "
            "ray.cluster_resources(); print(time.perf_counter()-t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("RECORDS_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--epochs", type=int, default=4, help="epochs per cell (each ~15-20 s on 2 cores)")
    p.add_argument("--quick-memory", action="store_true", help="also run the quick preset and report its peak")
    args = p.parse_args()

    overrides = ["variant=corr,records", f"epochs={args.epochs}"]  # the run_grid.py --set flags, parsed as it does
    sets = [flag for expr in overrides for flag in ("--set", expr)]
    grid = PRESETS["quick"]
    for expr in overrides:
        grid = grid.with_override(*parse_set(expr))
    cells = grid.cells()
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
    print(f"grid: {len(cells)} cells of the quick preset, {args.epochs} epochs each; data {args.data_root}",
          flush=True)

    startup = ray_startup_s()
    print(f"Ray start-up (import + ray.init, local, 2 CPUs): {startup:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        seq_wall = 0.0
        seq_peak = 0.0
        for i, cfg in enumerate(cells):
            cmd = [sys.executable, "-m", "trainables.train", "--dataset", cfg.dataset, "--rho", str(cfg.rho),
                   "--q", str(cfg.q), "--arch", cfg.arch, "--epochs", str(cfg.epochs), "--batch-size",
                   str(cfg.batch_size), "--img-max", str(cfg.img_max), "--test-per-class", str(cfg.test_per_class),
                   "--data-root", args.data_root, "--out", f"{tmp}/run{i}", "--quiet",
                   # the same split of the 2 CPUs as a Ray cell with --cpus-per-trial 2: one loader, one torch thread
                   "--num-workers", "1", "--threads", "1"]
            if cfg.records:
                cmd.append("--records")
            wall, rss, pss, rc = monitored(cmd)
            if rc:
                raise SystemExit(f"plain run {i} failed")
            seq_wall += wall
            seq_peak = max(seq_peak, pss)
        print(f"plain sequential runs: {seq_wall:.1f} s wall, peak {seq_peak:.2f} GiB (PSS)", flush=True)

        base = [sys.executable, "sweep/run_grid.py", "--preset", "quick", *sets, "--storage", tmp,
                "--data-root", args.data_root, "--no-dashboard", "--object-store-mb", "128"]
        wall, rss, pss, rc = monitored([*base, "--name", "matched", "--cpus-per-trial", "2"], env)
        if rc:
            raise SystemExit("the Ray sweep failed")
        print(f"run_grid.py, matched (2 CPUs per cell, one at a time): {wall:.1f} s wall, peak {rss:.2f} GiB RSS sum "
              f"/ {pss:.2f} GiB PSS sum over all processes", flush=True)
        print(f"ratio Ray / plain sequential wall time: {wall / seq_wall:.2f}", flush=True)
        wall2, rss2, pss2, rc = monitored([*base, "--name", "packed"], env)
        if rc:
            raise SystemExit("the Ray sweep failed")
        print(f"run_grid.py, default packing (1 CPU per cell, two at a time): {wall2:.1f} s wall "
              f"(ratio {wall2 / seq_wall:.2f}), peak {rss2:.2f} GiB RSS sum / {pss2:.2f} GiB PSS sum", flush=True)

        if args.quick_memory:
            cmd = [sys.executable, "sweep/run_grid.py", "--preset", "quick", "--storage", tmp, "--name", "quick",
                   "--data-root", args.data_root, "--object-store-mb", "256"]
            wall, rss, pss, rc = monitored(cmd, env)
            if rc:
                raise SystemExit("the quick preset failed")
            print(f"quick preset (with dashboard): {wall:.0f} s wall, peak {rss:.2f} GiB RSS sum / {pss:.2f} GiB PSS "
                  "sum over all processes (target < 8 GiB)", flush=True)


if __name__ == "__main__":
    main()
