"""The weak and strong views (METHOD.md §1.4) as batched tensor ops with per-sample parameters, on any device.

The input is a uint8 [B, 3, 32, 32] batch on the trial's device and a `plan.ViewPlan` drawn on the CPU; the
output is the two uint8 views, pixel for pixel what the PIL path (`augment.py`) makes from the same plan, up to
the bounds tests/test_tensor_views.py asserts. No maintained library applies a *different* op to each sample of a
batch with these magnitudes, hence this module.

How it stays fast and close to PIL:
- Ops run only on the samples that drew them: for each op slot, a loop over the op kinds (not over samples)
  gathers the samples of one kind with `index_select`, transforms that sub-batch and writes it back with
  `index_copy_`. Index lists come from the CPU plan, so dispatch never waits for the device.
- PIL's integer arithmetic is mirrored: ImageEnhance's blend in float32 with truncation, RGB->L with PIL's
  16-bit fixed-point weights, the 3x3 SMOOTH kernel with PIL's rounding, HSV in PIL's float/double mix,
  per-sample lookup tables for autocontrast/equalize, bit masks for posterize/solarize.
- Resampling follows PIL's own arithmetic rather than grid_sample's: the resized crop is PIL's separable bilinear
  resample (22-bit fixed-point coefficients, 8-bit rounding between the horizontal and vertical pass) written as
  two small per-sample matrix products in float64 (exact for these integer sums); the flip is folded into the
  horizontal matrix. Rotate, shear and translate are PIL's nearest-neighbour affine map with its pixel-centre
  convention, as one integer gather per sample.
"""

from __future__ import annotations

import functools
import math

import torch

from .plan import CUTOUT_FILL, IMAGE_SIZE, OP_ID, ViewPlan

_PRECISION_BITS = 22  # PIL's Resample.c: 32 - 8 bits of pixel - 2 bits of headroom
_ONE = float(1 << _PRECISION_BITS)


# ---------------------------------------------------------------------------------------------------- helpers


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[n] -> [n, 1, 1, 1] on like's device, for broadcasting over images."""
    return values.to(like.device, non_blocking=True).view(-1, 1, 1, 1)


