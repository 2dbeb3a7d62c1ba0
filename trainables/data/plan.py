"""`draw_plan(seed, epochs, indices)`: every random choice of a batch's weak and strong views, as tensors.

Both view implementations consume the same plan: the PIL path (`augment.py`, one image at a time in loader
workers) and the batched tensor path (`tensor_views.py`, on the trial's device). A plan row depends only on
(seed, epoch, sample index): each draw is a counter-based uniform, SplitMix64 of a key hashed from those three
numbers and the draw's slot number. So views do not depend on batch composition or worker count, a resumed run
redraws them exactly, and a whole batch is drawn with a few vectorised int64 ops instead of one generator per
sample. SplitMix64 is written out here because torch has no counter-based generator with per-element keys.

The plan is drawn on the CPU in float64 (a few hundred numbers per batch) and moved to the device afterwards, so
CPU and CUDA runs see bit-identical plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

IMAGE_SIZE = 32

# Weak view: RandomResizedCrop(32, (0.2, 1)), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) w.p. 0.8, grayscale w.p. 0.2.
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback
FLIP_PROB = 0.5
JITTER_PROB = 0.8
JITTER_BRIGHTNESS = (0.6, 1.4)  # torchvision's [max(0, 1 - 0.4), 1 + 0.4]
JITTER_CONTRAST = (0.6, 1.4)
JITTER_SATURATION = (0.6, 1.4)
JITTER_HUE = (-0.1, 0.1)
GRAYSCALE_PROB = 0.2

# Strong view: 3 of the 14 RandAugment ops with replacement, magnitude uniform in [low, high) each time (§1.4).
# The order of this table is the op id in a plan.
RANDAUGMENT_RANGES: tuple[tuple[str, float, float], ...] = (
    ("AutoContrast", 0.0, 1.0),
    ("Brightness", 0.05, 0.95),
    ("Color", 0.05, 0.95),
    ("Contrast", 0.05, 0.95),
    ("Equalize", 0.0, 1.0),
    ("Identity", 0.0, 1.0),
    ("Posterize", 4.0, 8.0),
    ("Rotate", -30.0, 30.0),
    ("Sharpness", 0.05, 0.95),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0.0, 256.0),
    ("TranslateX", -0.3, 0.3),
    ("TranslateY", -0.3, 0.3),
)
OP_ID = {name: i for i, (name, _, _) in enumerate(RANDAUGMENT_RANGES)}
NUM_RANDAUGMENT_OPS = 3

# Cutout: side v * 32 with v ~ U[0, 0.5), fill (125, 123, 114), always after the three ops.
CUTOUT_MAX_FRACTION = 0.5
CUTOUT_FILL = (125, 123, 114)

# Uniform slots of one sample; fixed, so adding a draw at the end never shifts the others.
_SLOT_WEAK_CROP = 0  # 2 per try (scale, log-ratio), then top, left
_SLOT_STRONG_CROP = _SLOT_WEAK_CROP + 2 * CROP_TRIES + 2
_SLOT_WEAK_FLIP = _SLOT_STRONG_CROP + 2 * CROP_TRIES + 2
_SLOT_STRONG_FLIP = _SLOT_WEAK_FLIP + 1
_SLOT_JITTER = _SLOT_STRONG_FLIP + 1  # apply?, 4 order keys, 4 factors
_SLOT_GRAY = _SLOT_JITTER + 9
_SLOT_OPS = _SLOT_GRAY + 1  # 3 op ids, 3 magnitudes
_SLOT_CUTOUT = _SLOT_OPS + 2 * NUM_RANDAUGMENT_OPS  # side, centre x, centre y
NUM_SLOTS = _SLOT_CUTOUT + 3

_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)
_VIEW_STREAM = 0x7669657773  # 'views': keeps these keys apart from other users of SplitMix64 on the same seed


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output for state x (int64 tensor holding uint64 bits); int64 products wrap mod 2^64."""
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MUL1
    z = (z ^ _shr(z, 27)) * _MUL2
    return z ^ _shr(z, 31)


