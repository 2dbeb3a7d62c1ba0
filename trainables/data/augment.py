"""Weak and strong training views of a CIFAR image (METHOD.md §1.4), and batched normalisation.

Design:

- Every random draw comes from a per-sample `numpy.random.Generator` built by `sample_rng(seed, epoch, index)`.
  The reference drew from torch's, Python's and numpy's global RNGs inside DataLoader workers, so its views
  depended on the worker count and, under old PyTorch, repeated across workers (§11.14). Here the views of sample
  `index` in `epoch` depend on those three numbers only: any worker count, and a resumed run, redraw them exactly.
- torchvision's transform classes draw their parameters from torch's global RNG, so the parameter sampling
  (RandomResizedCrop, flip, ColorJitter, grayscale) is re-implemented here on the explicit generator. The pixel
  work is PIL's, through the same calls torchvision.transforms.functional makes on PIL images.
- Ops whose PIL/torchvision versions are slow in Python (autocontrast, equalize, posterize, solarize, contrast,
  hue, grayscale) come from `pil_ops`, which reproduces their pixels exactly at a fraction of the cost.
- The dataset returns uint8 CHW tensors (a quarter of the float32 bytes through worker queues and pinned memory).
  `normalize` turns a whole batch into float32 later, on whichever device, bit-identical to ToTensor+Normalize.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageEnhance

from trainables.data import pil_ops

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.243, 0.261)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

IMAGE_SIZE = 32


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
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    # In place on the fresh float copy: one allocation per batch instead of three.
    return images.float().div_(255).sub_(mean_t).div_(std_t)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The per-sample generator: np.random.default_rng([seed, epoch, index]) (SeedSequence).

    Augmentation of sample `index` in `epoch` depends only on these three numbers, so results do not depend on
    DataLoader worker count and a resumed run redraws exactly the same views.
    """
    return np.random.default_rng([seed, epoch, index])


# ---------------------------------------------------------------------------------------------------------------
# Weak view: RandomResizedCrop(32, (0.2, 1)), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) w.p. 0.8, grayscale w.p. 0.2.
# Parameter sampling mirrors torchvision's get_params, but on `rng` (torchvision's classes use torch's global RNG).
# ---------------------------------------------------------------------------------------------------------------

CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
FLIP_PROB = 0.5
JITTER_PROB = 0.8
JITTER_BRIGHTNESS = (0.6, 1.4)  # torchvision's [max(0, 1 - 0.4), 1 + 0.4]
JITTER_CONTRAST = (0.6, 1.4)
JITTER_SATURATION = (0.6, 1.4)
JITTER_HUE = (-0.1, 0.1)
GRAYSCALE_PROB = 0.2


