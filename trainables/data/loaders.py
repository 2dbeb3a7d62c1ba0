"""`build_dataset(cfg, data_root)`: source -> LT subset + candidate sets + test split; and the training batches:
a DataLoader of PIL views (augment='pil') or `DeviceTrainBatches`, views made on the device (augment='tensor').

Batch order and augmentation are functions of (seed, epoch, sample), never of process-global RNG state, so a run is
reproducible whatever the number of DataLoader workers, and a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import TrialConfig
from ..transfer import to_device
from . import tensor_views
from .augment import TwoViewDataset, normalization
from .longtail import LongTailedSet, build_longtailed, superclass_table
from .plan import draw_plan
from .sources import load_split

_BATCH_ORDER_STREAM = 0x6F72646572


@dataclass(frozen=True)
class TrialData:
    """Everything a run needs from the data side, as arrays."""

    train_images: np.ndarray  # uint8 [N, 32, 32, 3], the LT subset, class-sorted
    train: LongTailedSet  # labels, candidates, counts
    test_images: np.ndarray  # uint8 [M, 32, 32, 3]
    test_labels: np.ndarray  # int64 [M]
    num_classes: int
    train_norm: tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std)
    test_norm: tuple[tuple[float, ...], tuple[float, ...]]
    source: str


def build_dataset(cfg: TrialConfig, data_root: str, download: bool = False) -> TrialData:
    """Load the source splits and build the LT partial-label training set of `cfg` (METHOD.md §1)."""
    k = cfg.num_classes
    train_split = load_split(cfg.dataset, "train", data_root, download=download)
    test_split = load_split(cfg.dataset, "test", data_root, download=download)

    superclass_of = None
    if cfg.nu:
        if train_split.coarse_labels is None:
            raise ValueError(f"nu=True needs CIFAR-100 coarse labels, but {train_split.source} has none")
        superclass_of = superclass_table(train_split.labels, train_split.coarse_labels, k)
    lt = build_longtailed(train_split.labels, k, cfg.head_class_size, cfg.rho, cfg.q, cfg.data_seed,
                          superclass_of=superclass_of, count_shuffle_seed=cfg.nu_shuffle_seed)
    cfg.check_batch_fits(len(lt.labels))

    test_images, test_labels = test_split.images, test_split.labels
    if cfg.test_per_class is not None:
        keep = np.concatenate([np.flatnonzero(test_labels == c)[: cfg.test_per_class] for c in range(k)])
        keep.sort()
        test_images, test_labels = test_images[keep], test_labels[keep]

    return TrialData(
        train_images=np.ascontiguousarray(train_split.images[lt.indices]),
        train=lt,
        test_images=test_images,
        test_labels=np.array(test_labels, dtype=np.int64),  # a writable copy: torch.from_numpy wants one
        num_classes=k,
        train_norm=normalization(cfg.dataset, "train"),
        test_norm=normalization(cfg.dataset, "test", faithful_test_norm=cfg.is_faithful("test_norm")),
        source=train_split.source,
    )


class EpochBatchSampler(Sampler):
    """Global batches from a permutation keyed on (seed, epoch); each rank takes its contiguous share.

    Yields lists of (epoch, index) keys, which the two-view dataset turns into per-sample generators. The last
    incomplete global batch is dropped (drop_last), so every rank runs the same number of steps.
    faithful=True reproduces the reference's DistributedSampler(seed=0) order: randperm seeded with 0 + epoch for
    every training seed (§1.5).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 faithful: bool = False):
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must divide evenly over {world_size} workers")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size, self.faithful = seed, rank, world_size, faithful
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        if self.faithful:
            key = epoch
        else:
            key = int(np.random.SeedSequence([self.seed, epoch, _BATCH_ORDER_STREAM]).generate_state(1)[0])
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(key))

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    @property
    def share(self) -> int:
        """Samples of each global batch that this rank gets."""
        return self.batch_size // self.world_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = self.permutation(self.epoch).tolist()
        share = self.share
        for step in range(len(self)):
            start = step * self.batch_size + self.rank * share
            yield [(self.epoch, i) for i in perm[start:start + share]]