def _div(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """Correctly rounded a / b. torch computes scalar / tensor as reciprocal times scalar, and tensor / scalar as
    tensor times the scalar's reciprocal: both can be 1 ulp off the C division PIL does."""
    device = a.device if isinstance(a, torch.Tensor) else b.device
    a, b = (torch.as_tensor(t, dtype=torch.float64, device=device) for t in (a, b))
    a, b = torch.broadcast_tensors(a, b)
    return torch.div(a, b.contiguous())


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, as int32 [n, 1, H, W]."""
    x = x.to(torch.int32)
    return (x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16


def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, img, factor) for 8-bit bands: in1 + alpha * (in2 - in1) with a C float alpha,
    clipped to [0, 255] and truncated. degenerate may broadcast (a constant per sample, or one gray band)."""
    alpha = _per_sample(factor.to(torch.float32), img)
    d = degenerate.to(torch.float32)
    out = (img.to(torch.float32) - d).mul_(alpha).add_(d)
    return out.clamp_(0, 255).to(torch.uint8)


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
    """Every crop's coefficient matrix, [2 flips * 32 starts * 33 lengths, 32 out, 32 in] (units of 2^-22), built
    once: a batch then takes its matrices with one index_select instead of recomputing the taps."""
    flip, start, length = torch.meshgrid(torch.arange(2), torch.arange(IMAGE_SIZE), torch.arange(IMAGE_SIZE + 1),
                                         indexing="ij")
    flip, start, length = flip.reshape(-1).bool(), start.reshape(-1), length.reshape(-1)
    source, k = _resample_taps(start, length.clamp_min(1), flip)
    matrix = torch.zeros(len(start), IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float64)
    matrix.scatter_add_(2, source, k.to(torch.float64))
    return matrix.to(device=device, dtype=dtype)


def _crop_matrices(start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor | None, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    index = (flip.to(torch.int64) if flip is not None else 0) * (IMAGE_SIZE * (IMAGE_SIZE + 1))
    index = index + start * (IMAGE_SIZE + 1) + length
    return _resample_matrices(device, dtype).index_select(0, index.to(device, non_blocking=True))


def _rounded_pass(acc: torch.Tensor) -> torch.Tensor:
    # PIL: (sum + 2^21) >> 22 clipped to [0, 255]; here on the float sum in units of 2^-22 (see resized_crop_flip).
    return torch.floor_(acc.mul_(1.0 / _ONE).add_(0.5)).clamp_(0, 255)


def resized_crop_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """PIL's img.crop(box).resize((32, 32), BILINEAR), then the horizontal flip, per sample.

    boxes: int64 [n, 4] (top, left, height, width) on the CPU; flips: bool [n] on the CPU.

    Each pass is a batched matrix product (the fastest per-sample gather of taps there is on a CPU). In float32
    the 22-bit coefficients times 8-bit pixels are not exact: a sum can land on the other side of PIL's rounding
    point when it is within ~1e-5 of a half, which the parity test bounds. Where TF32 matmuls are switched on
    (CUDA), float32 would lose far more, so the products run in float64 there.
    """
    n, dev = len(images), images.device
    dtype = torch.float64 if dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else torch.float32
    cols = _crop_matrices(boxes[:, 1], boxes[:, 3], flips, dev, dtype)
    rows = _crop_matrices(boxes[:, 0], boxes[:, 2], None, dev, dtype)
    size = IMAGE_SIZE
    # Rows outermost ([n, h, c, w]), so both passes are plain batched products of contiguous operands.
    x = images.permute(0, 2, 1, 3).contiguous().to(dtype).view(n, size * 3, size)
    # Horizontal pass first, rounded to 8 bits, then the vertical pass: PIL's order and rounding.
    x = _rounded_pass(torch.bmm(x, cols.transpose(1, 2)))  # [n, (h, c), w]
    x = _rounded_pass(torch.bmm(rows, x.view(n, size, 3 * size)))  # [n, h', (c, w)]
    return x.view(n, size, 3, size).permute(0, 2, 1, 3).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- colour ops


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return _blend(torch.zeros((), dtype=torch.float32, device=x.device), x, factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Color (= torchvision's adjust_saturation on PIL): blend with the L image."""
    return _blend(_luma(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with the L image's mean, rounded as int(mean + 0.5)."""
    gray = _luma(x)
    mean = torch.floor(gray.sum(dim=(1, 2, 3), dtype=torch.int64).to(torch.float64) / gray[0].numel() + 0.5)
    return _blend(mean.view(-1, 1, 1, 1), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (3x3, centre 5, others 1, /13, rounded); PIL's
    filter leaves the 1-px border as it is, and so does this."""
    xi = x.to(torch.int32)
    acc = torch.nn.functional.avg_pool2d(xi.to(torch.float32), 3, stride=1, divisor_override=1).to(torch.int32)
    acc += 4 * xi[:, :, 1:-1, 1:-1]  # the 3x3 box sum plus 4 more of the centre: the SMOOTH kernel
    smooth = xi.clone()
    smooth[:, :, 1:-1, 1:-1] = torch.div(2 * acc + 13, 26, rounding_mode="floor")  # floor(acc / 13 + 0.5)
    return _blend(smooth, x, factor)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """PIL's L conversion copied into three channels."""
    return _luma(x).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


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


def _hsv_to_rgb(uh: torch.Tensor, us: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PIL's hsv2rgb on int32 planes -> int32 [..., 3] (r, g, b), in PIL's float/double mix."""
    f32, f64 = torch.float32, torch.float64
    hd = _div(uh.to(f32).to(f64) * 6.0, 255.0)
    i = torch.floor(hd)
    frac = (hd - i).to(f32)
    fs = _div(us.to(f32).to(f64), 255.0).to(f32)
    vd = v.to(f64)

    def rounded(t: torch.Tensor) -> torch.Tensor:  # C round(): half away from zero (t >= 0 here)
        return torch.floor(t + 0.5).clamp_(0, 255).to(torch.int32)

    p = rounded(vd * (1.0 - fs.to(f64)))
    q = rounded(vd * (1.0 - (fs * frac).to(f64)))
    t = rounded(vd * (1.0 - fs.to(f64) * (1.0 - frac.to(f64))))
    sector = i.to(torch.int64) % 6
    table = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))  # hsv2rgb's switch
    out = []
    for ch in range(3):
        value = v
        for k in range(6):
            value = torch.where(sector == k, table[k][ch], value)
        out.append(torch.where(us == 0, v, value))
    return torch.stack(out, dim=-1)


@functools.cache
def _hsv_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's two HSV conversions as lookup tables over all 2^24 inputs (int32, 64 MiB each), built once per
    device, on that device, from the code above: rgb2hsv[r << 16 | g << 8 | b] = H << 16 | S << 8 | V and
    hsv2rgb[H << 16 | S << 8 | V] = R | G << 8 | B << 16. Two table lookups per pixel cost far less than PIL's
    float/double arithmetic spelled out in tensor ops (most of the views' time otherwise)."""
    chunk = 16  # top values per step: 2^20 inputs, whose float64 temporaries stay near 100 MiB
    top = torch.arange(chunk, dtype=torch.int32, device=device).view(chunk, 1, 1)
    mid = torch.arange(256, dtype=torch.int32, device=device).view(1, 256, 1)
    low = torch.arange(256, dtype=torch.int32, device=device).view(1, 1, 256)
    mid, low = mid.expand(chunk, 256, 256), low.expand(chunk, 256, 256)
    to_hsv = torch.empty(256, 256, 256, dtype=torch.int32, device=device)
    to_rgb = torch.empty(256, 256, 256, dtype=torch.int32, device=device)
    for start in range(0, 256, chunk):
        first = (top + start).expand(chunk, 256, 256)
        h, s = _rgb_to_hsv(first, mid, low)
        to_hsv[start:start + chunk] = (h << 16) | (s << 8) | torch.maximum(torch.maximum(first, mid), low)
        rgb = _hsv_to_rgb(first, mid, low)
        to_rgb[start:start + chunk] = rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)
    return to_hsv.view(-1), to_rgb.view(-1)


def hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue on PIL: RGB -> PIL's 8-bit HSV, H += int(factor * 255) mod 256, HSV -> RGB,
    through the tables of `_hsv_tables` (pixel for pixel PIL's arithmetic)."""
    to_hsv, to_rgb = _hsv_tables(x.device)
    n = len(x)
    c = x.to(torch.int32)
    packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    hsv = to_hsv.index_select(0, packed.view(-1))
    # np.int32(factor * 255) truncates toward zero; adding it to the uint8 H wraps mod 256 (here: mod 2^24 of
    # the packed H << 16 | S << 8 | V).
    shift = ((factor.to(torch.float64) * 255.0).to(torch.int32) << 16).to(x.device, non_blocking=True)
    hsv = (hsv.view(n, -1) + shift[:, None]) & 0xFFFFFF
    rgb = to_rgb.index_select(0, hsv.view(-1)).view(n, 1, *x.shape[2:])
    return torch.cat([rgb & 255, (rgb >> 8) & 255, rgb >> 16], dim=1).to(torch.uint8)


# --------------------------------------------------------------------------------------- lookup-table ops


def _histograms(x: torch.Tensor) -> torch.Tensor:
    """[n, 3, 256] per-sample, per-band level counts."""
    n = len(x)
    offsets = (torch.arange(n * 3, device=x.device) * 256).view(n, 3, 1)
    flat = (x.reshape(n, 3, -1).to(torch.int64) + offsets).reshape(-1)
    return torch.bincount(flat, minlength=n * 3 * 256).view(n, 3, 256)


def _apply_luts(x: torch.Tensor, luts: torch.Tensor) -> torch.Tensor:
    """Map each band of each sample through its [n, 3, 256] table (clipped to 0..255, as Image.point)."""
    n = len(x)
    table = luts.clamp(0, 255).to(torch.uint8)
    return table.gather(2, x.reshape(n, 3, -1).to(torch.int64)).view_as(x)


def _band_extremes(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    present = (hist > 0).to(torch.int8)
    return present.argmax(dim=2), 255 - present.flip(2).argmax(dim=2)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast: per sample and band, int(level * scale + offset) stretching [lo, hi] to [0, 255]."""
    levels = torch.arange(256, device=x.device, dtype=torch.float64)
    lo, hi = _band_extremes(_histograms(x))
    stretch = hi > lo
    scale = _div(255.0, torch.where(stretch, hi - lo, 1).to(torch.float64))
    offset = -lo.to(torch.float64) * scale
    stretched = (levels * scale[..., None] + offset[..., None]).to(torch.int64)  # float64 like PIL, truncated
    return _apply_luts(x, torch.where(stretch[..., None], stretched, levels.to(torch.int64)))


def equalize(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize: per sample and band, levels through the cumulative histogram in steps of total/255."""
    hist = _histograms(x)
    lo, hi = _band_extremes(hist)
    top = hist.gather(2, hi[..., None])[..., 0]
    step = torch.where(hi > lo, (hist.sum(dim=2) - top) // 255, 0)
    before = torch.cumsum(hist, dim=2) - hist
    equalized = (step[..., None] // 2 + before) // step.clamp_min(1)[..., None]
    levels = torch.arange(256, device=x.device)
    return _apply_luts(x, torch.where(step[..., None] > 0, equalized, levels))


def posterize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """ImageOps.posterize(img, int(v)): keep the top int(v) bits."""
    bits = magnitude.to(torch.int64)
    mask = (255 & ~((1 << (8 - bits)) - 1)).to(torch.uint8)
    return x & _per_sample(mask, x)


def solarize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """ImageOps.solarize(img, v): invert levels >= v, i.e. levels >= ceil(v)."""
    threshold = _per_sample(torch.ceil(magnitude).clamp(0, 256).to(torch.int16), x)
    return torch.where(x.to(torch.int16) >= threshold, 255 - x, x)


# ------------------------------------------------------------------------------------------------ affine ops


def _affine_nearest(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """PIL's Image.transform(AFFINE, (a, b, c, d, e, f), NEAREST) with black fill, per sample.

    Output pixel (x, y) reads the input at (a x' + b y' + c, d x' + e y' + f) with x' = x + 0.5, y' = y + 0.5,
    truncated (negative -> outside), as Geometry.c's affine_transform does. PIL accumulates the row and column
    steps by repeated addition; the products here differ from those sums by rounding only (~1e-15 px)."""
    n, c, height, width = x.shape
    a = coeffs.to(torch.float64)
    xs = torch.arange(width, dtype=torch.float64)
    ys = torch.arange(height, dtype=torch.float64)
    xo = (a[:, 2] + a[:, 1] * 0.5 + a[:, 0] * 0.5)[:, None, None]
    yo = (a[:, 5] + a[:, 4] * 0.5 + a[:, 3] * 0.5)[:, None, None]
    src_x = (xo + ys[None, :, None] * a[:, 1, None, None]) + xs[None, None, :] * a[:, 0, None, None]
    src_y = (yo + ys[None, :, None] * a[:, 4, None, None]) + xs[None, None, :] * a[:, 3, None, None]
    xin = torch.where(src_x < 0, -1, src_x.clamp(max=width).to(torch.int64))
    yin = torch.where(src_y < 0, -1, src_y.clamp(max=height).to(torch.int64))
    inside = (xin >= 0) & (xin < width) & (yin >= 0) & (yin < height)
    index = torch.where(inside, yin * width + xin, 0).view(n, 1, -1).to(x.device, non_blocking=True)
    out = x.reshape(n, c, -1).gather(2, index.expand(n, c, -1))
    return (out * inside.view(n, 1, -1).to(x.device, non_blocking=True)).view_as(x)


def _affine_coeffs(op: str, v: torch.Tensor) -> torch.Tensor:
    """[n, 6] PIL affine data of the op with magnitude v (CPU float64), as augment.py's PIL calls build them."""
    zero, one = torch.zeros_like(v), torch.ones_like(v)
    if op == "ShearX":
        return torch.stack([one, v, zero, zero, one, zero], 1)
    if op == "ShearY":
        return torch.stack([one, zero, zero, v, one, zero], 1)
    if op == "TranslateX":
        return torch.stack([one, zero, v * IMAGE_SIZE, zero, one, zero], 1)
    if op == "TranslateY":
        return torch.stack([one, zero, zero, zero, one, v * IMAGE_SIZE], 1)
    assert op == "Rotate", op
    # Image.rotate(v): angle % 360 (Python's sign rule), matrix rounded to 15 decimals, about the centre.
    angle = torch.fmod(v, 360.0)
    angle = torch.where(angle < 0, angle + 360.0, angle)
    angle = -(angle * (math.pi / 180.0))
    cos = torch.round(torch.cos(angle), decimals=15)
    sin = torch.round(torch.sin(angle), decimals=15)
    centre = IMAGE_SIZE / 2.0
    c = cos * -centre + sin * -centre + centre
    f = -sin * -centre + cos * -centre + centre
    return torch.stack([cos, sin, c, -sin, cos, f], 1)


def _affine_op(name: str, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _affine_nearest(x, _affine_coeffs(name, v))


# ------------------------------------------------------------------------------------------------------ views

# Op tables by id (plan.RANDAUGMENT_RANGES order; None = nothing to do); each takes (images, params of those rows).
_STRONG_OPS = tuple({
    "AutoContrast": lambda x, v: autocontrast(x),
    "Brightness": brightness,
    "Color": color,
    "Contrast": contrast,
    "Equalize": lambda x, v: equalize(x),
    "Identity": None,
    "Posterize": posterize,
    "Sharpness": sharpness,
    "Solarize": solarize,
    **{name: functools.partial(_affine_op, name)
       for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")},
}[name] for name in OP_ID)
# ColorJitter by plan.jitter_order id, on the [m, 4] factor rows; id 4 = jitter not applied.
_JITTER_OPS = (lambda x, f: brightness(x, f[:, 0]), lambda x, f: contrast(x, f[:, 1]),
               lambda x, f: color(x, f[:, 2]), lambda x, f: hue(x, f[:, 3]), None)


def _apply_by_kind(x: torch.Tensor, kinds: list[torch.Tensor], params: list[torch.Tensor], table) -> torch.Tensor:
    """Apply, slot after slot, op table[kinds[slot][i]] with params[slot][i] to sample i; returns the new batch.

    Before each slot the batch is reordered so that the samples of one op kind are contiguous (one gather of the
    whole batch); each op then reads and writes its own slice, with no per-kind index_select/index_copy. The order
    comes from the CPU plan, so nothing waits for the device; the original order is restored once at the end.
    """
    n, dev = len(x), x.device
    held = torch.arange(n)  # held[j] = the sample now in row j
    for slot_kinds, slot_params in zip(kinds, params):
        current = slot_kinds[held]
        order = torch.argsort(current, stable=True)
        held = held[order]
        x = x.index_select(0, order.to(dev, non_blocking=True))
        start = 0
        for kind, count in enumerate(torch.bincount(current, minlength=len(table)).tolist()):
            if count and table[kind] is not None:
                rows = slice(start, start + count)
                x[rows] = table[kind](x[rows], slot_params[held[rows]])
            start += count
    return x.index_select(0, torch.argsort(held).to(dev, non_blocking=True))


def weak_views(images: torch.Tensor, plan: ViewPlan) -> torch.Tensor:
    """uint8 [B, 3, 32, 32] weak views of `images` (any device) under `plan` (CPU)."""
    x = resized_crop_flip(images, plan.weak_box, plan.weak_flip)
    kinds = [torch.where(plan.jitter, plan.jitter_order[:, position], 4) for position in range(4)]
    x = _apply_by_kind(x, kinds, [plan.jitter_factors] * 4, _JITTER_OPS)
    rows = plan.gray.nonzero()[:, 0].to(x.device, non_blocking=True)
    return x.index_copy_(0, rows, grayscale(x.index_select(0, rows)))


def strong_views(images: torch.Tensor, plan: ViewPlan) -> torch.Tensor:
    """uint8 [B, 3, 32, 32] strong views of `images` (any device) under `plan` (CPU): three ops, then Cutout."""
    x = resized_crop_flip(images, plan.strong_box, plan.strong_flip)
    x = _apply_by_kind(x, list(plan.ops.T), list(plan.magnitudes.T), _STRONG_OPS)
    return cutout(x, plan.cutout)


def cutout(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Fill each sample's end-exclusive (x0, y0, x1, y1) box with CUTOUT_FILL."""
    b = boxes.to(x.device, non_blocking=True)
    ar = torch.arange(IMAGE_SIZE, device=x.device)
    cols = (ar >= b[:, 0:1]) & (ar < b[:, 2:3])  # [n, 32]
    rows = (ar >= b[:, 1:2]) & (ar < b[:, 3:4])
    mask = rows[:, None, :, None] & cols[:, None, None, :]
    fill = torch.tensor(CUTOUT_FILL, dtype=torch.uint8, device=x.device).view(1, 3, 1, 1)
    return torch.where(mask, fill, x)


def views(images: torch.Tensor, plan: ViewPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(weak, strong) uint8 views of a uint8 [B, 3, 32, 32] batch."""
    if images.dtype != torch.uint8 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise TypeError(f"expected uint8 [B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] images, got {images.dtype} "
                        f"of shape {tuple(images.shape)}")
    return weak_views(images, plan), strong_views(images, plan)
