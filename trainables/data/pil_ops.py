"""Pixel-exact, faster stand-ins for the PIL and torchvision image ops the training views use.

The reference's views are PIL operations, and we keep its pixels exactly. Several of those ops spend most of their
time in Python loops over 256-entry histograms and lookup tables (ImageOps.autocontrast, equalize, posterize,
solarize; ImageStat's mean inside ImageEnhance.Contrast) or in channel split/merge round trips (torchvision's
adjust_hue and 3-channel grayscale). On a 32x32 image that overhead is most of the cost, and on 2 cores the
augmentation worker competes with the model for CPU. Each function below computes the same lookup table or
intermediate image with numpy (and applies lookup tables with a numpy gather where PIL's point() would spend its
time rounding a Python list), so its output equals the original's byte for byte. tests/test_augment.py checks that
against the originals on random and degenerate images.

All take and return RGB images (the only mode the views produce).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

_LEVELS = np.arange(256)
_BAND_OFFSETS = np.array([0, 256, 512], dtype=np.intp)


def _per_band_histogram(pixels: np.ndarray) -> np.ndarray:
    """[3, 256] level counts of an [H, W, 3] uint8 array (Image.histogram's numbers)."""
    return np.bincount((pixels.reshape(-1, 3) + _BAND_OFFSETS).ravel(), minlength=768).reshape(3, 256)


def _apply_lut(pixels: np.ndarray, lut: np.ndarray) -> Image.Image:
    """Image.point(lut) for an RGB image given as pixels and a [3, 256] table, clipped to [0, 255] as point() does.

    point() spends most of its time rounding a 768-entry Python list; a numpy gather does the same mapping.
    """
    table = np.clip(lut, 0, 255).astype(np.uint8).ravel()
    return Image.fromarray(table.take(pixels + _BAND_OFFSETS))


def _band_extremes(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest level present in each band of a [3, 256] histogram."""
    present = hist > 0
    return present.argmax(axis=1), 255 - present[:, ::-1].argmax(axis=1)


def autocontrast(img: Image.Image) -> Image.Image:
    """ImageOps.autocontrast(img) with its defaults: per band, stretch [min, max] to [0, 255]."""
    pixels = np.asarray(img)
    lo, hi = _band_extremes(_per_band_histogram(pixels))
    stretch = hi > lo  # PIL leaves a band with a single level as it is
    scale = 255.0 / np.where(stretch, hi - lo, 1)
    offset = -lo * scale
    # PIL: int(ix * scale + offset) clipped to [0, 255]; the float64 products and sums are the same IEEE operations
    # in the same order, and astype truncates toward zero as int() does.
    stretched = np.clip((_LEVELS * scale[:, None] + offset[:, None]).astype(np.int64), 0, 255)
    return _apply_lut(pixels, np.where(stretch[:, None], stretched, _LEVELS))


def equalize(img: Image.Image) -> Image.Image:
    """ImageOps.equalize(img): per band, map levels through the cumulative histogram in steps of total/255."""
    pixels = np.asarray(img)
    hist = _per_band_histogram(pixels)
    lo, hi = _band_extremes(hist)
    # PIL: step = (count - count of the highest level present) // 255, or no change when a band has one level.
    step = np.where(hi > lo, (hist.sum(axis=1) - hist[np.arange(3), hi]) // 255, 0)
    # PIL: n starts at step // 2, lut[i] = n // step, then n += h[i]; values above 255 are clipped by point().
    before = np.cumsum(hist, axis=1) - hist
    equalized = (step[:, None] // 2 + before) // np.maximum(step, 1)[:, None]
    return _apply_lut(pixels, np.where(step[:, None] > 0, equalized, _LEVELS))


@functools.cache
def _posterize_lut(bits: int) -> np.ndarray:
    mask = ~(2 ** (8 - bits) - 1)
    return np.tile(_LEVELS & mask, (3, 1))


def posterize(img: Image.Image, bits: int) -> Image.Image:
    """ImageOps.posterize(img, bits): keep the top `bits` bits of each channel."""
    if not 1 <= bits <= 8:
        raise ValueError(f"posterize bits must be in [1, 8], got {bits}")
    return _apply_lut(np.asarray(img), _posterize_lut(bits))


@functools.cache
def _solarize_lut(first_inverted: int) -> np.ndarray:
    return np.tile(np.where(_LEVELS < first_inverted, _LEVELS, 255 - _LEVELS), (3, 1))


def solarize(img: Image.Image, threshold: float) -> Image.Image:
    """ImageOps.solarize(img, threshold): invert every level >= threshold."""
    # For integer levels i, i < threshold exactly when i < ceil(threshold): 257 distinct tables, built once each.
    return _apply_lut(np.asarray(img), _solarize_lut(min(256, max(0, math.ceil(threshold)))))


def contrast(img: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Contrast(img).enhance(factor) (= torchvision's adjust_contrast on PIL images)."""
    gray = np.asarray(img.convert("L"))
    # ImageStat's mean: the sum of levels over the count; the sum is an exact integer either way.
    mean = int(int(gray.sum(dtype=np.int64)) / gray.size + 0.5)
    degenerate = Image.new("L", img.size, mean).convert(img.mode)
    return Image.blend(degenerate, img, factor)


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's adjust_hue on a PIL RGB image: shift the H channel of PIL's HSV by hue_factor * 255 (mod 256)."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    hsv = np.array(img.convert("HSV"))
    hsv[..., 0] += np.int32(hue_factor * 255).astype(np.uint8)  # wraps around, as torchvision's does
    return Image.frombytes("HSV", img.size, hsv.tobytes()).convert("RGB")


def grayscale_rgb(img: Image.Image) -> Image.Image:
    """torchvision's rgb_to_grayscale(img, num_output_channels=3): PIL's L conversion copied into three channels."""
    return img.convert("L").convert("RGB")
