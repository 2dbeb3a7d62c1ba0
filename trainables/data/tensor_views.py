"""The weak and strong views (METHOD.md §1.4) as batched tensor ops with per-sample parameters, on any device.

The input is a uint8 [B, 3, 32, 32] batch on the trial's device and a `plan.ViewPlan` drawn on the CPU; the
output is the two uint8 views, pixel for pixel what the PIL path (`augment.py`) makes from the same plan, up to
the bounds tests/test_tensor_views.py asserts. No maintained library applies a *different* op to each sample of a
batch with these magnitudes, hence this module.

How it stays fast and close to PIL:
- Ops run only on the samples that drew them: before each op slot the batch is reordered (one gather) so that
  the samples of one op family are contiguous, and each family is one batched call on its slice. Every per-level
  map (brightness and contrast, which blend with a per-sample constant, autocontrast, equalize, posterize,
  solarize) becomes a per-sample 256-entry table, and all of a slot's tables are applied in one lookup; the five
  affine ops are one gather. The weak and strong views are one batch of rows, so a slot's calls serve both.
- The host never waits for the device: what a call needs from the CPU plan (row orders, crop matrix rows,
  per-sample factors, affine data, the tables of the plan alone, boxes) is scheduled first and sent in one
  pinned copy, and nothing is read back (tests/test_tensor_views.py counts the copies, and the device's ops, on
  the meta device).
- PIL's integer arithmetic is mirrored: ImageEnhance's blend in float32 with truncation, RGB->L with PIL's
  16-bit fixed-point weights, the 3x3 SMOOTH kernel with PIL's rounding, HSV in PIL's float/double mix (through
  small tables factored out of it, see `_hue_tables`), per-sample histograms for autocontrast/equalize.
- Resampling follows PIL's own arithmetic rather than grid_sample's: the resized crop is PIL's separable bilinear
  resample (22-bit fixed-point coefficients, 8-bit rounding between the horizontal and vertical pass) written as
  two small per-sample matrix products; the flip is folded into the horizontal matrix. Rotate, shear and
  translate are PIL's nearest-neighbour affine map with its pixel-centre convention, as one gather.
- CPU kernels matter at this size: torch.where and float -> uint8 casts are several times slower than 0/1
  arithmetic and casts through int16, so the hot paths use those.
"""

from __future__ import annotations

import functools
import math

import torch

from ..transfer import to_device
from .plan import CUTOUT_FILL, IMAGE_SIZE, OP_ID, ViewPlan

_PRECISION_BITS = 22  # PIL's Resample.c: 32 - 8 bits of pixel - 2 bits of headroom
_ONE = float(1 << _PRECISION_BITS)


# ---------------------------------------------------------------------------------------------------- helpers


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[n] -> [n, 1, 1, 1] on like's device, for broadcasting over images."""
    return values.to(like.device, non_blocking=True).view(-1, 1, 1, 1)


