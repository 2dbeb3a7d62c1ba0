"""Throughput of the full training step against its floor and the data pipeline, and peak memory of a run.

    python benchmarks/train_step.py                              # everything (long for ResNet-18 on a CPU)
    python benchmarks/train_step.py --archs small-cnn --batches 64 --steps 5
    python benchmarks/train_step.py --memory-only
    python benchmarks/train_step.py --archs small-cnn --methods records --augments pil tensor
    python benchmarks/train_step.py --archs resnet18 --methods records pico pico+records --memory-methods records pico
                                             # PiCO beside CORR+RECORDS, and PiCO's extra peak memory


For each architecture, batch size and precision it prints training samples per second:
  * floor: the bare model's fwd+bwd+SGD step on random tensors of the step's shape (2 or 4 views per sample);
  * pipeline: the data loader alone (decode-free uint8 arrays -> weak and strong views), at the configured workers
    for augment=pil; the device-resident batches (plan + tensor views, in the training process) for augment=tensor;
  * step: the real method step (CIFAR-10-LT rho=100 q=0.3 from --data-root, loader, normalisation, forward, loss,
    disambiguation, backward, SGD), in epoch 1, so the confidence update and the mixup loss are on;
and the step/floor time ratio; PiCO's floor adds its key encoder's gradient-free forward of the strong view.
Figures on a shared machine are noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procmem import run_monitored  # noqa: E402

from trainables.comm import Comm  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.data.loaders import build_dataset, make_train_batches  # noqa: E402
from trainables.loop import EVAL_BATCH, build_optimizer, evaluate, to_device_images, train_steps  # noqa: E402
from trainables.methods import create_method  # noqa: E402
from trainables.models import ModelHandle, create_model  # noqa: E402

VARIANTS = {
    "corr": dict(),
    "records": dict(records=True),
    "records+mixup": dict(records=True, mixup=True),
    "solar": dict(method="solar"),
    "pico": dict(method="pico"),
    "pico+records": dict(method="pico", records=True),
}
# The floor's forward calls per step, in batches: one concatenated 2B (or 4B with mixup) batch for the CORR family;
# SoLar's separate weak and strong forwards plus the mixed reliable subset, at the share its measured steps selected.
# PiCO: the weak batch through the query encoder; its key encoder's strong-view forward is in FLOOR_FORWARD_ONLY.
FLOOR_CHUNKS = {"corr": (2.0,), "records": (2.0,), "records+mixup": (4.0,), "solar": (1.0, 1.0), "pico": (1.0,),
                "pico+records": (1.0,)}
FLOOR_FORWARD_ONLY = {"pico": 1.0, "pico+records": 1.0}


def cell(arch: str, batch: int, precision: str, variant: str, augment: str = "pil") -> TrialConfig:
    return TrialConfig(dataset="cifar10", rho=100, q=0.3, arch=arch, batch_size=batch, precision=precision,
                       augment=augment, **VARIANTS[variant])


def train_batches(data, cfg: TrialConfig, workers: int):
    """The run's training batches on the CPU: the loader with `workers` processes (pil) or none (tensor)."""
    return make_train_batches(data, cfg, workers if cfg.augment == "pil" else 0, torch.device("cpu"))


def timed(step, batch: int, warmup: int, min_steps: int, min_seconds: float) -> float:
    """Samples/s of `step()` after `warmup` calls, over at least min_steps calls and min_seconds."""
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < min_seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def floor_step(arch: str, batch: int, chunks: tuple[float, ...], precision: str, forward_only: float = 0.0):
    """The bare model: forwards of random tensors of the step's shapes, CE, one backward, SGD; plus, for a method
    with a momentum encoder, a gradient-free forward of `forward_only` batches through a second model."""
    g = torch.Generator().manual_seed(0)
    net = create_model(arch, 10, seed=0, precision=precision)
    model = ModelHandle(net, precision)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    xs = [torch.randn(max(2, round(c * batch)), 3, 32, 32, generator=g) for c in chunks]
    ys = [torch.randint(0, 10, (len(x),), generator=g) for x in xs]
    other = ModelHandle(create_model(arch, 10, seed=1, precision=precision), precision) if forward_only else None
    x_other = torch.randn(max(2, round(forward_only * batch)), 3, 32, 32, generator=g) if forward_only else None

    def step():
        if other is not None:
            with torch.no_grad():
                other(x_other)
        loss = sum(torch.nn.functional.cross_entropy(model(x)[0], y) for x, y in zip(xs, ys))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _endless(loader, sampler):
    epoch = 1
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def pipeline_step(data, cfg: TrialConfig, workers: int):
    loader, sampler = train_batches(data, cfg, workers)
    batches = _endless(loader, sampler)

    def step():
        next(batches)

    step.batches = batches
    return step


