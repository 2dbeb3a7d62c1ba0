"""Weak and strong training views of a CIFAR image on PIL (METHOD.md §1.4), and batched normalisation.

Design:

- Every random choice comes from a `plan.ViewPlan`, drawn for a whole batch from counter-based uniforms keyed on
  (seed, epoch, sample). The reference drew from torch's, Python's and numpy's global RNGs inside DataLoader
  workers, so its views depended on the worker count and, under old PyTorch, repeated across workers (§11.14).
  Here the views of sample `index` in `epoch` depend on those three numbers only: any worker count, and a resumed
  run, redraw them exactly. The batched tensor path (`tensor_views.py`) consumes the same plans.
- torchvision's transform classes draw their parameters from torch's global RNG, so the parameter sampling
  (RandomResizedCrop, flip, ColorJitter, grayscale) is re-implemented in plan.py. The pixel work here is PIL's,
  through the same calls torchvision.transforms.functional makes on PIL images.
- Ops whose PIL/torchvision versions are slow in Python (autocontrast, equalize, posterize, solarize, contrast,
  hue, grayscale) come from `pil_ops`, which reproduces their pixels exactly at a fraction of the cost.
- The dataset returns uint8 CHW tensors (a quarter of the float32 bytes through worker queues and pinned memory).
  `normalize` turns a whole batch into float32 later, on whichever device, bit-identical to ToTensor+Normalize.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageEnhance

from trainables.data import pil_ops
from trainables.data.plan import CUTOUT_FILL, IMAGE_SIZE, RANDAUGMENT_RANGES, ViewPlan, draw_plan

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.243, 0.261)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}



def normalization(
    dataset: str, split: str, faithful_test_norm: bool = False
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for 'cifar10'/'cifar100', split 'train'/'test'. Train always uses the dataset's own stats.

    Test uses the dataset's own stats, except with faithful_test_norm=True, where both datasets use CIFAR-100's
    (the reference's bug, METHOD.md §1.3).
    """
    if dataset not in _STATS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_STATS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if split == "test" and faithful_test_norm:
        return _STATS["cifar100"]
    return _STATS[dataset]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B,3,H,W] (any device) -> float32 (x / 255 - mean) / std.

    The operations and their order are ToTensor's `x.float().div(255)` then Normalize's `(x - mean) / std` with
    float32 mean/std, so the result is bit-identical to torchvision ToTensor+Normalize per image.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"expected a uint8 [B,C,H,W] tensor, got {images.dtype} of shape {tuple(images.shape)}")
    mean_t, std_t = _stats_on(tuple(mean), tuple(std), images.device)
    # In place on the fresh float copy: one allocation per batch instead of three.
    return images.float().div_(255).sub_(mean_t).div_(std_t)


@functools.cache
def _stats_on(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [1, C, 1, 1] mean and std on `device`, sent once (a copy per batch would wait for the GPU)."""
    return tuple(torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1).to(device) for v in (mean, std))


# ---------------------------------------------------------------------------------------------------------------
# The views on PIL images, from one sample's row of a ViewPlan (plan.py draws every random choice). The pixel work
# is PIL's, through the calls torchvision.transforms.functional makes on PIL images (without their per-call
# argument checks and API-usage logging, which cost more than the pixel work on a 32x32 image).
# ---------------------------------------------------------------------------------------------------------------


class SampleDraws(NamedTuple):
    """One sample's row of a ViewPlan as Python values (see plan.ViewPlan for the fields)."""

    weak_box: list[int]
    weak_flip: bool
    jitter: bool
    jitter_order: list[int]
    jitter_factors: list[float]
    gray: bool
    strong_box: list[int]
    strong_flip: bool
    ops: list[int]
    magnitudes: list[float]
    cutout: list[int]


def plan_rows(p: ViewPlan) -> list[SampleDraws]:
    """The rows of a plan, converted once per batch (per-sample tensor indexing would cost more than PIL)."""
    columns = [getattr(p, name).tolist() for name in SampleDraws._fields]
    return [SampleDraws(*row) for row in zip(*columns)]


def _resized_crop_and_flip(img: Image.Image, box: list[int], flip: bool) -> Image.Image:
    top, left, crop_h, crop_w = box
    img = img.crop((left, top, left + crop_w, top + crop_h)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img


def _color_jitter(img: Image.Image, order: list[int], factors: list[float]) -> Image.Image:
    # As torchvision's ColorJitter: the four adjustments in a random order, all factors drawn up front.
    brightness, contrast, saturation, hue = factors
    for adjustment in order:
        if adjustment == 0:
            img = ImageEnhance.Brightness(img).enhance(brightness)  # = F.adjust_brightness
        elif adjustment == 1:
            img = pil_ops.contrast(img, contrast)
        elif adjustment == 2:
            img = ImageEnhance.Color(img).enhance(saturation)  # = F.adjust_saturation
        else:
            img = pil_ops.adjust_hue(img, hue)
    return img


def weak_view(img: Image.Image, draws: SampleDraws) -> Image.Image:
    """The weak view of an RGB image (§1.4), as a 32x32 RGB image."""
    img = _resized_crop_and_flip(img, draws.weak_box, draws.weak_flip)
    if draws.jitter:
        img = _color_jitter(img, draws.jitter_order, draws.jitter_factors)
    if draws.gray:
        img = pil_ops.grayscale_rgb(img)
    return img


# ---------------------------------------------------------------------------------------------------------------
# Strong view: the reference's RandomAugment op table (ranges in plan.RANDAUGMENT_RANGES; the `m=5` argument of
# the reference is ignored there too). The PIL calls are the reference's (or pil_ops' pixel-exact equivalents):
# shears and translations are affine maps about the top-left corner, rotation is about the centre, all with PIL's
# default nearest resampling and black fill. Cutout always follows the three ops.
# ---------------------------------------------------------------------------------------------------------------


class RandAugmentOp(NamedTuple):
    name: str
    apply: Callable[[Image.Image, float], Image.Image]
    low: float
    high: float


def _shear_x(img: Image.Image, v: float) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, (1, v, 0, 0, 1, 0))


def _shear_y(img: Image.Image, v: float) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, v, 1, 0))