def _random_resized_crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the crop, by torchvision's RandomResizedCrop.get_params algorithm."""
    area = height * width
    log_ratio_low, log_ratio_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target_area = area * rng.uniform(*CROP_SCALE)
        aspect_ratio = math.exp(rng.uniform(log_ratio_low, log_ratio_high))
        crop_w = int(round(math.sqrt(target_area * aspect_ratio)))
        crop_h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    # After 10 misses torchvision falls back to the largest central crop whose aspect ratio is in range.
    in_ratio = width / height
    if in_ratio < min(CROP_RATIO):
        crop_w = width
        crop_h = int(round(crop_w / min(CROP_RATIO)))
    elif in_ratio > max(CROP_RATIO):
        crop_h = height
        crop_w = int(round(crop_h * max(CROP_RATIO)))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _random_resized_crop_and_flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    top, left, crop_h, crop_w = _random_resized_crop_box(img.width, img.height, rng)
    # The PIL calls torchvision's resized_crop(..., BILINEAR) and hflip make, without their per-call argument checks
    # and API-usage logging, which cost more than the pixel work on a 32x32 image.
    img = img.crop((left, top, left + crop_w, top + crop_h)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    if rng.random() < FLIP_PROB:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _color_jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    # As torchvision's ColorJitter: a random order of the four adjustments, all factors drawn up front.
    order = rng.permutation(4)
    brightness = rng.uniform(*JITTER_BRIGHTNESS)
    contrast = rng.uniform(*JITTER_CONTRAST)
    saturation = rng.uniform(*JITTER_SATURATION)
    hue = rng.uniform(*JITTER_HUE)
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


def weak_view(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The weak view of an RGB image (§1.4), as a 32x32 RGB image."""
    img = _random_resized_crop_and_flip(img, rng)
    if rng.random() < JITTER_PROB:
        img = _color_jitter(img, rng)
    if rng.random() < GRAYSCALE_PROB:
        img = pil_ops.grayscale_rgb(img)
    return img


# ---------------------------------------------------------------------------------------------------------------
# Strong view, part 1: the reference's RandomAugment op table. Each op gets a magnitude v drawn uniformly in
# [low, high) on every call; the `m=5` argument of the reference is ignored there too. The PIL calls are the
# reference's (or pil_ops' pixel-exact equivalents): shears and translations are affine maps about the top-left
# corner, rotation is about the centre, all with PIL's default nearest resampling and black fill.
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


RANDAUGMENT_OPS: tuple[RandAugmentOp, ...] = (
    RandAugmentOp("AutoContrast", lambda img, v: pil_ops.autocontrast(img), 0.0, 1.0),
    RandAugmentOp("Brightness", lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.05, 0.95),
    RandAugmentOp("Color", lambda img, v: ImageEnhance.Color(img).enhance(v), 0.05, 0.95),
    RandAugmentOp("Contrast", pil_ops.contrast, 0.05, 0.95),
    RandAugmentOp("Equalize", lambda img, v: pil_ops.equalize(img), 0.0, 1.0),
    RandAugmentOp("Identity", lambda img, v: img, 0.0, 1.0),
    RandAugmentOp("Posterize", lambda img, v: pil_ops.posterize(img, int(v)), 4.0, 8.0),
    RandAugmentOp("Rotate", lambda img, v: img.rotate(v), -30.0, 30.0),
    RandAugmentOp("Sharpness", lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.05, 0.95),
    RandAugmentOp("ShearX", _shear_x, -0.3, 0.3),
    RandAugmentOp("ShearY", _shear_y, -0.3, 0.3),
    RandAugmentOp("Solarize", pil_ops.solarize, 0.0, 256.0),
    RandAugmentOp("TranslateX", _translate_x, -0.3, 0.3),
    RandAugmentOp("TranslateY", _translate_y, -0.3, 0.3),
)
NUM_RANDAUGMENT_OPS = 3


def _rand_augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    # With replacement, like the reference's random.choices: the same op can be applied twice or three times.
    for op_index in rng.integers(len(RANDAUGMENT_OPS), size=NUM_RANDAUGMENT_OPS):
        op = RANDAUGMENT_OPS[op_index]
        img = op.apply(img, rng.uniform(op.low, op.high))
    return img


# ---------------------------------------------------------------------------------------------------------------
# Strong view, part 2: Cutout, always applied after the three ops.
# ---------------------------------------------------------------------------------------------------------------

CUTOUT_MAX_FRACTION = 0.5
CUTOUT_FILL = (125, 123, 114)


def _cutout_centre(rng: np.random.Generator, faithful: bool) -> tuple[float, float]:
    if faithful:
        # The reference's np.random.uniform(32) means low=32, high=1.0, i.e. 32 + (1 - 32) * U on (1, 32].
        # numpy's Generator.uniform refuses high < low, so the same arithmetic is spelled out.
        return 32.0 - 31.0 * rng.random(), 32.0 - 31.0 * rng.random()
    return rng.uniform(0.0, IMAGE_SIZE), rng.uniform(0.0, IMAGE_SIZE)


def _cutout_box(side: float, centre_x: float, centre_y: float, faithful: bool) -> tuple[int, int, int, int]:
    """The filled pixels as an end-exclusive box (x0, y0, x1, y1), clipped to the image.

    Both modes keep the reference's corner rule int(max(0, centre - side / 2)), so a box near the left or top
    border is pushed inside rather than shrunk. The reference then ends at min(32, corner + side) and PIL's
    rectangle truncates that to an integer and fills it inclusively: one pixel more than `side` on each axis.
    The fix ends the box at corner + int(side), exclusive, so it is int(side) wide unless clipped at 32.
    """
    x0 = int(max(0.0, centre_x - side / 2.0))
    y0 = int(max(0.0, centre_y - side / 2.0))
    if faithful:
        x1 = min(IMAGE_SIZE, int(min(IMAGE_SIZE, x0 + side)) + 1)
        y1 = min(IMAGE_SIZE, int(min(IMAGE_SIZE, y0 + side)) + 1)
    else:
        x1 = min(IMAGE_SIZE, x0 + int(side))
        y1 = min(IMAGE_SIZE, y0 + int(side))
    return x0, y0, x1, y1


def _cutout(img: Image.Image, rng: np.random.Generator, faithful: bool) -> Image.Image:
    """Fill a square of side v * 32, v ~ U[0, 0.5), with CUTOUT_FILL; draws the side, then the centre x and y."""
    side = rng.random() * CUTOUT_MAX_FRACTION * IMAGE_SIZE
    centre_x, centre_y = _cutout_centre(rng, faithful)
    if side <= 0.0:
        # The reference skips Cutout for v = 0; its inclusive rectangle would otherwise still fill one pixel.
        return img
    img = img.copy()
    img.paste(CUTOUT_FILL, _cutout_box(side, centre_x, centre_y, faithful))
    return img


def strong_view(img: Image.Image, rng: np.random.Generator, faithful_cutout: bool = False) -> Image.Image:
    """The strong view of an RGB image (§1.4): crop and flip, three RandAugment ops, Cutout; 32x32 RGB."""
    img = _random_resized_crop_and_flip(img, rng)
    img = _rand_augment(img, rng)
    return _cutout(img, rng, faithful_cutout)


# ---------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------


def _to_chw_uint8(img: Image.Image) -> torch.Tensor:
    # np.asarray of a PIL image is read-only; the transposing copy makes it writable, as torch.from_numpy wants.
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))


class TwoViewDataset(torch.utils.data.Dataset):
    """Weak and strong uint8 views of each training image, keyed by (epoch, index).

    The epoch is part of the key rather than state set on the dataset, so DataLoader workers (which hold copies of
    the dataset) need no per-epoch message: the sampler yields (epoch, index) pairs.
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

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, index = key
        rng = sample_rng(self.seed, epoch, index)
        img = Image.fromarray(self.images[index])
        weak = weak_view(img, rng)
        strong = strong_view(img, rng, self.faithful_cutout)
        return _to_chw_uint8(weak), _to_chw_uint8(strong), int(index)