def _collate(samples):
    weak, strong, idx = zip(*samples)
    return torch.stack(weak), torch.stack(strong), torch.tensor(idx, dtype=torch.long)


def make_train_loader(data: TrialData, cfg: TrialConfig, num_workers: int, rank: int = 0, world_size: int = 1,
                      pin_memory: bool = False) -> tuple[DataLoader, EpochBatchSampler]:
    """The two-view training loader and its sampler (call `sampler.set_epoch(e)` before each epoch)."""
    dataset = TwoViewDataset(data.train_images, seed=cfg.seed, faithful_cutout=cfg.is_faithful("cutout"))
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size, cfg.seed, rank, world_size,
                                faithful=cfg.is_faithful("batch_order"))
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate,
                        pin_memory=pin_memory, persistent_workers=num_workers > 0,
                        prefetch_factor=4 if num_workers > 0 else None)
    return loader, sampler


def to_device_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC array -> uint8 NCHW tensor on the device (normalised per batch at use)."""
    # the transposing copy is also writable (the source arrays are read-only), as torch.from_numpy wants
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


class DeviceTrainBatches:
    """The training set on the device as uint8, and an iterator of (weak, strong, idx) batches like the loader's:
    the sampler's keys -> a ViewPlan drawn on the CPU -> both views as batched tensor ops on the device.

    No worker processes: the views cost a fraction of the step on the device that runs the model. They are made
    for several consecutive batches of the epoch at once, up to VIEW_CALL_SAMPLES samples per call: a sample's
    views depend only on its plan row, so the batches are what one call per batch would give, and the views' fixed
    cost per call (a few thousand small tensor ops, or kernel launches on a GPU) is shared.
    """

    # Samples per views call. On a 2-core CPU (`benchmarks/views.py --batch N`, the all-cores column), the cost per
    # sample falls from 64 to 512 samples per call (8.3 -> 3.8 ms per 64 samples on 2 threads) and rises again past
    # it (5.1 ms at 1024), as the working set leaves the cache.
    VIEW_CALL_SAMPLES = 512

    def __init__(self, images: torch.Tensor, sampler: EpochBatchSampler, seed: int, faithful_cutout: bool = False):
        self.images, self.sampler, self.seed, self.faithful_cutout = images, sampler, seed, faithful_cutout

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        batches = iter(self.sampler)
        per_call = max(1, self.VIEW_CALL_SAMPLES // self.sampler.share)
        while group := list(itertools.islice(batches, per_call)):
            epochs, indices = torch.tensor([key for keys in group for key in keys], dtype=torch.int64).T
            plan = draw_plan(self.seed, epochs, indices, self.faithful_cutout)
            # pinned (see transfer.to_device); the batches' idx are then on the device already
            indices = to_device([indices], self.images.device)[0]
            weak, strong = tensor_views.views(self.images.index_select(0, indices), plan)
            start = 0
            for keys in group:
                rows = slice(start, start + len(keys))
                yield weak[rows], strong[rows], indices[rows]
                start += len(keys)


def make_train_batches(data: TrialData, cfg: TrialConfig, num_workers: int, device: torch.device, rank: int = 0,
                       world_size: int = 1, train_images: torch.Tensor | None = None
                       ) -> tuple[DataLoader | DeviceTrainBatches, EpochBatchSampler]:
    """The training batches of cfg.augment and their sampler. 'pil': the DataLoader (num_workers processes, pinned
    memory on CUDA); 'tensor': DeviceTrainBatches over `train_images` (uploaded here when not given)."""
    if cfg.augment == "pil":
        return make_train_loader(data, cfg, num_workers, rank, world_size, pin_memory=device.type == "cuda")
    sampler = EpochBatchSampler(len(data.train_images), cfg.batch_size, cfg.seed, rank, world_size,
                                faithful=cfg.is_faithful("batch_order"))
    images = train_images if train_images is not None else to_device_images(data.train_images, device)
    return DeviceTrainBatches(images, sampler, cfg.seed, cfg.is_faithful("cutout")), sampler