def _release(step) -> None:
    """Stop a measured loader's worker processes now: left to the garbage collector, they would still hold CPU
    while the next configuration is timed."""
    step.batches.close()
    del step.batches
    gc.collect()


def method_step(data, cfg: TrialConfig, workers: int):
    """The real step (loader, normalisation, the method's forward, loss and update, backward, SGD) in epoch 1;
    also returns a function giving the share of samples SoLar selected as reliable (0 for the CORR family)."""
    device = torch.device("cpu")
    net = create_model(cfg.arch, 10, seed=cfg.seed, precision=cfg.precision)
    model = ModelHandle(net, cfg.precision)
    method = create_method(cfg, torch.from_numpy(data.train.candidates), data.train.counts, device, Comm())
    optimizer, _ = build_optimizer(cfg, net, list(method.extra_parameters(net)))
    method.enter_stage("train", fresh=True)
    if cfg.method == "solar":  # steady state: a full prediction queue, so Sinkhorn runs on [queue; batch]
        g = torch.Generator().manual_seed(1)
        method.queue = torch.softmax(torch.randn(method.queue.shape, generator=g), 1)
        method.queue_rows = len(method.queue)
    loader, sampler = train_batches(data, cfg, workers)
    batches = _endless(loader, sampler)

    def step():
        train_steps(model, method, optimizer, itertools.islice(batches, 1), data.train_norm, device, epoch=1)

    step.batches = batches

    def reliable_share() -> float:
        if cfg.method != "solar":
            return 0.0
        return float(method._stats["reliable"] / method._stats["seen"].clamp_min(1))

    return step, reliable_share


def throughput(args) -> None:
    rows = []
    header = (f"{'arch':<10}{'batch':>6} {'prec':<5} {'method':<14}{'views':<7}{'step/s':>9}{'floor/s':>9}"
              f"{'step/floor':>11}{'pipeline/s':>12}")
    print(header, flush=True)
    budget = dict(warmup=args.warmup, min_steps=args.steps, min_seconds=args.min_seconds)
    for arch, batch in itertools.product(args.archs, args.batches):
        data = build_dataset(cell(arch, batch, "fp32", "corr"), args.data_root)
        pipes = {}
        for augment in args.augments:
            pipe_step = pipeline_step(data, cell(arch, batch, "fp32", "corr", augment), args.workers)
            pipes[augment] = timed(pipe_step, batch, **budget)
            _release(pipe_step)
        for precision, variant, augment in itertools.product(args.precisions, args.methods, args.augments):
            cfg = cell(arch, batch, precision, variant, augment)
            pipe = pipes[augment]
            step, reliable_share = method_step(data, cfg, args.workers)
            rates, floors = [], []
            for _ in range(args.repeats):  # alternate step and floor, so a drifting machine hits both alike
                rates.append(timed(step, batch, **budget))
                chunks = FLOOR_CHUNKS[variant] + ((round(reliable_share(), 2),) if variant == "solar" else ())
                floors.append(timed(floor_step(arch, batch, chunks, precision, FLOOR_FORWARD_ONLY.get(variant, 0.0)),
                                    batch, **budget))
            _release(step)
            rate, floor = statistics.median(rates), statistics.median(floors)
            ratio = statistics.median(f / r for f, r in zip(floors, rates))
            if augment == args.augments[0]:  # the summaries below compare one augment path
                rows.append((arch, batch, precision, variant, rate, floor, pipe))
            print(f"{arch:<10}{batch:>6} {precision:<5} {variant:<14}{augment:<7}{rate:>9.1f}{floor:>9.1f}"
                  f"{ratio:>11.2f}{pipe:>12.0f}", flush=True)
    if "bf16" in args.precisions and "fp32" in args.precisions:
        print("\nbf16 / fp32 step speed-up")
        fp32 = {(a, b, m): r for a, b, p, m, r, _, _ in rows if p == "fp32"}
        for a, b, p, m, r, _, _ in rows:
            if p == "bf16" and (a, b, m) in fp32:
                print(f"{a:<10}{b:>6} {m:<14}{r / fp32[(a, b, m)]:>6.2f}x")
    records = {(a, b, p): r for a, b, p, m, r, _, _ in rows if m == "records"}
    for other in ("solar", "pico", "pico+records"):
        rates = {(a, b, p): r for a, b, p, m, r, _, _ in rows if m == other}
        if rates and records:
            print(f"\n{other} step time / CORR+RECORDS step time")
            for key in rates:
                if key in records:
                    print(f"{key[0]:<10}{key[1]:>6} {key[2]:<5} {records[key] / rates[key]:>6.2f}x")


