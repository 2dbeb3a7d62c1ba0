"""Accuracy check of the tensor views against the PIL views: same trials, both `augment` paths, several seeds.

CIFAR-10-LT rho=100 q=0.3, CORR+RECORDS, small CNN, E epochs, seeds S for each path; prints final top-1 per run and
per path (mean, standard deviation, range) and whether the means agree within 1.5 points and within the seeds'
spread (the larger of the two paths' max - min over seeds). Every run keeps its checkpoint in OUT/<path>-seed<s>,
so the check can run in chunks (`--max-runs`) and resumes where it stopped; finished runs are only read.

    python benchmarks/augment_accuracy.py --data-root ../shared/data --out runs/augment_accuracy [--max-runs 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # like the other benchmarks: runs without an install

from trainables.checkpoint import FILENAME  # noqa: E402
from trainables.config import RunOptions, TrialConfig  # noqa: E402
from trainables.loop import fit  # noqa: E402

PATHS = ("pil", "tensor")


def trial(path: str, seed: int, args: argparse.Namespace) -> TrialConfig:
    return TrialConfig(dataset="cifar10", rho=100, q=0.3, records=True, arch="small-cnn", epochs=args.epochs,
                       batch_size=args.batch_size, img_max=args.img_max, test_per_class=args.test_per_class,
                       seed=seed, augment=path)


def final_top1(path: str, seed: int, args: argparse.Namespace) -> float | None:
    """The finished run's final top-1, if OUT holds one of exactly this trial (a run of other settings under the
    same folder is not counted: its checkpoint makes `fit` refuse to resume, naming the differing fields)."""
    done = Path(args.out) / f"{path}-seed{seed}" / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if result["config_hash"] == trial(path, seed, args).config_hash and result["epochs"] == args.epochs:
            return result["top1"]
    return None


def run_one(path: str, seed: int, args: argparse.Namespace) -> None:
    cfg = trial(path, seed, args)
    run_dir = Path(args.out) / f"{path}-seed{seed}"
    ckpt = run_dir / FILENAME
    options = RunOptions(data_root=args.data_root, out_dir=str(run_dir), device="cpu",
                         num_workers=args.workers if path == "pil" else 0, verbose=True)
    print(f"== {path} seed {seed}: {cfg.describe()} [{cfg.config_hash}]", flush=True)
    t0 = time.perf_counter()
    result = fit(cfg, options, resume_from=ckpt if ckpt.exists() else None)
    history = result.history
    (run_dir / "result.json").write_text(json.dumps({
        "path": path, "seed": seed, "epochs": len(history), "top1": history[-1]["top1"],
        "config_hash": cfg.config_hash, "wall_s_this_chunk": time.perf_counter() - t0}))


def table(args: argparse.Namespace) -> int:
    rows = {p: [] for p in PATHS}
    for p in PATHS:
        for s in args.seeds:
            top1 = final_top1(p, s, args)
            if top1 is not None:
                rows[p].append((s, top1))
    print(f"\nCIFAR-10-LT rho=100 q=0.3 CORR+RECORDS small-cnn, {args.epochs} epochs, batch {args.batch_size}, "
          f"img_max {args.img_max}, test_per_class {args.test_per_class}: final top-1 (%)")
    print(f"{'path':8} {'seeds':>5} {'per seed':40} {'mean':>7} {'std':>6} {'range':>6}")
    stats = {}
    for p, values in rows.items():
        tops = [t for _, t in values]
        if not tops:
            print(f"{p:8} {0:>5}")
            continue
        std = statistics.stdev(tops) if len(tops) > 1 else float("nan")
        stats[p] = (statistics.fmean(tops), max(tops) - min(tops), len(tops))
        per_seed = " ".join(f"{s}:{t:.2f}" for s, t in values)
        print(f"{p:8} {len(tops):>5} {per_seed:40} {stats[p][0]:7.2f} {std:6.2f} {stats[p][1]:6.2f}")
    if len(stats) == 2 and all(n == len(args.seeds) for _, _, n in stats.values()):
        diff = stats["tensor"][0] - stats["pil"][0]
        spread = max(stats["pil"][1], stats["tensor"][1])
        agree = abs(diff) <= 1.5 and abs(diff) <= spread
        print(f"tensor - pil = {diff:+.2f} points; seeds' spread {spread:.2f}; "
              f"{'AGREE' if agree else 'DO NOT AGREE'} (|diff| <= 1.5 and <= spread)")
        return 0
    print("incomplete: run again to finish the missing runs")
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-max", type=int, default=5000, help="head-class size (5000: the whole CIFAR-10-LT)")
    p.add_argument("--test-per-class", type=int, default=1000, help="1000: the whole CIFAR-10 test set")
    p.add_argument("--workers", type=int, default=1, help="loader workers of the pil runs")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="paths to run (the table shows both)")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many runs (a chunk)")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 10:
        p.error(f"--epochs={args.epochs}: the check needs at least 10")
    if not args.table_only:
        todo = [(path, s) for s in args.seeds for path in args.paths
                if final_top1(path, s, args) is None]
        for path, seed in todo[:args.max_runs]:
            run_one(path, seed, args)
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
