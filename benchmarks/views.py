"""Views per second: the batched tensor views against the PIL views, on real CIFAR-10 images, same plans.

    python benchmarks/views.py --data-root ../shared/data [--batch 256] [--seconds 5]
    python benchmarks/views.py --breakdown      # where one batch's time goes, stage by stage, on one thread

Both views of a sample count as one. Measured side by side in one process:
  * PIL, 1 core: the two-view dataset's batch fetch (plan + PIL ops) in this process;
  * PIL, all cores: a DataLoader with one worker process per core;
  * tensor, 1 thread and all threads: plan + `tensor_views.views` on a uint8 batch in memory (torch threads).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.data import tensor_views  # noqa: E402
from trainables.data.augment import TwoViewDataset  # noqa: E402
from trainables.data.loaders import EpochBatchSampler, _collate  # noqa: E402
from trainables.data.plan import OP_ID, draw_plan  # noqa: E402
from trainables.data.sources import load_split  # noqa: E402


def rate(step, batch: int, seconds: float) -> float:
    """Samples/s of step() after one warm-up call, over at least `seconds` and 3 calls."""
    step()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def breakdown(images: torch.Tensor, batch: int, repeats: int = 30) -> None:
    """Milliseconds per batch of each stage of the tensor views on one thread (each op family timed on the whole
    batch: in a real plan it runs only on the samples that drew it)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    indices = torch.randint(len(images), (batch,), generator=g)
    plan = draw_plan(0, 1, indices)
    x = images.index_select(0, indices)
    crop = tensor_views.resized_crop_flip(x, plan.weak_box, plan.weak_flip)
    v = plan.magnitudes[:, 0]
    rotate = torch.full_like(plan.ops[:, 0], OP_ID["Rotate"])
    stages = {
        "plan": lambda: draw_plan(0, 1, indices),
        "resized crop + flip (one view)": lambda: tensor_views.resized_crop_flip(x, plan.weak_box, plan.weak_flip),
        "ColorJitter, 4 slots": lambda: tensor_views.color_jitter(crop, plan),
        "  hue, whole batch": lambda: tensor_views.hue(crop, plan.jitter_factors[:, 3]),
        "  color, whole batch": lambda: tensor_views.color(crop, plan.jitter_factors[:, 2]),
        "RandAugment, 3 slots": lambda: tensor_views.randaugment(crop, plan.ops, plan.magnitudes),
        "  sharpness, whole batch": lambda: tensor_views.sharpness(crop, v),
        "  equalize, whole batch": lambda: tensor_views.equalize(crop),
        "  rotate, whole batch": lambda: tensor_views._affine_nearest(crop, tensor_views._affine_coeffs(rotate, v)),
        "cutout": lambda: tensor_views.cutout(crop, plan.cutout),
        "both views": lambda: tensor_views.views(x, plan),
    }
    print(f"tensor views, batch {batch}, 1 thread: ms per batch")
    for name, fn in stages.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        print(f"  {name:<34}{(time.perf_counter() - t0) / repeats * 1e3:8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("RECORDS_DATA_ROOT", "../shared/data"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--images", type=int, default=10000, help="training images to draw batches from")
    p.add_argument("--breakdown", action="store_true", help="time each stage of the tensor views instead")
    args = p.parse_args()
    cores = os.cpu_count() or 1

    images = np.ascontiguousarray(load_split("cifar10", "train", args.data_root).images[:args.images])
    if args.breakdown:
        breakdown(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), args.batch)
        return
    dataset = TwoViewDataset(images, seed=0)
    sampler = EpochBatchSampler(len(images), args.batch, seed=0)

    def endless_keys():
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from sampler

    keys = endless_keys()

    def pil_step():
        dataset.__getitems__(next(keys))

    device_images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    g = torch.Generator().manual_seed(0)
    step_no = iter(range(10**9))

    def tensor_step():
        indices = torch.randint(len(images), (args.batch,), generator=g)
        plan = draw_plan(0, next(step_no), indices)
        tensor_views.views(device_images.index_select(0, indices), plan)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pil_1 = rate(pil_step, args.batch, args.seconds)
    tensor_1 = rate(tensor_step, args.batch, args.seconds)
    torch.set_num_threads(cores)
    tensor_all = rate(tensor_step, args.batch, args.seconds)
    torch.set_num_threads(threads)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cores, collate_fn=_collate,
                                         prefetch_factor=4, persistent_workers=True)

    def endless():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    batches = endless()
    pil_all = rate(lambda: next(batches), args.batch, args.seconds)
    batches.close()

    print(f"views/s (weak + strong = 1), batch {args.batch}, {cores} cores, real CIFAR-10 from {args.data_root}")
    print(f"{'':10}{'1 thread':>10}{'all cores':>11}")
    print(f"{'pil':10}{pil_1:>10.0f}{pil_all:>11.0f}")
    print(f"{'tensor':10}{tensor_1:>10.0f}{tensor_all:>11.0f}")
    print(f"{'ratio':10}{tensor_1 / pil_1:>9.2f}x{tensor_all / pil_all:>10.2f}x")


if __name__ == "__main__":
    main()