def sample_keys(seed: int, epochs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """int64 key of each (seed, epoch, index) triple, chained through SplitMix64 so nearby triples decorrelate."""
    base = splitmix64(torch.tensor([_signed((seed ^ _VIEW_STREAM) & _MASK64)], dtype=torch.int64))
    return splitmix64(splitmix64(base + epochs.to(torch.int64)) + indices.to(torch.int64))


def uniforms(keys: torch.Tensor, num_slots: int = NUM_SLOTS) -> torch.Tensor:
    """[B, num_slots] float64 uniforms on [0, 1): the top 53 bits of SplitMix64(key + (slot + 1) * golden)."""
    slots = torch.arange(1, num_slots + 1, dtype=torch.int64) * _GOLDEN
    bits = splitmix64(keys[:, None] + slots[None, :])
    return _shr(bits, 11).to(torch.float64) * 2.0 ** -53


@dataclass(frozen=True)
class ViewPlan:
    """The random choices behind one batch's weak and strong views; every field has the batch as first dim.

    Boxes are (top, left, height, width) of RandomResizedCrop in the 32x32 source; cutout is an end-exclusive
    (x0, y0, x1, y1) box, empty (x1 == x0) when its side drew 0. Op ids index RANDAUGMENT_RANGES.
    """

    weak_box: torch.Tensor  # int64 [B, 4]
    weak_flip: torch.Tensor  # bool [B]
    jitter: torch.Tensor  # bool [B]: ColorJitter applied
    jitter_order: torch.Tensor  # int64 [B, 4]: 0 brightness, 1 contrast, 2 saturation, 3 hue, in application order
    jitter_factors: torch.Tensor  # float64 [B, 4]: brightness, contrast, saturation, hue
    gray: torch.Tensor  # bool [B]
    strong_box: torch.Tensor  # int64 [B, 4]
    strong_flip: torch.Tensor  # bool [B]
    ops: torch.Tensor  # int64 [B, 3]
    magnitudes: torch.Tensor  # float64 [B, 3]
    cutout: torch.Tensor  # int64 [B, 4]

    def __len__(self) -> int:
        return len(self.ops)

    def to(self, device: torch.device | str) -> ViewPlan:
        return ViewPlan(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def select(self, rows: torch.Tensor | slice | int) -> ViewPlan:
        """The plan of some samples (a slice or index tensor; an int keeps a batch of one)."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1)
        return ViewPlan(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def _resized_crop_boxes(u: torch.Tensor) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params on a 32x32 image, for all samples at once.

    u: [B, 2 * CROP_TRIES + 2] uniforms. The first try whose rounded box fits wins; the box position is drawn
    once after it. After 10 misses torchvision takes the largest central box in the ratio range: the whole square.
    """
    size = IMAGE_SIZE
    tries = u[:, : 2 * CROP_TRIES].view(-1, CROP_TRIES, 2)
    area = size * size * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * tries[..., 0])
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    # torch.round rounds half to even, like Python's round() in torchvision.
    w = torch.round(torch.sqrt(area * ratio)).to(torch.int64)
    h = torch.round(torch.sqrt(area / ratio)).to(torch.int64)
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = torch.where(fits.any(1), fits.to(torch.int8).argmax(1), -1)
    pick = first.clamp_min(0)[:, None]
    h = torch.where(first >= 0, h.gather(1, pick)[:, 0], size)
    w = torch.where(first >= 0, w.gather(1, pick)[:, 0], size)
    top = torch.floor(u[:, -2] * (size - h + 1).to(torch.float64)).to(torch.int64)
    left = torch.floor(u[:, -1] * (size - w + 1).to(torch.float64)).to(torch.int64)
    return torch.stack([top, left, h, w], dim=1)


def _uniform(u: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor) -> torch.Tensor:
    return low + (high - low) * u


def cutout_centre(u: torch.Tensor, faithful: bool) -> torch.Tensor:
    """One coordinate of the Cutout centre from uniforms u on [0, 1): U[0, 32), or faithfully the reference's
    np.random.uniform(32), which means low=32, high=1.0: 32 + (1 - 32) * u, on (1, 32]."""
    return 32.0 - 31.0 * u if faithful else u * IMAGE_SIZE


def cutout_boxes(side: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, faithful: bool) -> torch.Tensor:
    """End-exclusive (x0, y0, x1, y1) Cutout boxes, clipped to the image; empty where side == 0.

    Both modes keep the reference's corner rule int(max(0, centre - side / 2)), so a box near the left or top
    border is pushed inside rather than shrunk. The reference then ends at min(32, corner + side) and PIL's
    rectangle truncates that to an integer and fills it inclusively: one pixel more than `side` on each axis.
    The fix ends the box at corner + int(side), exclusive, so it is int(side) wide unless clipped at 32.
    """
    x0 = torch.clamp(cx - side / 2.0, min=0.0).to(torch.int64)
    y0 = torch.clamp(cy - side / 2.0, min=0.0).to(torch.int64)
    if faithful:
        x1 = (torch.clamp(x0 + side, max=IMAGE_SIZE).to(torch.int64) + 1).clamp_max(IMAGE_SIZE)
        y1 = (torch.clamp(y0 + side, max=IMAGE_SIZE).to(torch.int64) + 1).clamp_max(IMAGE_SIZE)
    else:
        x1 = (x0 + side.to(torch.int64)).clamp_max(IMAGE_SIZE)
        y1 = (y0 + side.to(torch.int64)).clamp_max(IMAGE_SIZE)
    # The reference skips Cutout for v = 0; its inclusive rectangle would otherwise still fill one pixel.
    empty = side <= 0.0
    return torch.stack([x0, y0, torch.where(empty, x0, x1), torch.where(empty, y0, y1)], dim=1)


def draw_plan(seed: int, epochs: torch.Tensor | int, indices: torch.Tensor, faithful_cutout: bool = False) -> ViewPlan:
    """The plan for samples `indices` (int64 [B]) in `epochs` (one int or [B]), on the CPU."""
    indices = torch.as_tensor(indices, dtype=torch.int64).cpu().reshape(-1)
    epochs = torch.as_tensor(epochs, dtype=torch.int64).cpu().expand(indices.shape)
    u = uniforms(sample_keys(seed, epochs, indices))

    def slot(start: int, n: int = 1) -> torch.Tensor:
        return u[:, start:start + n] if n > 1 else u[:, start]

    jitter_u = slot(_SLOT_JITTER, 9)
    factors = torch.stack([
        _uniform(jitter_u[:, 5], *JITTER_BRIGHTNESS), _uniform(jitter_u[:, 6], *JITTER_CONTRAST),
        _uniform(jitter_u[:, 7], *JITTER_SATURATION), _uniform(jitter_u[:, 8], *JITTER_HUE)], dim=1)
    # A uniformly random order: the argsort of 4 iid uniforms (ties have probability ~2^-53).
    order = torch.argsort(jitter_u[:, 1:5], dim=1)

    op_u = slot(_SLOT_OPS, 2 * NUM_RANDAUGMENT_OPS)
    ops = torch.floor(op_u[:, :NUM_RANDAUGMENT_OPS] * len(RANDAUGMENT_RANGES)).to(torch.int64)
    low = torch.tensor([r[1] for r in RANDAUGMENT_RANGES], dtype=torch.float64)[ops]
    high = torch.tensor([r[2] for r in RANDAUGMENT_RANGES], dtype=torch.float64)[ops]
    magnitudes = _uniform(op_u[:, NUM_RANDAUGMENT_OPS:], low, high)

    cut_u = slot(_SLOT_CUTOUT, 3)
    side = cut_u[:, 0] * (CUTOUT_MAX_FRACTION * IMAGE_SIZE)
    cx, cy = cutout_centre(cut_u[:, 1], faithful_cutout), cutout_centre(cut_u[:, 2], faithful_cutout)

    return ViewPlan(
        weak_box=_resized_crop_boxes(slot(_SLOT_WEAK_CROP, 2 * CROP_TRIES + 2)),
        weak_flip=slot(_SLOT_WEAK_FLIP) < FLIP_PROB,
        jitter=jitter_u[:, 0] < JITTER_PROB,
        jitter_order=order,
        jitter_factors=factors,
        gray=slot(_SLOT_GRAY) < GRAYSCALE_PROB,
        strong_box=_resized_crop_boxes(slot(_SLOT_STRONG_CROP, 2 * CROP_TRIES + 2)),
        strong_flip=slot(_SLOT_STRONG_FLIP) < FLIP_PROB,
        ops=ops,
        magnitudes=magnitudes,
        cutout=cutout_boxes(side, cx, cy, faithful_cutout),
    )