def _div(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """Correctly rounded a / b. torch computes scalar / tensor as reciprocal times scalar, and tensor / scalar as
    tensor times the scalar's reciprocal: both can be 1 ulp off the C division PIL does. A Python number becomes
    a filled tensor on the device (torch.tensor(number, device=...) would be a host -> device copy)."""
    like = a if isinstance(a, torch.Tensor) else b
    a, b = (t.to(torch.float64) if isinstance(t, torch.Tensor) else torch.full_like(like, t, dtype=torch.float64)
            for t in (a, b))
    a, b = torch.broadcast_tensors(a, b)
    return torch.div(a, b.contiguous())


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, as float32 [n, 1, H, W] (uint8 or float32 x).
    The sum stays below 2^24, so float32 holds it exactly and the shift is an exact floor(sum * 2^-16)."""
    x = x.to(torch.float32)
    total = x[:, 0:1] * 19595
    return total.add_(x[:, 1:2], alpha=38470).add_(x[:, 2:3], alpha=7471).add_(0x8000).mul_(2.0 ** -16).floor_()


def _blend(degenerate: torch.Tensor | float, img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, img, factor) for 8-bit bands: in1 + alpha * (in2 - in1) with a C float alpha,
    clipped to [0, 255] and truncated. degenerate may broadcast (a constant per sample, or one gray band) or be a
    number (0.0 for brightness: exact in float32)."""
    alpha = _per_sample(factor.to(torch.float32), img)
    d = degenerate.to(torch.float32) if isinstance(degenerate, torch.Tensor) else float(degenerate)
    out = (img.to(torch.float32) - d).mul_(alpha).add_(d)  # img must have the output's shape (in place)
    return out.clamp_(0, 255).to(torch.int16).to(torch.uint8)  # via int16: float -> uint8 is slow on CPUs


# ------------------------------------------------------------------------------------------ resized crop + flip


def _resample_taps(start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's bilinear taps for resizing the source span [start, start + length) to 32 pixels: source positions
    (int64 [n, 32, 3]) and fixed-point coefficients (int32 [n, 32, 3], units of 2^-22), outputs reversed where
    flip. Mirrors Resample.c's precompute_coeffs and normalize_coeffs_8bpc: crops are at most 32 wide, so the
    filter is never widened (support 1, at most 3 taps)."""
    scale = length.to(torch.float64) / IMAGE_SIZE
    center = (torch.arange(IMAGE_SIZE, dtype=torch.float64) + 0.5)[None, :] * scale[:, None]  # [n, 32]
    xmin = (center - 0.5).to(torch.int64).clamp_min(0)  # C's (int)(center - support + 0.5) truncates
    xmax = torch.minimum((center + 1.5).to(torch.int64), length[:, None])
    pos = xmin[..., None] + torch.arange(3)  # [n, 32, 3]
    w = (1.0 - ((pos.to(torch.float64) - center[..., None]) + 0.5).abs()).clamp_min(0.0)
    w = torch.where(pos < xmax[..., None], w, 0.0)
    total = (w[..., 0] + w[..., 1]) + w[..., 2]  # C sums left to right
    k = torch.floor(0.5 + w / total[..., None] * _ONE).to(torch.int32)
    source = (start[:, None, None] + pos).clamp(0, IMAGE_SIZE - 1)
    if flip is not None:
        source = torch.where(flip[:, None, None], source.flip(1), source)
        k = torch.where(flip[:, None, None], k.flip(1), k)
    return source, k


@functools.cache
def _resample_matrices(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every crop's coefficient matrix, [2 flips * 32 starts * 33 lengths, 32 out, 32 in], built once: a batch then
    takes its matrices with one index_select instead of recomputing the taps. The coefficients are PIL's 22-bit
    integers times 2^-22 (exact in float32 and float64), so a product sums to PIL's fixed-point sum / 2^22."""
    flip, start, length = torch.meshgrid(torch.arange(2), torch.arange(IMAGE_SIZE), torch.arange(IMAGE_SIZE + 1),
                                         indexing="ij")
    flip, start, length = flip.reshape(-1).bool(), start.reshape(-1), length.reshape(-1)
    source, k = _resample_taps(start, length.clamp_min(1), flip)
    matrix = torch.zeros(len(start), IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float64)
    matrix.scatter_add_(2, source, k.to(torch.float64) / _ONE)
    return matrix.to(device=device, dtype=dtype)


def _crop_index(boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """int64 [2, n]: each sample's rows in `_resample_matrices`, horizontal (with the flip) then vertical."""
    span = IMAGE_SIZE * (IMAGE_SIZE + 1)
    cols = flips.to(torch.int64) * span + boxes[:, 1] * (IMAGE_SIZE + 1) + boxes[:, 3]
    return torch.stack([cols, boxes[:, 0] * (IMAGE_SIZE + 1) + boxes[:, 2]])


def resized_crop_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """PIL's img.crop(box).resize((32, 32), BILINEAR), then the horizontal flip, per sample.

    boxes: int64 [n, 4] (top, left, height, width); flips: bool [n].

    Each pass is a batched matrix product (the fastest per-sample gather of taps there is on a CPU), rounded as
    PIL rounds, (sum + 2^21) >> 22: floor(sum + 0.5) on the scaled sum. The weights are non-negative and sum to
    one, so no clipping is needed. In float32 the 22-bit coefficients times 8-bit pixels are not exact: a sum can
    land on the other side of PIL's rounding point when it is within ~1e-5 of a half, which the parity test
    bounds. Where TF32 matmuls are switched on (CUDA), float32 would lose far more, so the products run in float64.
    """
    return _resized_crops(_crop_source(images), _crop_index(boxes, flips))


def _crop_dtype(device: torch.device) -> torch.dtype:
    return torch.float64 if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else torch.float32


def _crop_source(images: torch.Tensor) -> torch.Tensor:
    """The uint8 [n, c, h, w] batch as floats in [n, (h, c), w] order, converted once for both views' crops: in
    this order each pass is one plain bmm (rows @ [h, (c, w)] needs no per-channel broadcast of the matrices)."""
    n, c, h, w = images.shape
    source = torch.empty(n, h, c, w, dtype=_crop_dtype(images.device), device=images.device)
    return source.copy_(images.permute(0, 2, 1, 3)).view(n, h * c, w)


def _resized_crops(source: torch.Tensor, crop_index: torch.Tensor) -> torch.Tensor:
    """The crops of `_crop_index` columns [2, k n] of the n-image `source`: k crops of each image, the j-th crop
    of every image in rows [j n, (j + 1) n) of the uint8 [k n, 3, 32, 32] result."""
    n, size = len(source), IMAGE_SIZE
    crops = crop_index.shape[1] // n
    matrices = _resample_matrices(source.device, source.dtype).index_select(
        0, crop_index.to(source.device, non_blocking=True).view(-1)).view(2, crops, n, size, size)
    out = torch.empty(crops * n, 3, size, size, dtype=torch.uint8, device=source.device)
    for j, (cols, rows) in enumerate(matrices.unbind(1)):  # a crop at a time: float temporaries stay in cache
        # Horizontal pass first, rounded to 8 bits, then the vertical pass: PIL's order and rounding.
        x = torch.bmm(source, cols.transpose(1, 2)).add_(0.5).floor_()  # [n, (h, c), w']
        x = torch.bmm(rows, x.view(n, size, 3 * size)).add_(0.5)  # [n, h', (c, w')]
        # truncation = floor here (all >= 0.5); via int16: float -> uint8 is slow on CPUs
        int16 = torch.empty(n, 3, size, size, dtype=torch.int16, device=source.device)
        out[j * n:(j + 1) * n] = int16.copy_(x.view(n, size, 3, size).permute(0, 2, 1, 3))
    return out


# ---------------------------------------------------------------------------------------------- colour ops


def _level_blend(degenerate: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
    """`_blend` over the 256 levels against a per-sample constant: ImageEnhance's map as a [n, 1, 256] table.
    A blend with a constant is a per-level function, so applying the table gives PIL's pixels exactly."""
    levels = torch.arange(256, dtype=torch.float32, device=factor.device).expand(len(factor), 1, 1, 256)
    return _blend(degenerate, levels, factor).view(-1, 1, 256)


def _brightness_lut(factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black (a table of the factor alone, built where the factor is)."""
    return _level_blend(0.0, factor)


def _contrast_lut(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with the L image's mean, rounded as int(mean + 0.5)."""
    gray = _luma(x)
    mean = torch.floor(gray.sum(dim=(1, 2, 3), dtype=torch.float64) / gray[0].numel() + 0.5)  # exact sums
    return _level_blend(mean.view(-1, 1, 1, 1), factor.to(x.device))


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _apply_luts(x, _brightness_lut(factor).to(x.device))


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _apply_luts(x, _contrast_lut(x, factor))


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Color (= torchvision's adjust_saturation on PIL): blend with the L image."""
    xf = x.to(torch.float32)
    return _blend(_luma(xf), xf, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (3x3, centre 5, others 1, /13, rounded); PIL's
    filter leaves the 1-px border as it is, and so does this. Sums of 8-bit levels are exact in float32, and so
    is floor((2 acc + 13) / 26) = floor(acc / 13 + 0.5) (the quotient is never within 2^-24 of an integer)."""
    xf = x.to(torch.float32)
    rows = (xf[:, :, :-2] + xf[:, :, 1:-1]).add_(xf[:, :, 2:])
    acc = (rows[..., :-2] + rows[..., 1:-1]).add_(rows[..., 2:])
    acc.add_(xf[:, :, 1:-1, 1:-1], alpha=4)  # the 3x3 box sum plus 4 more of the centre: the SMOOTH kernel
    smooth = xf.clone()
    smooth[:, :, 1:-1, 1:-1] = acc.mul_(2).add_(13).div_(26).floor_()  # div's floor mode is slow on CPUs
    return _blend(smooth, xf, factor)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """PIL's L conversion copied into three channels."""
    return _luma(x).to(torch.int16).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def _rgb_to_hsv(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's rgb2hsv (Convert.c) on int32 planes -> (H, S) int32; V is max(r, g, b). PIL mixes C float and double;
    each step here uses the same precision (float32 where PIL stores a float, float64 with double constants)."""
    f32, f64 = torch.float32, torch.float64
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    cr = (maxc - minc).to(f32)
    safe_cr = torch.where(cr > 0, cr, 1.0)
    s = cr / maxc.clamp_min(1).to(f32)
    rc, gc, bc = ((maxc - c).to(f32) / safe_cr for c in (r, g, b))
    h = torch.where(r == maxc, bc - gc,
                    torch.where(g == maxc, (2.0 + rc.to(f64) - bc.to(f64)).to(f32),
                                (4.0 + gc.to(f64) - rc.to(f64)).to(f32)))
    h = torch.fmod(_div(h.to(f64), 6.0) + 1.0, 1.0).to(f32)
    grey = maxc == minc
    uh = torch.where(grey, 0, (h.to(f64) * 255.0).to(torch.int32).clamp(0, 255))
    us = torch.where(grey, 0, (s.to(f64) * 255.0).to(torch.int32).clamp(0, 255))
    return uh, us


_HUE_FIXED_BITS = 23  # v * factor in units of 2^-23: exact (see _hue_tables) and within int32 (255 * 2^23 < 2^31)


def _hsv_to_rgb_factors() -> torch.Tensor:
    """float64 [3 channels, 256 H, 256 S]: the C double each channel's V is multiplied by in PIL's hsv2rgb (see
    `_hue_tables`)."""
    levels = torch.arange(256, dtype=torch.int32)
    f32, f64 = torch.float32, torch.float64
    hd = _div(levels.to(f64) * 6.0, 255.0)  # H: i = floor(H * 6 / 255), f the rest, as hsv2rgb
    sector = torch.floor(hd)
    frac = (hd - sector).to(f32)
    fs = _div(levels.to(f32).to(f64), 255.0).to(f32)  # S / 255 as a C float
    fs_h, frac_s = fs.view(1, 256).expand(256, 256), frac.view(256, 1).expand(256, 256)
    factors = torch.stack([(1.0 - fs_h.to(f64)),
                           1.0 - (fs_h * frac_s).to(f64),
                           1.0 - fs_h.to(f64) * (1.0 - frac_s.to(f64))], dim=-1)  # [H, S, (p, q, t)]
    # hsv2rgb's switch on i % 6 picks, per channel, v (factor 1: v * 1.0 rounds to v) or p, q, t; S = 0 gives v.
    ones = torch.ones(256, 256, dtype=f64)
    p, q, t = factors.unbind(-1)
    switch = ((ones, t, p), (q, ones, p), (p, ones, t), (p, q, ones), (t, p, ones), (ones, p, q))
    sector = sector.to(torch.int64).remainder(6).view(256, 1).expand(256, 256)
    channel_factors = torch.stack([torch.stack(row) for row in switch])  # [6 sectors, 3 channels, H, S]
    channel_factors = channel_factors.gather(0, sector.expand(1, 3, 256, 256))[0]  # [3, H, S]
    channel_factors[:, :, 0] = 1.0  # S = 0
    return channel_factors


@functools.cache
def _hue_tables(device: torch.device) -> tuple[torch.Tensor, ...]:
    """PIL's HSV round trip factored into small tables (about 1.6 MiB, built in milliseconds, cached per device).

    rgb2hsv: V is max(r, g, b). H depends only on which channel is the maximum (r, else g, else b: PIL's test
    order) and on the channels' distances below it, mr, mg, mb (cr = max - min is the largest of them): `to_h`
    is indexed by (case, mr + mg, mr + mb), which identifies the pixel's distances within its case (case 0:
    mr = 0; case 1: mg = 0; case 2: mb = 0) with no per-case selection. S depends on (cr, max): `to_s[cr, max]`.
    Grey pixels land on cr = 0, where both tables hold PIL's 0.
    hsv2rgb: p = round(v (1 - fs)), q = round(v (1 - fs f)), t = round(v (1 - fs (1 - f))) with fs from S and
    (i, f) from H; the factors in parentheses are C doubles of (H, S) only, and the sector i % 6 picks which of
    v, p, q, t goes to each channel, so `factors[channel, H, S]` is the channel's factor (1.0 for v, and for
    S = 0). What is left per pixel is round(v * factor), here in integers: factor * 2^23 rounded, then
    (v * that + 2^22) >> 23, which equals the double product's rounding for every factor in the table and every
    v in 0..255 (tests/test_tensor_views.py checks all of them; 2^22 would not be enough).
    The tables follow PIL's float/double mix step by step (`_rgb_to_hsv`, `_hsv_to_rgb_factors`), so the
    result is exact: tests/test_tensor_views.py checks the whole round trip against PIL on every 8-bit colour.
    """
    levels = torch.arange(256, dtype=torch.int32)
    a, b = levels.view(256, 1).expand(256, 256), levels.view(1, 256).expand(256, 256)
    top = torch.full_like(a, 255)
    to_h = torch.zeros(3, 512, 512, dtype=torch.int32)
    to_h[0, a, b] = _rgb_to_hsv(top, top - a, top - b)[0]  # r is the maximum: mg = a, mb = b
    to_h[1, a, a + b] = _rgb_to_hsv(top - a, top, top - b)[0]  # g (r is not): mr = a, mb = b
    to_h[2, a + b, b] = _rgb_to_hsv(top - b, top - a, top)[0]  # b: mg = a, mr = b
    cr, maxc = a, b  # to_s[cr, max]; rows with cr > max never occur
    to_s = torch.where(cr <= maxc, _rgb_to_hsv(maxc, maxc - cr.clamp(max=maxc), maxc - cr.clamp(max=maxc))[1], 0)
    fixed = torch.round(_hsv_to_rgb_factors() * 2.0 ** _HUE_FIXED_BITS).to(torch.int32)
    tables = (to_h.to(torch.uint8).reshape(-1), to_s.to(torch.uint8).reshape(-1), fixed.reshape(3, -1))
    return tuple(t.to(device) for t in tables)


def hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue on PIL: RGB -> PIL's 8-bit HSV, H += int(factor * 255) mod 256, HSV -> RGB, pixel
    for pixel PIL's arithmetic through the small tables of `_hue_tables`."""
    to_h, to_s, factors = _hue_tables(x.device)
    # max and the distances below it in uint8; the table indices in int32, accumulated in place (add's alpha
    # widens a uint8 operand on the fly: fewer passes than building each term separately)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = torch.maximum(torch.maximum(r, g), b)
    mr, mg, mb = maxc - r, maxc - g, maxc - b
    not_r = mr != 0  # PIL tests r == max, then g == max: case 0 (r), 1 (g), 2 (b)
    h_index = torch.add(mb, mr.to(torch.int32), alpha=513).add_(mg, alpha=512)  # (mr + mg) << 9 | (mr + mb)
    h_index.add_(not_r, alpha=1 << 18).add_(not_r & (mg != 0), alpha=1 << 18)  # + case << 18
    h = to_h.index_select(0, h_index.view(-1)).view_as(r)
    cr = torch.maximum(torch.maximum(mr, mg), mb)
    s = to_s.index_select(0, torch.add(maxc, cr.to(torch.int32), alpha=256).view(-1)).view_as(r)
    # np.int32(factor * 255) truncates toward zero; H + shift mod 256 is uint8 arithmetic's own wrap-around
    shift = _per_sample((factor.to(torch.float64) * 255.0).to(torch.int32).bitwise_and_(255).to(torch.uint8), x)
    hs = torch.add(s, (h + shift[:, 0]).to(torch.int32), alpha=256).view(-1)  # (H', S) -> [0, 2^16)
    # each channel's factor into its own plane, channel-major: three lookups with no per-channel index to build
    scale = torch.empty(3, *r.shape, dtype=torch.int32, device=x.device)
    for channel in range(3):
        torch.index_select(factors[channel], 0, hs, out=scale[channel].view(-1))
    # C's round(v * factor) (half away from zero; all values >= 0), in fixed point; factors are in [0, 1]
    scale.mul_(maxc).add_(1 << (_HUE_FIXED_BITS - 1)).bitwise_right_shift_(_HUE_FIXED_BITS)
    return torch.empty_like(x).copy_(scale.permute(1, 0, 2, 3))


# --------------------------------------------------------------------------------------- lookup-table ops


def _band_offsets(n: int, device: torch.device) -> torch.Tensor:
    """int32 [n, 3, 1, 1]: where each sample's band starts in a flat [n * 3 * 256] table or histogram."""
    return (torch.arange(n * 3, dtype=torch.int32, device=device) * 256).view(n, 3, 1, 1)


def _flat_levels(x: torch.Tensor) -> torch.Tensor:
    """int32 [n * 3 * H * W]: each value's level plus its band's offset, an index into a flat per-band table.
    Widening first and adding in place is ~1.5x faster on a CPU than the mixed uint8 + int32 broadcast add."""
    return x.to(torch.int32).add_(_band_offsets(len(x), x.device)).view(-1)


def _histograms(x: torch.Tensor) -> torch.Tensor:
    """[n, 3, 256] per-sample, per-band level counts, as float32 (exact below 2^24). An index_add_ into a
    fixed-size array rather than torch.bincount: on CUDA, bincount reads the input's max and min back to the host
    to size its output, a stream sync per call; the two are equally fast on a CPU."""
    n, levels = len(x), _flat_levels(x)
    ones = torch.ones(1, dtype=torch.float32, device=x.device).expand(len(levels))
    return torch.zeros(n * 3 * 256, dtype=torch.float32, device=x.device).index_add_(0, levels, ones).view(n, 3, 256)


def _apply_luts(x: torch.Tensor, luts: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Map each band of each sample through its uint8 [n, 3 or 1, 256] table (one flat index_select: on a CPU
    several times faster than gather with its int64 index). out may be x itself (contiguous): the index is
    built from x before anything is written."""
    luts = luts.expand(len(x), 3, 256).contiguous()
    out = torch.empty_like(x) if out is None else out
    torch.index_select(luts.view(-1), 0, _flat_levels(x), out=out.view(-1))
    return out


def _to_lut(levels: torch.Tensor) -> torch.Tensor:
    return levels.clamp(0, 255).to(torch.uint8)  # Image.point clips


def _autocontrast_lut(x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
    """ImageOps.autocontrast: per sample and band, int(level * scale + offset) stretching [lo, hi] to [0, 255].
    The lowest and highest level present are the band's min and max: no histogram needed."""
    bands = x.view(len(x), 3, -1)
    lo, hi = bands.amin(dim=2).to(torch.float64), bands.amax(dim=2).to(torch.float64)
    stretch = hi > lo
    scale = _div(255.0, torch.where(stretch, hi - lo, 1.0))
    offset = -lo * scale
    levels = torch.arange(256, device=x.device, dtype=torch.float64)
    stretched = levels * scale[..., None] + offset[..., None]  # float64 like PIL, truncated below
    return _to_lut(torch.where(stretch[..., None], stretched, levels).to(torch.int32))


def _equalize_lut(x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
    """ImageOps.equalize: per sample and band, lut[level] = (step // 2 + pixels below level) // step with
    step = (pixels - pixels at the highest level present) // 255, and no change where step is 0 (which covers
    a band with a single level). Every value is an integer below 2^24 (1,024 pixels a band here), which float32
    holds exactly, and then floor(a / b) of the correctly rounded quotient is the integer division (div's floor
    mode is several times slower on a CPU)."""
    bands = x.view(len(x), 3, -1)
    hist = _histograms(x)
    top = hist.gather(2, bands.amax(dim=2, keepdim=True).to(torch.int64))
    step = (bands.shape[2] - top).div_(255).floor_()
    before = torch.cumsum(hist, dim=2).sub_(hist)
    equalized = before.add_(torch.floor(step / 2)).div_(step.clamp_min(1)).floor_()
    levels = torch.arange(256, device=x.device, dtype=torch.float32)
    return _to_lut(torch.where(step > 0, equalized, levels))


def _posterize_lut(magnitude: torch.Tensor) -> torch.Tensor:
    """ImageOps.posterize(img, int(v)): keep the top int(v) bits."""
    mask = 255 & ~((1 << (8 - magnitude.to(torch.int64))) - 1)
    return (torch.arange(256, device=magnitude.device) & mask[:, None]).to(torch.uint8).view(-1, 1, 256)


def _solarize_lut(magnitude: torch.Tensor) -> torch.Tensor:
    """ImageOps.solarize(img, v): invert levels >= v, i.e. levels >= ceil(v)."""
    levels = torch.arange(256, device=magnitude.device)
    threshold = torch.ceil(magnitude).clamp(0, 256).to(torch.int64)
    return torch.where(levels >= threshold[:, None], 255 - levels, levels).to(torch.uint8).view(-1, 1, 256)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    return _apply_luts(x, _autocontrast_lut(x))


def equalize(x: torch.Tensor) -> torch.Tensor:
    return _apply_luts(x, _equalize_lut(x))


def posterize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    return _apply_luts(x, _posterize_lut(magnitude).to(x.device))


def solarize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    return _apply_luts(x, _solarize_lut(magnitude).to(x.device))


# ------------------------------------------------------------------------------------------------ affine ops


def _affine_nearest(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """PIL's Image.transform(AFFINE, (a, b, c, d, e, f), NEAREST) with black fill, per sample.

    Output pixel (x, y) reads the input at (a x' + b y' + c, d x' + e y' + f) with x' = x + 0.5, y' = y + 0.5,
    truncated (negative -> outside), as Geometry.c's affine_transform does; floor gives the same inside pixels
    and sends every negative coordinate outside. PIL accumulates the row and column steps by repeated addition;
    the products here differ from those sums by rounding only (~1e-15 px). The image gets a 1-px black ring and
    coordinates are clamped onto it, so outside pixels read black and the whole op is one gather."""
    n, c, height, width = x.shape
    a = coeffs.to(x.device, torch.float64, non_blocking=True)
    xs = torch.arange(width, dtype=torch.float64, device=x.device)
    ys = torch.arange(height, dtype=torch.float64, device=x.device)
    # In ring coordinates (0 and size + 1 are the black ring, 1..size the image) a pixel reads floor(v) + 1,
    # clamped to [0, size + 1]. trunc(v + 1) is floor(v) + 1 wherever v + 1 >= 0 and lands at or below 0 (the
    # ring) everywhere else, so one truncating conversion to int32 does the floor, the +1 and the narrowing.
    xo = (a[:, 2] + a[:, 1] * 0.5 + a[:, 0] * 0.5 + 1.0)[:, None, None]
    yo = (a[:, 5] + a[:, 4] * 0.5 + a[:, 3] * 0.5 + 1.0)[:, None, None]
    ring_x = ((xo + ys[None, :, None] * a[:, 1, None, None]) + xs[None, None, :] * a[:, 0, None, None])
    ring_y = ((yo + ys[None, :, None] * a[:, 4, None, None]) + xs[None, None, :] * a[:, 3, None, None])
    ring_x = ring_x.to(torch.int32).clamp_(0, width + 1)
    index = torch.add(ring_x, ring_y.to(torch.int32).clamp_(0, height + 1), alpha=width + 2)
    ringed = torch.nn.functional.pad(x, (1, 1, 1, 1)).view(n, c, -1)
    return ringed.gather(2, index.view(n, 1, -1).to(torch.int64).expand(n, c, -1)).view_as(x)


def _affine_coeffs(ops: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[..., 6] PIL affine data of RandAugment op ids `ops` with magnitudes v (CPU float64), as augment.py's PIL
    calls build them; the identity where the op is not affine. One call covers every slot of a batch: per-op
    calls would cost a few dozen small tensor ops each, per slot."""
    v = v.to(torch.float64)
    rotate = ops == OP_ID["Rotate"]
    # Image.rotate(v): angle % 360 (Python's sign rule), matrix rounded to 15 decimals, about the centre.
    angle = torch.fmod(v, 360.0)
    angle = torch.where(angle < 0, angle + 360.0, angle)
    angle = -(angle * (math.pi / 180.0))
    cos = torch.round(torch.cos(angle), decimals=15)
    sin = torch.round(torch.sin(angle), decimals=15)
    centre = IMAGE_SIZE / 2.0

    def where(op: str, value: torch.Tensor, otherwise: float = 0.0) -> torch.Tensor:
        return torch.where(ops == OP_ID[op], value, otherwise)

    return torch.stack([
        torch.where(rotate, cos, 1.0),
        torch.where(rotate, sin, where("ShearX", v)),
        torch.where(rotate, cos * -centre + sin * -centre + centre, where("TranslateX", v * IMAGE_SIZE)),
        torch.where(rotate, -sin, where("ShearY", v)),
        torch.where(rotate, cos, 1.0),
        torch.where(rotate, -sin * -centre + cos * -centre + centre, where("TranslateY", v * IMAGE_SIZE)),
    ], dim=-1)


# ------------------------------------------------------------------------------------------------------ views

# An op is (family, fn). The samples of one slot are grouped by family so each family costs one batched call.
# Every per-level map is a uint8 [m, 3 or 1, 256] table per sample, and a slot's tables are applied in one lookup:
# "table": fn(params) -> tables that depend on the plan alone (brightness's blend with black, posterize,
#          solarize): built on the host with the schedule and sent with the rest, no device work to make them;
# "lut": fn(images, params) -> tables that depend on the pixels (contrast's blend with the mean, autocontrast,
#        equalize), built on the device;
# "affine": rotate, shear, translate, applied in one gather from PIL affine data computed for all slots at once;
# "image": fn(images, params) -> new images (color, sharpness, hue: they need each pixel's neighbours/channels).
# One table serves both views: RandAugment's ops by OP_ID, then ColorJitter's hue. The jitter's other three
# adjustments are RandAugment's Brightness, Contrast and Color (the same ImageEnhance calls) with the jitter's
# factor as magnitude, so a batch's weak and strong rows share each slot's calls.
_FAMILIES = ("table", "lut", "affine", "image")
_OPS = tuple({
    "AutoContrast": ("lut", _autocontrast_lut),
    "Brightness": ("table", _brightness_lut),
    "Color": ("image", color),
    "Contrast": ("lut", _contrast_lut),
    "Equalize": ("lut", _equalize_lut),
    "Identity": None,
    "Posterize": ("table", _posterize_lut),
    "Sharpness": ("image", sharpness),
    "Solarize": ("table", _solarize_lut),
    **{name: ("affine", None) for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")},
}[name] for name in OP_ID) + (("image", hue),)
_IDENTITY = OP_ID["Identity"]
# ColorJitter's adjustments by plan.jitter_order id (brightness, contrast, saturation, hue) as _OPS ids
_JITTER_KINDS = torch.tensor([OP_ID["Brightness"], OP_ID["Contrast"], OP_ID["Color"], len(OP_ID)])


@functools.cache
def _family_order() -> tuple[torch.Tensor, tuple[int, ...]]:
    """(rank of each op id, op ids by rank): ops sorted by family, no-ops last."""
    def family(kind):
        return _FAMILIES.index(_OPS[kind][0]) if _OPS[kind] is not None else len(_FAMILIES)
    by_rank = tuple(sorted(range(len(_OPS)), key=lambda kind: (family(kind), kind)))
    rank = torch.empty(len(_OPS), dtype=torch.int64)
    rank[list(by_rank)] = torch.arange(len(_OPS))
    return rank, by_rank


def _schedule_slots(kinds: torch.Tensor, params: torch.Tensor, send: list[torch.Tensor]) -> tuple[list, int]:
    """The half of applying op _OPS[kinds[i, slot]] with params[i, slot] to row i, slot after slot, that depends
    on the CPU plan alone ([rows, slots] int64 and float64): each slot's row order and its ops' row spans.
    Tensors the device will need are appended to `send` and named by their position there (all sent in one copy:
    `transfer.to_device`). Returns (slots, the final restoring order).

    Before each slot the batch is reordered so that the rows of one family, and within it of one op, are
    contiguous (one gather of the whole batch); each family then reads and writes its own slice, with no per-op
    index_select/index_copy. The original order is restored once at the end.
    """
    rank, by_rank = _family_order()
    affine = _affine_coeffs(kinds, params)  # [rows, slots, 6]: all affine data of the call in one go
    held = torch.arange(len(kinds))  # held[j] = the row now in position j
    slots = []
    for slot in range(kinds.shape[1]):
        current = rank[kinds[held, slot]]
        order = torch.argsort(current, stable=True)
        held = held[order]
        counts = torch.bincount(current, minlength=len(_OPS)).tolist()
        sorted_params = params[held, slot]  # position j's parameters; each op sends a slice of it
        ops, affine_rows, start = [], [], 0  # ops: (family, rows, fn, name of its parameters)
        for kind, count in zip(by_rank, counts):
            rows = slice(start, start + count)
            start += count
            if not count or _OPS[kind] is None:
                continue
            family, fn = _OPS[kind]
            if family == "affine":
                affine_rows.append(rows)  # the affine ops of a slot are one gather: merged below
            elif family == "table":
                ops.append((family, rows, None, _add(send, fn(sorted_params[rows]))))
            else:
                ops.append((family, rows, fn, _add(send, sorted_params[rows])))
        if affine_rows:
            rows = slice(affine_rows[0].start, affine_rows[-1].stop)
            ops.append(("affine", rows, None, _add(send, affine[held[rows], slot])))
        slots.append((_add(send, order), ops))
    return slots, _add(send, torch.argsort(held))


def _run_slots(x: torch.Tensor, schedule: tuple[list, int], sent: list[torch.Tensor]) -> torch.Tensor:
    """Apply a `_schedule_slots` schedule to x, with `sent` the device copies of what it named."""
    slots, restore = schedule
    for order, ops in slots:
        x = x.index_select(0, sent[order])
        luts = [op for op in ops if op[0] in ("table", "lut")]  # first in family order: rows [0, end)
        if luts:
            end = luts[-1][1].stop
            tables = torch.empty(end, 3, 256, dtype=torch.uint8, device=x.device)
            for family, rows, fn, name in luts:
                tables[rows] = sent[name] if family == "table" else fn(x[rows], sent[name])
            _apply_luts(x[:end], tables, out=x[:end])
        for family, rows, fn, name in ops:
            if family == "affine":
                x[rows] = _affine_nearest(x[rows], sent[name])
            elif family == "image":
                x[rows] = fn(x[rows], sent[name])
    return x.index_select(0, sent[restore])


def _add(send: list[torch.Tensor], tensor: torch.Tensor) -> int:
    send.append(tensor)
    return len(send) - 1


def _jitter_slots(plan: ViewPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter of the weak view as four slots ([B, 4] op ids and factors): each sample's adjustments in its
    drawn order, Identity where the jitter was not drawn."""
    kinds = torch.where(plan.jitter[:, None], _JITTER_KINDS[plan.jitter_order], _IDENTITY)
    return kinds, plan.jitter_factors.gather(1, plan.jitter_order)


def _apply_slots(x: torch.Tensor, kinds: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    send: list[torch.Tensor] = []
    schedule = _schedule_slots(kinds, params, send)
    return _run_slots(x, schedule, to_device(send, x.device))


def color_jitter(x: torch.Tensor, plan: ViewPlan) -> torch.Tensor:
    return _apply_slots(x, *_jitter_slots(plan))


def randaugment(x: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """The strong view's three RandAugment slots: op ids and magnitudes [B, 3] (CPU)."""
    return _apply_slots(x, ops, magnitudes)


def _views(images: torch.Tensor, plan: ViewPlan, weak: bool = True, strong: bool = True) -> list[torch.Tensor]:
    """The views asked for, with everything they need from the CPU plan sent to the device in one copy.

    Both views run as one batch of 2B rows (weak, then strong): one crop call, and four op slots whose calls
    cover both views' rows (the jitter's four, RandAugment's three and an Identity): the same pixels as running
    the views one after the other, with about a sixth fewer tensor ops (kernel launches on a GPU) per call."""
    n = len(images)
    crops, kinds, params = [], [], []
    if weak:
        crops.append(_crop_index(plan.weak_box, plan.weak_flip))
        jitter_kinds, jitter_params = _jitter_slots(plan)
        kinds.append(jitter_kinds)
        params.append(jitter_params)
    if strong:
        crops.append(_crop_index(plan.strong_box, plan.strong_flip))
        kinds.append(plan.ops)
        params.append(plan.magnitudes)
    slots = max(k.shape[1] for k in kinds)
    kinds = torch.cat([torch.nn.functional.pad(k, (0, slots - k.shape[1]), value=_IDENTITY) for k in kinds])
    params = torch.cat([torch.nn.functional.pad(p, (0, slots - p.shape[1])) for p in params])
    send: list[torch.Tensor] = []
    crop = _add(send, torch.cat(crops, dim=1))
    schedule = _schedule_slots(kinds, params, send)
    if weak:
        gray = _add(send, plan.gray.nonzero()[:, 0])
    if strong:
        cutout_boxes = _add(send, plan.cutout)
    sent = to_device(send, images.device)
    x = _run_slots(_resized_crops(_crop_source(images), sent[crop]), schedule, sent)
    out = []
    if weak:
        rows = sent[gray]  # the weak rows come first
        out.append(x[:n].index_copy_(0, rows, grayscale(x.index_select(0, rows))))
    if strong:
        out.append(cutout(x[n:] if weak else x, sent[cutout_boxes]))
    return out


def weak_views(images: torch.Tensor, plan: ViewPlan) -> torch.Tensor:
    """uint8 [B, 3, 32, 32] weak views of `images` (any device) under `plan` (CPU)."""
    return _views(images, plan, strong=False)[0]


def strong_views(images: torch.Tensor, plan: ViewPlan) -> torch.Tensor:
    """uint8 [B, 3, 32, 32] strong views of `images` (any device) under `plan` (CPU): three ops, then Cutout."""
    return _views(images, plan, weak=False)[0]


def cutout(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Fill each sample's end-exclusive (x0, y0, x1, y1) box with CUTOUT_FILL."""
    b = boxes.to(x.device, non_blocking=True)
    ar = torch.arange(IMAGE_SIZE, device=x.device)
    cols = (ar >= b[:, 0:1]) & (ar < b[:, 2:3])  # [n, 32]
    rows = (ar >= b[:, 1:2]) & (ar < b[:, 3:4])
    inside = (rows[:, None, :, None] & cols[:, None, None, :]).to(torch.uint8)
    # x (1 - inside) + fill inside in uint8: several times faster than torch.where on a CPU
    return (x * (1 - inside)).add_(_cutout_fill(x.device) * inside)


@functools.cache
def _cutout_fill(device: torch.device) -> torch.Tensor:
    return torch.tensor(CUTOUT_FILL, dtype=torch.uint8).view(1, 3, 1, 1).to(device)  # sent once per device


def views(images: torch.Tensor, plan: ViewPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(weak, strong) uint8 views of a uint8 [B, 3, 32, 32] batch."""
    if images.dtype != torch.uint8 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise TypeError(f"expected uint8 [B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] images, got {images.dtype} "
                        f"of shape {tuple(images.shape)}")
    weak, strong = _views(images, plan)
    return weak, strong