def memory_probe(args) -> None:
    """Peak resident memory of one ResNet-18 CIFAR-10-LT run per --memory-methods: data, model, a full test pass and
    training steps with the loader workers, the process tree sampled every 100 ms (each in a fresh process)."""
    peaks = {}
    workers = args.workers if args.augments[0] == "pil" else 0
    for variant in args.memory_methods:
        cmd = [sys.executable, __file__, "--_memory-child", "--data-root", args.data_root, "--workers",
               str(args.workers), "--memory-steps", str(args.memory_steps), "--precisions", *args.precisions,
               "--augments", args.augments[0], "--memory-methods", variant]
        _, peak_rss, peak_pss, returncode = run_monitored(cmd, interval=0.1)
        if returncode:
            raise SystemExit(f"memory probe of {variant} failed ({returncode})")
        peaks[variant] = peak_pss
        print(f"{variant}: peak memory of the run's process tree ({args.augments[0]} views, main + {workers} loader "
              f"worker): {peak_pss:.2f} GiB PSS (shared pages counted once; target < 4 GiB), {peak_rss:.2f} GiB as a "
              "plain sum of RSS", flush=True)
    for variant in ("pico", "pico+records"):
        if variant in peaks and "records" in peaks:
            print(f"{variant} peak - CORR+RECORDS peak: {peaks[variant] - peaks['records']:+.2f} GiB PSS")


def _memory_child(args) -> None:
    cfg = cell("resnet18", 256, args.precisions[0], args.memory_methods[0], args.augments[0])
    data = build_dataset(cfg, args.data_root)
    device = torch.device("cpu")
    net = create_model("resnet18", 10, seed=cfg.seed, precision=cfg.precision)
    model = ModelHandle(net, cfg.precision)
    method = create_method(cfg, torch.from_numpy(data.train.candidates), data.train.counts, device, Comm())
    optimizer, _ = build_optimizer(cfg, net, list(method.extra_parameters(net)))
    state = [v for v in method.state_dict().values() if isinstance(v, torch.Tensor)]
    state += [v for v in method.state_dict().values() if isinstance(v, dict) for v in v.values()]
    print(f"{args.memory_methods[0]}: method state (W, mu, and PiCO's head, key encoder, queue, prototypes) "
          f"{sum(t.numel() * t.element_size() for t in state) / 2**20:.1f} MiB", flush=True)
    loader, sampler = train_batches(data, cfg, args.workers)
    sampler.set_epoch(1)
    train_steps(model, method, optimizer, itertools.islice(iter(loader), args.memory_steps), data.train_norm, device,
                1)
    evaluate(model, method, to_device_images(data.test_images, device), torch.from_numpy(data.test_labels),
             data.test_norm, 10, Comm())
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"main process peak RSS {own:.2f} GiB ({cfg.precision}, batch 256, test batch {EVAL_BATCH})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet18", "small-cnn"])
    p.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    p.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=2, help="at least this many timed steps per measurement")
    p.add_argument("--min-seconds", type=float, default=6.0, help="and at least this long")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="alternating step/floor measurements; medians reported")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (augment=pil)")
    p.add_argument("--augments", nargs="+", default=["pil", "tensor"], choices=["pil", "tensor"],
                   help="view implementations to measure (the memory probe uses the first)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--data-root", default=os.environ.get("RECORDS_DATA_ROOT", "../shared/data"))
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--memory-methods", nargs="+", default=["records"], choices=list(VARIANTS),
                   help="one memory probe per method (pico: also its peak beside records)")
    p.add_argument("--_memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_child:
        _memory_child(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{args.workers} loader worker(s), data {args.data_root}", flush=True)
    if not args.memory_only:
        throughput(args)
    if not args.no_memory:
        memory_probe(args)


if __name__ == "__main__":
    main()
