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
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweep.grids import PRESETS  # noqa: E402


def monitored(cmd: list[str], env: dict | None = None) -> tuple[float, float, float, int]:
    """Run `cmd`; return (wall seconds, peak RSS sum GiB, peak PSS sum GiB, exit code) over its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss = pss = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", info.rss)
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    if proc.returncode:
        print(err, file=sys.stderr)
    return wall, peak_rss / 2**30, peak_pss / 2**30, proc.returncode


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

    sets = ["--set", "variant=corr,records", "--set", f"epochs={args.epochs}"]
    grid = PRESETS["quick"].with_override("variant", ("corr", "records")).with_override("epochs", (args.epochs,))
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
