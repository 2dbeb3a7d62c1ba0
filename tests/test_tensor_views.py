"""The batched tensor views against the PIL path on the same plan (real CIFAR-10), their distributions (§1.4),
batch-equals-single, and the device-resident training batches."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from device_transfers import DeviceTransfers
from PIL import Image, ImageEnhance, ImageOps

from trainables.data import augment as A
from trainables.data import pil_ops
from trainables.data import plan as P
from trainables.data import tensor_views as T
from trainables.data.loaders import DeviceTrainBatches, EpochBatchSampler
from trainables.transfer import to_device

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_cifar = pytest.mark.skipif(not (SHARED / "cifar10").is_dir(), reason=f"no shared CIFAR-10 at {SHARED}")

# Measured on 48 real CIFAR-10 test images with magnitudes spread over each op's range (tests below), then
# rounded up about 5x: nearest-neighbour rotation differs from PIL where a source coordinate lands within ~1e-15
# of a pixel edge (PIL accumulates the affine steps by repeated addition and rounds the matrix to 15 decimals in
# Python; we multiply in float64), which flips a few whole pixels.
RESAMPLING_BOUNDS = {  # op: (mean abs error in LSB, share of values off by more than 2 LSB)
    "Rotate": (0.01, 0.001),
    "ShearX": (0.005, 0.0005),
    "ShearY": (0.005, 0.0005),
    "ResizedCrop": (0.005, 0.0005),
}
EXACT_OPS = ("AutoContrast", "Equalize", "Identity", "Posterize", "Solarize", "TranslateX", "TranslateY")
ONE_LSB_OPS = ("Brightness", "Color", "Contrast", "Sharpness")


@pytest.fixture(scope="module")
def cifar() -> np.ndarray:
    """48 real CIFAR-10 test images, uint8 [48, 32, 32, 3], four of each class and a few more."""
    table = pq.read_table(SHARED / "cifar10" / "test.parquet", columns=["img"])
    rows = np.linspace(0, table.num_rows - 1, 48).astype(int)
    blobs = table.column("img").take(rows).to_pylist()
    return np.stack([np.asarray(Image.open(io.BytesIO(b["bytes"])).convert("RGB")) for b in blobs])


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _pil_each(images: np.ndarray, fn, params) -> torch.Tensor:
    return _nchw(np.stack([np.asarray(fn(Image.fromarray(img), p)) for img, p in zip(images, params)]))


def _magnitudes(low: float, high: float, n: int, seed: int) -> torch.Tensor:
    """n magnitudes covering [low, high): both ends and uniform draws between."""
    m = np.random.default_rng(seed).uniform(low, high, n)
    m[0], m[1] = low, np.nextafter(high, low)
    return torch.from_numpy(m)


def _errors(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    assert ours.dtype == theirs.dtype == torch.uint8 and ours.shape == theirs.shape
    return (ours.int() - theirs.int()).abs()


# ------------------------------------------------------------------------------------------ parity with PIL


@needs_cifar
@pytest.mark.parametrize("name", [name for name, _, _ in P.RANDAUGMENT_RANGES])
def test_randaugment_op_matches_pil(cifar, name):
    _, low, high = P.RANDAUGMENT_RANGES[P.OP_ID[name]]
    v = _magnitudes(low, high, len(cifar), seed=P.OP_ID[name])
    theirs = _pil_each(cifar, A.RANDAUGMENT_OPS[P.OP_ID[name]].apply, v.tolist())
    x = _nchw(cifar)
    plan = P.draw_plan(0, 0, torch.arange(len(cifar)))
    # Through the dispatcher: every sample draws this op in slot 0 and Identity in the other two, no Cutout.
    plan = P.ViewPlan(**{**plan.__dict__, "ops": torch.tensor([[P.OP_ID[name], 5, 5]]).expand(len(cifar), 3),
                         "magnitudes": torch.stack([v, v, v], 1),
                         "cutout": torch.zeros(len(cifar), 4, dtype=torch.int64),
                         "strong_box": torch.tensor([[0, 0, 32, 32]]).expand(len(cifar), 4),
                         "strong_flip": torch.zeros(len(cifar), dtype=torch.bool)})
    ours = T.strong_views(x, plan)
    err = _errors(ours, theirs)
    if name in EXACT_OPS:
        assert err.max() == 0
    elif name in ONE_LSB_OPS:
        inner = err[:, :, 1:-1, 1:-1] if name == "Sharpness" else err
        assert inner.max() <= 1
    else:
        mean_bound, share_bound = RESAMPLING_BOUNDS[name]
        assert err.float().mean() <= mean_bound and (err > 2).float().mean() <= share_bound
    assert x.equal(_nchw(cifar)), "the input batch must not be modified"


def test_autocontrast_and_equalize_match_pil_where_their_special_cases_live():
    """Against ImageOps itself on images built for the branches: a band with a single level (left as it is),
    two levels, narrow and full ranges, one odd pixel, and equalize's step = (pixels - pixels at the top
    level) // 255 at every value it can take (0 leaves the band as it is, at most 4 for 32 x 32)."""
    rng = np.random.default_rng(3)
    arrays = [rng.integers(low, high, size=(32, 32, 3), dtype=np.uint8)
              for low, high in [(0, 1), (37, 38), (100, 102), (10, 20), (250, 256), (0, 256)]]
    one_flat_band = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    one_flat_band[..., 1] = 7
    one_odd_pixel = np.zeros((32, 32, 3), np.uint8)
    one_odd_pixel[0, 0] = (200, 3, 255)
    arrays += [one_flat_band, one_odd_pixel]
    for step in range(5):  # below_top pixels at 50, the rest at the top level, 200
        below_top = min(255 * step + 10, 32 * 32 - 3)
        two_levels = np.full(32 * 32 * 3, 200, np.uint8)
        two_levels[:3 * below_top] = 50
        arrays.append(two_levels.reshape(32, 32, 3))
    images = np.stack(arrays)
    x = _nchw(images)
    no_params = [None] * len(images)
    assert T.autocontrast(x).equal(_pil_each(images, lambda im, _: ImageOps.autocontrast(im), no_params))
    assert T.equalize(x).equal(_pil_each(images, lambda im, _: ImageOps.equalize(im), no_params))


