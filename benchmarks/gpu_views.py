"""The GPU check of the tensor views: ResNet-18, bf16 + channels_last, batch 256, CORR+RECORDS on CIFAR-10-LT.

    python benchmarks/gpu_views.py --data-root ../shared/data                  # on a GPU node
    python benchmarks/gpu_views.py --data-root ../shared/data --view-call-samples 256 --trials 1
        # the same with one views call per batch (how much sharing calls over batches gives on that device)
    python benchmarks/gpu_views.py --device cpu --arch small-cnn --steps 2 --seconds 2 --workers 1 --trials 1 2
        # a smoke test of the script on a CPU

Prints training samples/s of the full step (views, normalisation, forward, loss, backward, SGD):
  1. augment=pil with as many DataLoader workers as the node has cores (pinned memory), against
  2. augment=tensor (training set on the device, no workers);
  3. then 1, 2 and 4 tensor trials sharing the device (separate processes, timed over the same window), total
     samples/s.
On CUDA it also runs `--steps` tensor steps under torch's sync debug mode and lists the calls it reports as
synchronising (`.item()`, blocking copies, ...; the driver's own wait on a pageable non_blocking copy is not among
them, the meta-device tests count those): none but train_steps' own synchronize at the end is expected.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_step import _endless  # noqa: E402
from train_step import timed as timed_calls  # noqa: E402

from trainables.comm import Comm  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.data.loaders import DeviceTrainBatches, build_dataset, make_train_batches  # noqa: E402
from trainables.loop import build_optimizer, train_steps  # noqa: E402
from trainables.methods import create_method  # noqa: E402
from trainables.models import ModelHandle, create_model  # noqa: E402


def prepare(args, augment: str, workers: int):
    """A ready-to-time training step of CORR+RECORDS (data, model and method built, `--warmup` steps run)."""
    device = torch.device(args.device)
    cfg = TrialConfig(dataset="cifar10", rho=100, q=0.3, records=True, arch=args.arch, batch_size=args.batch,
                      precision=args.precision, augment=augment)
    data = build_dataset(cfg, args.data_root)
    net = create_model(cfg.arch, 10, seed=cfg.seed, device=device, precision=cfg.precision)
    model = ModelHandle(net, cfg.precision)
    optimizer, _ = build_optimizer(cfg, net)
    method = create_method(cfg, torch.from_numpy(data.train.candidates), data.train.counts, device, Comm())
    method.enter_stage("train", fresh=True)
    stream = _endless(*make_train_batches(data, cfg, workers, device))

    def run(steps: int) -> None:  # train_steps synchronises CUDA at its end
        train_steps(model, method, optimizer, itertools.islice(stream, steps), data.train_norm, device, 1)

    run(args.warmup)
    return run


def timed(args, run) -> float:
    """Samples/s of `run`, in chunks of `--steps` steps until `--seconds` have passed."""
    return timed_calls(lambda: run(args.steps), args.steps * args.batch, warmup=0, min_steps=1,
                       min_seconds=args.seconds)


def synchronising_calls(args, run) -> collections.Counter:
    """What torch's CUDA sync debug mode reports in `--steps` steps of `run`, by first line of its warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run(args.steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return collections.Counter(str(w.message).splitlines()[0] for w in caught)


def shared(args, trials: int) -> float:
    """Total samples/s of `trials` tensor trials in separate processes on the same device. Each child prepares and
    warms up, says so, and starts timing only when the parent has heard from all of them: the timed windows
    overlap (each runs `--seconds`), so the sum is what the device sustains with that many trials on it. Each
    gets its share of the CPU cores as torch threads, as a sweep's trials do (Ray sets OMP_NUM_THREADS to a trial's
    CPUs): with every child on all cores, their thread pools fight over them."""
    cmd = [sys.executable, __file__, "--_child", "--device", args.device, "--data-root", args.data_root,
           "--arch", args.arch, "--batch", str(args.batch), "--precision", args.precision,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seconds", str(args.seconds),
           "--view-call-samples", str(args.view_call_samples),
           "--threads", str(max(1, (os.cpu_count() or 1) // trials))]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(trials)]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"a shared-device trial failed while preparing (exit {proc.wait()})")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"a shared-device trial failed: {[proc.returncode for proc in procs]}")
    return sum(json.loads(out.strip().splitlines()[-1])["samples_per_s"] for out in outs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-root", default=os.environ.get("RECORDS_DATA_ROOT", "../shared/data"))
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "small-cnn"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=10, help="steps between clock reads")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement (at least --steps)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader workers of the pil run")
    p.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4], help="tensor trials sharing the device")
    p.add_argument("--view-call-samples", type=int, default=DeviceTrainBatches.VIEW_CALL_SAMPLES,
                   help="samples per tensor views call (the batch size: one call per batch)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    DeviceTrainBatches.VIEW_CALL_SAMPLES = args.view_call_samples
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        run = prepare(args, "tensor", 0)
        print("ready", flush=True)
        sys.stdin.readline()  # the parent's go: every trial is ready
        print(json.dumps({"samples_per_s": timed(args, run)}), flush=True)
        return
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"{args.arch} {args.precision} batch {args.batch}, CORR+RECORDS, {args.seconds:g} s per figure on {name}; "
          f"{os.cpu_count()} CPU cores; tensor views {args.view_call_samples} samples per call", flush=True)
    pil = timed(args, prepare(args, "pil", args.workers))
    print(f"pil, {args.workers} loader workers: {pil:10.0f} samples/s", flush=True)
    run_tensor = prepare(args, "tensor", 0)
    tensor = timed(args, run_tensor)
    print(f"tensor, no workers:{'':8}{tensor:10.0f} samples/s ({tensor / pil:.2f}x pil)", flush=True)
    if args.device.startswith("cuda"):
        calls = synchronising_calls(args, run_tensor)
        print(f"synchronising calls in {args.steps} tensor steps: {sum(calls.values())}", flush=True)
        for message, count in calls.most_common():
            print(f"  {count:4d} x {message}", flush=True)
    for trials in args.trials:
        total = shared(args, trials)
        print(f"{trials} tensor trial(s) sharing the device: {total:10.0f} samples/s in total "
              f"({total / trials:.0f} each)", flush=True)


if __name__ == "__main__":
    main()