def _translate_x(img: Image.Image, v: float) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, v * img.width, 0, 1, 0))


def _translate_y(img: Image.Image, v: float) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, v * img.height))


_PIL_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "AutoContrast": lambda img, v: pil_ops.autocontrast(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Contrast": pil_ops.contrast,
    "Equalize": lambda img, v: pil_ops.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: pil_ops.posterize(img, int(v)),
    "Rotate": lambda img, v: img.rotate(v),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "Solarize": pil_ops.solarize,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
}
RANDAUGMENT_OPS: tuple[RandAugmentOp, ...] = tuple(
    RandAugmentOp(name, _PIL_OPS[name], low, high) for name, low, high in RANDAUGMENT_RANGES)


def _cutout(img: Image.Image, box: list[int]) -> Image.Image:
    """Fill the end-exclusive box (x0, y0, x1, y1) with CUTOUT_FILL (nothing when it is empty)."""
    if box[2] <= box[0] or box[3] <= box[1]:
        return img
    img = img.copy()
    img.paste(CUTOUT_FILL, tuple(box))
    return img


def strong_view(img: Image.Image, draws: SampleDraws) -> Image.Image:
    """The strong view of an RGB image (§1.4): crop and flip, three RandAugment ops, Cutout; 32x32 RGB."""
    img = _resized_crop_and_flip(img, draws.strong_box, draws.strong_flip)
    for op_index, magnitude in zip(draws.ops, draws.magnitudes):
        img = RANDAUGMENT_OPS[op_index].apply(img, magnitude)
    return _cutout(img, draws.cutout)


# ---------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------


def _to_chw_uint8(img: Image.Image) -> torch.Tensor:
    # np.asarray of a PIL image is read-only; the transposing copy makes it writable, as torch.from_numpy wants.
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))


class TwoViewDataset(torch.utils.data.Dataset):
    """Weak and strong uint8 views of each training image, keyed by (epoch, index).

    The epoch is part of the key rather than state set on the dataset, so DataLoader workers (which hold copies of
    the dataset) need no per-epoch message: the sampler yields (epoch, index) pairs. A DataLoader with a batch
    sampler calls `__getitems__` with a whole batch's keys, so the plan is drawn once per batch.
    """

    def __init__(self, images: np.ndarray, seed: int, faithful_cutout: bool = False):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(
                f"expected uint8 images of shape [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], "
                f"got {images.dtype} of shape {images.shape}"
            )
        self.images = images
        self.seed = seed
        self.faithful_cutout = faithful_cutout

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        epochs, indices = zip(*keys)
        p = draw_plan(self.seed, torch.tensor(epochs), torch.tensor(indices), self.faithful_cutout)
        out = []
        for index, draws in zip(indices, plan_rows(p)):
            img = Image.fromarray(self.images[index])
            out.append((_to_chw_uint8(weak_view(img, draws)), _to_chw_uint8(strong_view(img, draws)), int(index)))
        return out

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.__getitems__([key])[0]