@needs_cifar
@pytest.mark.parametrize(("name", "ours_fn", "pil_fn", "span", "bound"), [
    ("brightness", T.brightness, lambda im, f: ImageEnhance.Brightness(im).enhance(f), P.JITTER_BRIGHTNESS, 1),
    ("contrast", T.contrast, pil_ops.contrast, P.JITTER_CONTRAST, 1),
    ("saturation", T.color, lambda im, f: ImageEnhance.Color(im).enhance(f), P.JITTER_SATURATION, 1),
    ("hue", T.hue, pil_ops.adjust_hue, P.JITTER_HUE, 2),
    ("hue-full-range", T.hue, pil_ops.adjust_hue, (-0.5, 0.5), 2),
])
def test_jitter_adjustment_matches_pil(cifar, name, ours_fn, pil_fn, span, bound):
    factors = _magnitudes(*span, len(cifar), seed=len(name))
    err = _errors(ours_fn(_nchw(cifar), factors), _pil_each(cifar, pil_fn, factors.tolist()))
    assert err.max() <= bound


@needs_cifar
def test_grayscale_and_flip_and_integer_crops_are_exact(cifar):
    x = _nchw(cifar)
    assert T.grayscale(x).equal(_pil_each(cifar, lambda im, _: pil_ops.grayscale_rgb(im), [None] * len(cifar)))
    n = len(cifar)
    # Integer crops: 32-wide/high boxes need no resampling along that axis, so those axes are pure copies.
    boxes = torch.tensor([[0, 0, 32, 32], [0, 0, 32, 32], [5, 0, 20, 32], [0, 7, 32, 17]]).repeat(n // 4, 1)
    flips = torch.arange(n) % 2 == 1
    theirs = _pil_each(cifar, lambda im, p: A._resized_crop_and_flip(im, *p), list(zip(boxes.tolist(), flips.tolist())))
    assert T.resized_crop_flip(x, boxes, flips).equal(theirs)
    assert T.resized_crop_flip(x[:2], boxes[:2], flips[:2])[1].equal(x[1].flip(-1))


@needs_cifar
def test_resized_crop_within_the_measured_bounds(cifar):
    plan = P.draw_plan(4, 1, torch.arange(len(cifar)))
    rows = A.plan_rows(plan)
    theirs = _pil_each(cifar, lambda im, r: A._resized_crop_and_flip(im, r.weak_box, r.weak_flip), rows)
    err = _errors(T.resized_crop_flip(_nchw(cifar), plan.weak_box, plan.weak_flip), theirs)
    mean_bound, share_bound = RESAMPLING_BOUNDS["ResizedCrop"]
    assert err.float().mean() <= mean_bound and (err > 2).float().mean() <= share_bound


@needs_cifar
@pytest.mark.parametrize("faithful", [False, True])
def test_cutout_is_exact_in_both_modes(cifar, faithful):
    plan = P.draw_plan(5, 0, torch.arange(len(cifar)), faithful_cutout=faithful)
    theirs = _pil_each(cifar, A._cutout, plan.cutout.tolist())
    assert T.cutout(_nchw(cifar), plan.cutout).equal(theirs)
    assert (plan.cutout[:, 2] > plan.cutout[:, 0]).float().mean() > 0.9


@needs_cifar
@pytest.mark.parametrize("faithful", [False, True])
def test_whole_views_match_the_pil_path_on_the_same_plan(cifar, faithful):
    images = np.concatenate([cifar, cifar])  # 96 samples: every op kind drawn a few times
    plan = P.draw_plan(11, 3, torch.arange(len(images)), faithful_cutout=faithful)
    rows = A.plan_rows(plan)
    weak, strong = T.views(_nchw(images), plan)
    assert weak.equal(_pil_each(images, A.weak_view, rows))
    err = _errors(strong, _pil_each(images, A.strong_view, rows))
    mean_bound, share_bound = RESAMPLING_BOUNDS["Rotate"]
    assert err.float().mean() <= mean_bound and (err > 2).float().mean() <= share_bound


@needs_cifar
def test_batch_equals_single(cifar):
    x = _nchw(cifar[:16])
    plan = P.draw_plan(3, 7, torch.arange(100, 116))
    weak, strong = T.views(x, plan)
    for i in range(len(x)):
        w, s = T.views(x[i:i + 1], plan.select(i))
        assert w[0].equal(weak[i]) and s[0].equal(strong[i])
    # both views share one batch of rows: neither depends on the other being made alongside it
    assert T.weak_views(x, plan).equal(weak) and T.strong_views(x, plan).equal(strong)


@needs_cifar
@pytest.mark.parametrize("world_size", [1, 2])
def test_device_batches_are_one_views_call_per_batch_whatever_the_grouping(cifar, monkeypatch, world_size):
    """DeviceTrainBatches makes views for several batches per call; every batch, the last of a short group included,
    is what a views call on that batch alone gives, with the sampler's order and keys, in every epoch and rank."""
    images = _nchw(cifar)
    for rank in range(world_size):
        sampler = EpochBatchSampler(len(images), 10, seed=5, rank=rank, world_size=world_size)
        for per_call in (1, 3, 1000):  # 10 / world_size samples per batch: one batch, 3 of 4 then 1, all 4
            monkeypatch.setattr(DeviceTrainBatches, "VIEW_CALL_SAMPLES", per_call * 10 // world_size)
            batches = DeviceTrainBatches(images, sampler, seed=5)
            for epoch in (0, 3):
                sampler.set_epoch(epoch)
                got = list(batches)
                assert len(got) == len(sampler) == 4
                for (weak, strong, idx), keys in zip(got, sampler):
                    assert idx.tolist() == [i for _, i in keys] and len(idx) == 10 // world_size
                    w, s = T.views(images[idx], P.draw_plan(5, epoch, idx))
                    assert weak.equal(w) and strong.equal(s)


def test_views_send_the_plan_in_one_copy_and_read_nothing_back():
    """A pageable host -> device copy waits for the GPU's stream, and so does a read back (torch.bincount's on
    CUDA): each would stop the host from queueing work ahead. Per views call, everything the plan gives the
    device goes in one copy, and nothing comes back; DeviceTrainBatches adds one copy for the sample indices."""
    n = 64
    images = torch.empty(n, 3, 32, 32, dtype=torch.uint8, device="meta")
    T.views(images, P.draw_plan(0, 0, torch.arange(n)))  # the first call sends the per-device constant tables
    for epoch in range(1, 4):
        plan = P.draw_plan(0, epoch, torch.arange(n))
        with DeviceTransfers() as seen:
            weak, strong = T.views(images, plan)
        assert weak.device.type == strong.device.type == "meta"
        assert seen.to_device == ["aten._to_copy.default"] and seen.to_host == []
    with DeviceTransfers() as seen:
        T.randaugment(images, plan.ops, plan.magnitudes)
    assert len(seen.to_device) == 1 and seen.to_host == []

    sampler = EpochBatchSampler(n * 4, 32, seed=1)
    with DeviceTransfers() as seen:
        batches = list(DeviceTrainBatches(torch.empty(n * 4, 3, 32, 32, dtype=torch.uint8, device="meta"),
                                          sampler, seed=1))
    calls = -(-len(sampler) * 32 // DeviceTrainBatches.VIEW_CALL_SAMPLES)
    assert len(batches) == 8 and all(idx.device.type == "meta" for _, _, idx in batches)
    assert len(seen.to_device) == 2 * calls and seen.to_host == []


def test_views_run_a_fixed_number_of_device_ops_whatever_the_batch():
    """No Python loop over samples: what a views call runs on the device (a GPU's kernel launches) depends on the
    op kinds its plan drew, not on how many samples drew them. From 512 samples on, every kind is drawn in every
    slot and the count stops growing. On the meta device: 887 ops a call before the views shared one batch of rows
    and the plan-only tables came from the host, 649 after; the bound leaves room for small changes."""
    counts = []
    for n in (512, 2048):
        images = torch.empty(n, 3, 32, 32, dtype=torch.uint8, device="meta")
        T.views(images, P.draw_plan(0, 0, torch.arange(n)))  # the first call sends the per-device constant tables
        with DeviceTransfers() as seen:
            T.views(images, P.draw_plan(0, 1, torch.arange(n)))
        counts.append(len(seen.device_ops))
    assert counts[0] == counts[1] <= 700


def test_to_device_packs_every_dtype_and_shape_into_one_buffer():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.rand(5, 6, dtype=torch.float64, generator=g), torch.rand(3, generator=g) < 0.5,
               torch.randint(0, 256, (7, 1, 256), dtype=torch.uint8, generator=g), torch.empty(0, 6),
               torch.randint(-2**40, 2**40, (2, 3), generator=g), torch.tensor(3.5), torch.rand(4, 3, generator=g).T]
    sent = to_device(tensors, torch.device("cpu"), pack=True)
    assert len({t.untyped_storage().data_ptr() for t in sent}) == 1, "one buffer"
    for before, after in zip(tensors, sent):
        assert after.dtype == before.dtype and after.shape == before.shape and after.equal(before)


def test_views_reject_non_uint8_input():
    with pytest.raises(TypeError, match="uint8"):
        T.views(torch.zeros(2, 3, 32, 32), P.draw_plan(0, 0, torch.arange(2)))


# ----------------------------------------------------------------------------------------- distributions (§1.4)

# Upper 0.1% points of the chi-square distribution (tables): 13 and 23 degrees of freedom.
CHI2_999 = {13: 34.528, 23: 49.728}


def _chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_plan_distributions_match_the_spec():
    n = 30000
    p = P.draw_plan(123, 4, torch.arange(n))
    # 3 ops per sample, uniform over the 14 with replacement, in every slot.
    assert _chi_square(torch.bincount(p.ops.flatten(), minlength=14).double()) < CHI2_999[13]
    for slot in range(3):
        assert _chi_square(torch.bincount(p.ops[:, slot], minlength=14).double()) < CHI2_999[13]
    # Magnitudes uniform in each op's range: inside it, and spread over it (min/max near the ends, mean central).
    for name, low, high in P.RANDAUGMENT_RANGES:
        m = p.magnitudes[p.ops == P.OP_ID[name]]
        width = high - low
        assert m.min() >= low and m.max() < high
        assert m.min() < low + 0.01 * width and m.max() > high - 0.01 * width
        assert abs(float(m.mean()) - (low + high) / 2) < 0.02 * width
    posterize_bits = p.magnitudes[p.ops == P.OP_ID["Posterize"]].long()
    assert set(posterize_bits.tolist()) == {4, 5, 6, 7}
    # Bernoulli draws: within 4 standard deviations of their probabilities.
    for draws, prob in ((p.weak_flip, P.FLIP_PROB), (p.strong_flip, P.FLIP_PROB), (p.jitter, P.JITTER_PROB),
                        (p.gray, P.GRAYSCALE_PROB)):
        assert abs(float(draws.double().mean()) - prob) < 4 * (prob * (1 - prob) / n) ** 0.5
    # ColorJitter: a uniform order of the four adjustments (24 permutations) and factors in torchvision's ranges.
    codes = (p.jitter_order * torch.tensor([64, 16, 4, 1])).sum(1)
    assert torch.equal(p.jitter_order.sort(1).values, torch.arange(4).expand(n, 4))
    assert _chi_square(torch.unique(codes, return_counts=True)[1].double()) < CHI2_999[23]
    for k, (low, high) in enumerate((P.JITTER_BRIGHTNESS, P.JITTER_CONTRAST, P.JITTER_SATURATION, P.JITTER_HUE)):
        f = p.jitter_factors[:, k]
        assert f.min() >= low and f.max() < high and f.min() < low + 0.01 and f.max() > high - 0.01
    # Cutout side int(v * 32), v ~ U[0, 0.5): box sides (fix mode, unclipped ones) spread over 0..15.
    sides = p.cutout[:, 2] - p.cutout[:, 0]
    assert sides.max() == 15 and (sides == 0).any()
    # Crop areas as torchvision's RandomResizedCrop.get_params draws them (rejected boxes lower the mean below
    # E[U(0.2, 1)] = 0.6), sampled here from torch's RNG in a forked state.
    import torchvision.transforms as TV

    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = torch.tensor([b[2] * b[3] for b in (TV.RandomResizedCrop.get_params(torch.zeros(3, 32, 32), (0.2, 1.0),
                                                                                  (3 / 4, 4 / 3))
                                                   for _ in range(5000))], dtype=torch.float64) / 1024
    quantiles = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for boxes in (p.weak_box, p.strong_box):
        area = (boxes[:, 2] * boxes[:, 3]).double() / 1024
        assert abs(float(area.mean() - ref.mean())) < 0.01
        assert (torch.quantile(area, quantiles) - torch.quantile(ref, quantiles)).abs().max() < 0.03


def test_hue_fixed_point_rounding_equals_the_double_product_for_every_factor_and_level():
    """hsv2rgb's round(v * factor) in C doubles (half away from zero; all values >= 0) against the table's
    (v * round(factor * 2^bits) + 2^(bits - 1)) >> bits, for every factor of the table and every v in 0..255:
    equal at the table's bits, and not at one bit fewer (so the check can tell)."""
    factors = T._hsv_to_rgb_factors().reshape(-1)

    def mismatches(bits: int) -> int:
        fixed = torch.round(factors * 2.0 ** bits).to(torch.int64)
        return sum(int(((fixed * v + (1 << (bits - 1))) >> bits).ne(torch.floor(factors * v + 0.5).to(torch.int64))
                       .sum()) for v in range(256))

    assert T._hue_tables(torch.device("cpu"))[2].reshape(-1).equal(
        torch.round(factors * 2.0 ** T._HUE_FIXED_BITS).to(torch.int32))  # the table holds these factors
    assert mismatches(T._HUE_FIXED_BITS) == 0
    assert mismatches(T._HUE_FIXED_BITS - 1) > 0


def test_hue_reproduces_pil_on_every_colour():
    """The factored HSV tables against PIL on all 2^24 colours (greys and ties included), as 256 images of 256x256
    pixels, each image at its own hue shift, so every shift int(factor * 255) can take (-127 to 127) occurs: exact."""
    colours = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], -1).astype(np.uint8)
    images = rgb.reshape(256, 256, 256, 3)[:, :, :, [1, 2, 0]]  # each image mixes every r with one g
    shifts = np.random.default_rng(0).permutation(np.append(np.arange(-127, 128), 0))
    factors = torch.from_numpy((shifts + 0.5 * np.sign(shifts)) / 255.0)  # int(factor * 255) = shift
    ours = torch.cat([T.hue(_nchw(images[i:i + 32]), factors[i:i + 32]) for i in range(0, 256, 32)])
    assert ours.equal(_pil_each(images, pil_ops.adjust_hue, factors.tolist()))
