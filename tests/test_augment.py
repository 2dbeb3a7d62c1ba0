"""Properties of the weak/strong views, Cutout, the RandAugment table, normalisation and per-sample seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageDraw

from trainables.data import augment as A
from trainables.data import plan as P


def _random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _filled_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    """End-exclusive (x0, y0, x1, y1) bounding box of the changed pixels, checking it is a solid rectangle."""
    changed = np.any(before != after, axis=2)
    if not changed.any():
        return None
    ys, xs = np.nonzero(changed)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    assert changed[y0:y1, x0:x1].all(), "Cutout must fill a solid rectangle"
    assert changed.sum() == (x1 - x0) * (y1 - y0)
    return int(x0), int(y0), int(x1), int(y1)


# ------------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("dataset", "split", "faithful", "expected"),
    [
        ("cifar10", "train", False, (A.CIFAR10_MEAN, A.CIFAR10_STD)),
        ("cifar10", "train", True, (A.CIFAR10_MEAN, A.CIFAR10_STD)),
        ("cifar10", "test", False, (A.CIFAR10_MEAN, A.CIFAR10_STD)),
        ("cifar10", "test", True, (A.CIFAR100_MEAN, A.CIFAR100_STD)),
        ("cifar100", "train", False, (A.CIFAR100_MEAN, A.CIFAR100_STD)),
        ("cifar100", "train", True, (A.CIFAR100_MEAN, A.CIFAR100_STD)),
        ("cifar100", "test", False, (A.CIFAR100_MEAN, A.CIFAR100_STD)),
        ("cifar100", "test", True, (A.CIFAR100_MEAN, A.CIFAR100_STD)),
    ],
)
def test_normalization_statistics(dataset, split, faithful, expected):
    assert A.normalization(dataset, split, faithful_test_norm=faithful) == expected


def test_normalization_constants_match_spec():
    assert A.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert A.CIFAR10_STD == (0.247, 0.243, 0.261)
    assert A.CIFAR100_MEAN == (0.5071, 0.4867, 0.4408)
    assert A.CIFAR100_STD == (0.2675, 0.2565, 0.2761)


@pytest.mark.parametrize(("dataset", "split"), [("svhn", "train"), ("cifar10", "val")])
def test_normalization_rejects_unknown_names(dataset, split):
    with pytest.raises(ValueError):
        A.normalization(dataset, split)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_normalize_is_bit_identical_to_torchvision(dataset):
    mean, std = A.normalization(dataset, "train")
    images = _random_images(6, seed=3)
    reference = torch.stack([T.Compose([T.ToTensor(), T.Normalize(mean, std)])(Image.fromarray(x)) for x in images])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    out = A.normalize(batch, mean, std)
    assert out.dtype == torch.float32 and out.shape == (6, 3, 32, 32)
    assert torch.equal(out, reference)
    assert torch.equal(batch, torch.from_numpy(images).permute(0, 3, 1, 2)), "input must not be modified"


def test_normalize_rejects_float_input():
    with pytest.raises(TypeError):
        A.normalize(torch.zeros(1, 3, 32, 32), A.CIFAR10_MEAN, A.CIFAR10_STD)


# ------------------------------------------------------------------------------------------ seeding, determinism


def test_plan_rows_depend_only_on_seed_epoch_and_index():
    batch = P.draw_plan(7, 2, torch.tensor([5, 9, 0, 5]))
    alone = P.draw_plan(7, torch.tensor([2]), torch.tensor([9]))
    assert A.plan_rows(batch)[1] == A.plan_rows(alone)[0]
    assert A.plan_rows(batch)[0] == A.plan_rows(batch)[3]
    assert A.plan_rows(batch)[0] != A.plan_rows(P.draw_plan(7, 5, torch.tensor([2])))[0]
    assert A.plan_rows(batch)[0] != A.plan_rows(P.draw_plan(8, 2, torch.tensor([5])))[0]


def test_splitmix64_matches_the_reference_sequence():
    # SplitMix64 seeded with 0: the first outputs of Vigna's reference generator (state advanced by the golden
    # ratio before each output).
    state = torch.tensor([0, P._GOLDEN], dtype=torch.int64)
    out = [v & ((1 << 64) - 1) for v in P.splitmix64(state).tolist()]
    assert out == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_dataset_item_shapes_and_dtypes():
    images = _random_images(4)
    dataset = A.TwoViewDataset(images, seed=0)
    assert len(dataset) == 4
    assert dataset.images is images
    weak, strong, index = dataset[(3, 2)]
    for view in (weak, strong):
        assert view.dtype == torch.uint8 and view.shape == (3, 32, 32) and view.is_contiguous()
    assert index == 2 and isinstance(index, int)


def test_dataset_rejects_wrong_image_array():
    with pytest.raises(ValueError):
        A.TwoViewDataset(np.zeros((2, 32, 32, 3), dtype=np.float32), seed=0)
    with pytest.raises(ValueError):
        A.TwoViewDataset(np.zeros((2, 3, 32, 32), dtype=np.uint8), seed=0)


def test_same_key_gives_identical_views_regardless_of_call_history():
    images = _random_images(20)
    first = A.TwoViewDataset(images, seed=11)
    second = A.TwoViewDataset(images, seed=11)
    for _ in range(5):
        second[(9, 0)]  # drawing other samples first must not change anything
    for index in range(20):
        a, b = first[(4, index)], second[(4, index)]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def _fraction_different(dataset_a, key_a, dataset_b, key_b, n):
    differ_weak = differ_strong = 0
    for index in range(n):
        a, b = dataset_a[(key_a, index)], dataset_b[(key_b, index)]
        differ_weak += not torch.equal(a[0], b[0])
        differ_strong += not torch.equal(a[1], b[1])
    return differ_weak / n, differ_strong / n


def test_different_epoch_or_seed_gives_different_views():
    images = _random_images(20)
    seed0, seed1 = A.TwoViewDataset(images, seed=0), A.TwoViewDataset(images, seed=1)
    assert min(_fraction_different(seed0, 0, seed0, 1, 20)) >= 0.9
    assert min(_fraction_different(seed0, 0, seed1, 0, 20)) >= 0.9


def test_weak_and_strong_views_differ():
    dataset = A.TwoViewDataset(_random_images(10), seed=0)
    assert sum(not torch.equal(*dataset[(0, i)][:2]) for i in range(10)) >= 9


def test_dataloader_batches_do_not_depend_on_worker_count():
    dataset = A.TwoViewDataset(_random_images(12, seed=5), seed=3)
    keys = [(epoch, int(index)) for epoch in (0, 1) for index in np.random.default_rng(epoch).permutation(12)]

    def batches(num_workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=5, sampler=keys, num_workers=num_workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 5
    for (weak_a, strong_a, index_a), (weak_b, strong_b, index_b) in zip(serial, parallel):
        assert torch.equal(weak_a, weak_b) and torch.equal(strong_a, strong_b) and torch.equal(index_a, index_b)
        assert weak_a.dtype == torch.uint8 and weak_a.shape[1:] == (3, 32, 32)
    assert torch.cat([batch[2] for batch in serial]).tolist() == [index for _, index in keys]


# ------------------------------------------------------------------------------------------------------ weak view


def test_random_resized_crop_box_stays_inside_and_respects_scale_and_ratio():
    p = P.draw_plan(0, 0, torch.arange(2000))
    for boxes in (p.weak_box, p.strong_box):
        top, left, height, width = boxes.T
        assert ((top >= 0) & (top + height <= 32) & (left >= 0) & (left + width <= 32)).all()
        # Rounding w and h to integers widens the bounds a little on 32x32.
        area, ratio = (height * width).double(), width.double() / height
        assert ((area >= 0.2 * 1024 * 0.85) & (area <= 1024)).all()
        assert ((ratio >= 0.75 * 0.85) & (ratio <= 4 / 3 / 0.85)).all()
        assert (area < 0.3 * 1024).any() and (area == 1024).any()


def test_random_resized_crop_falls_back_to_the_whole_image_like_torchvision():
    # scale 1 and ratio 4/3 on every try: w = round(sqrt(1024 * 4/3)) = 37 > 32, so all 10 tries fail and
    # torchvision returns the largest central box with a ratio in range, the whole square.
    u = torch.full((1, 2 * P.CROP_TRIES + 2), 1.0 - 2.0 ** -53, dtype=torch.float64)
    assert P._resized_crop_boxes(u).tolist() == [[0, 0, 32, 32]]
    u[0, 2:4] = 0.5  # the second try fits
    top, left, height, width = P._resized_crop_boxes(u)[0].tolist()
    assert (height, width) == (round(math.sqrt(1024 * 0.6)), round(math.sqrt(1024 * 0.6))) == (25, 25)
    assert (top, left) == (7, 7)  # floor((1 - 2^-53) * 8)


def test_weak_view_flips_about_half_the_time():
    # A left-to-right gray ramp: jitter keeps gray gray and the ramp increasing, so only a flip reverses it.
    ramp = np.repeat(np.repeat((np.arange(32, dtype=np.uint8) * 8)[None, :, None], 32, axis=0), 3, axis=2)
    img = Image.fromarray(ramp)
    rows = A.plan_rows(P.draw_plan(1, 0, torch.arange(400)))
    flips = 0
    for row in rows:
        view = np.asarray(A.weak_view(img, row), dtype=np.float64)
        flipped = view[:, :8].mean() > view[:, -8:].mean()
        assert flipped == row.weak_flip
        flips += flipped
    assert 0.4 <= flips / len(rows) <= 0.6


def test_weak_view_grayscale_about_a_fifth_of_the_time():
    img = Image.fromarray(_random_images(1, seed=9)[0])
    rows = A.plan_rows(P.draw_plan(2, 0, torch.arange(400)))
    gray = 0
    for row in rows:
        view = np.asarray(A.weak_view(img, row))
        assert view.shape == (32, 32, 3)
        gray += bool((view[..., 0] == view[..., 1]).all() and (view[..., 1] == view[..., 2]).all())
    assert 0.12 <= gray / len(rows) <= 0.28


# ------------------------------------------------------------------------------------------------- RandAugment

SPEC_RANGES = {
    "Brightness": (0.05, 0.95),
    "Color": (0.05, 0.95),
    "Contrast": (0.05, 0.95),
    "Sharpness": (0.05, 0.95),
    "Posterize": (4.0, 8.0),
    "Rotate": (-30.0, 30.0),
    "ShearX": (-0.3, 0.3),
    "ShearY": (-0.3, 0.3),
    "TranslateX": (-0.3, 0.3),
    "TranslateY": (-0.3, 0.3),
    "Solarize": (0.0, 256.0),
}
SPEC_OP_NAMES = {
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Rotate", "Sharpness",
    "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
}


def test_randaugment_table_is_the_specified_fourteen_ops():
    names = [op.name for op in A.RANDAUGMENT_OPS]
    assert len(names) == 14 and set(names) == SPEC_OP_NAMES
    for op in A.RANDAUGMENT_OPS:
        if op.name in SPEC_RANGES:
            assert (op.low, op.high) == SPEC_RANGES[op.name]
    assert P.NUM_RANDAUGMENT_OPS == 3


@pytest.mark.parametrize("op", A.RANDAUGMENT_OPS, ids=lambda op: op.name)
def test_each_randaugment_op_returns_a_32x32_rgb_image(op):
    img = Image.fromarray(_random_images(1, seed=4)[0])
    rng = np.random.default_rng(0)
    for magnitude in [op.low, np.nextafter(op.high, op.low), *rng.uniform(op.low, op.high, size=5)]:
        out = op.apply(img, float(magnitude))
        assert out.mode == "RGB" and out.size == (32, 32)


def _op(name):
    return next(op for op in A.RANDAUGMENT_OPS if op.name == name)


def test_randaugment_ops_do_what_their_names_say():
    pixels = _random_images(1, seed=6)[0]
    img = Image.fromarray(pixels)
    assert np.array_equal(np.asarray(_op("Identity").apply(img, 0.5)), pixels)
    assert np.array_equal(np.asarray(_op("Solarize").apply(img, 0.0)), 255 - pixels)
    assert np.array_equal(np.asarray(_op("Solarize").apply(img, 256.0)), pixels)
    assert np.asarray(_op("Brightness").apply(img, 0.5)).mean() < pixels.mean() * 0.6
    # A quarter-width translation moves content 8 px to the left and fills with black.
    shifted = np.asarray(_op("TranslateX").apply(img, 0.25))
    assert np.array_equal(shifted[:, :24], pixels[:, 8:]) and not shifted[:, 24:].any()
    shifted = np.asarray(_op("TranslateY").apply(img, -0.25))
    assert np.array_equal(shifted[8:], pixels[:24]) and not shifted[:8].any()
    for magnitude in np.random.default_rng(1).uniform(4.0, 8.0, size=20):
        dropped_bits = 8 - int(magnitude)
        assert 1 <= dropped_bits <= 4
        posterized = np.asarray(_op("Posterize").apply(img, float(magnitude)))
        assert not (posterized & ((1 << dropped_bits) - 1)).any()


def test_plan_draws_three_ops_with_replacement_and_magnitudes_in_range():
    p = P.draw_plan(0, 0, torch.arange(300))
    assert p.ops.shape == p.magnitudes.shape == (300, 3)
    assert set(p.ops.flatten().tolist()) == set(range(14))
    assert any(len(set(row)) < 3 for row in p.ops.tolist()), "ops are drawn with replacement"
    for index, magnitude in zip(p.ops.flatten().tolist(), p.magnitudes.flatten().tolist()):
        assert A.RANDAUGMENT_OPS[index].low <= magnitude < A.RANDAUGMENT_OPS[index].high
    posterize = [m for i, m in zip(p.ops.flatten().tolist(), p.magnitudes.flatten().tolist())
                 if A.RANDAUGMENT_OPS[i].name == "Posterize"]
    assert {int(m) for m in posterize} == {4, 5, 6, 7}


# ------------------------------------------------------------------------------------------------------- Cutout


def _constant_image() -> Image.Image:
    return Image.new("RGB", (32, 32), (10, 200, 40))


def _cutout_draws(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(side, u_x, u_y): Cutout's three draws, side already scaled to pixels."""
    u = torch.from_numpy(np.random.default_rng(seed).random((3, n)))
    return u[0] * 0.5 * 32, u[1], u[2]


def _boxes(side, ux, uy, faithful):
    return P.cutout_boxes(side, P.cutout_centre(ux, faithful), P.cutout_centre(uy, faithful), faithful).tolist()


@pytest.mark.parametrize("faithful", [False, True])
def test_cutout_fills_one_rectangle_with_the_fill_colour(faithful):
    img = _constant_image()
    before = np.asarray(img).copy()
    for box in P.draw_plan(3, 0, torch.arange(200), faithful_cutout=faithful).cutout.tolist():
        after = np.asarray(A._cutout(img, box))
        found = _filled_box(before, after)
        assert found == (tuple(box) if box[2] > box[0] else None)
        if found is not None:
            x0, y0, x1, y1 = found
            assert (after[y0:y1, x0:x1] == A.CUTOUT_FILL).all()
    assert np.array_equal(np.asarray(img), before), "the input image must not be modified"


def test_cutout_fix_mode_box_has_side_floor_of_l_clipped_at_the_far_border():
    side, ux, uy = _cutout_draws(400, 4)
    side[:5] = torch.tensor([0.0, 0.5, 0.999, 15.999, 1.0])  # boxes of side int(L) = 0 are empty
    clipped = unclipped = 0
    for length, (x0, y0, x1, y1) in zip(side.tolist(), _boxes(side, ux, uy, faithful=False)):
        if int(length) == 0:
            assert x1 == x0 and y1 == y0
            continue
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        assert x1 - x0 == min(int(length), 32 - x0) and y1 - y0 == min(int(length), 32 - y0)
        clipped += x0 + int(length) > 32
        unclipped += x1 - x0 == int(length)
    assert clipped > 0 and unclipped > 0


def test_cutout_faithful_mode_box_is_end_inclusive():
    side, ux, uy = _cutout_draws(400, 5)
    inclusive = 0
    for length, (x0, y0, x1, y1) in zip(side.tolist(), _boxes(side, ux, uy, faithful=True)):
        for corner, end in ((x0, x1), (y0, y1)):
            if corner + length < 32:
                assert end - corner == int(length) + 1
                inclusive += 1
            else:
                assert end == 32
    assert inclusive > 0


def test_cutout_faithful_mode_matches_the_reference_procedure():
    """A literal transcription of the reference's CutoutAbs, fed the same draws."""
    img = Image.fromarray(_random_images(1, seed=8)[0])
    side, ux, uy = _cutout_draws(200, 6)
    for k, box in enumerate(_boxes(side, ux, uy, faithful=True)):
        length = float(side[k])
        x = 32.0 + (1.0 - 32.0) * float(ux[k])  # np.random.uniform(32): low=32, high=1
        y = 32.0 + (1.0 - 32.0) * float(uy[k])
        x0, y0 = int(max(0, x - length / 2.0)), int(max(0, y - length / 2.0))
        expected = img.copy()
        ImageDraw.Draw(expected).rectangle((x0, y0, min(32, x0 + length), min(32, y0 + length)), A.CUTOUT_FILL)
        assert np.array_equal(np.asarray(A._cutout(img, box)), np.asarray(expected))


@pytest.mark.parametrize("faithful", [False, True])
def test_cutout_centre_ranges(faithful):
    centres = P.cutout_centre(torch.from_numpy(np.random.default_rng(0).random(2000)), faithful)
    if faithful:
        assert centres.min() > 1.0 and centres.max() <= 32.0 and centres.min() < 1.1
    else:
        assert centres.min() >= 0.0 and centres.max() < 32.0 and centres.min() < 0.1
    assert centres.max() > 31.9


def test_cutout_box_fix_mode_is_inside_the_image():
    side, ux, uy = _cutout_draws(2000, 1)
    for length, (x0, y0, x1, y1) in zip(side.tolist(), _boxes(side, ux, uy, faithful=False)):
        assert 0 <= x0 <= x1 <= 32 and 0 <= y0 <= y1 <= 32
        assert x1 - x0 == min(int(length), 32 - x0) and y1 - y0 == min(int(length), 32 - y0)


# -------------------------------------------------------------------------------------------------- strong view


@pytest.mark.parametrize("faithful", [False, True])
def test_strong_view_is_a_32x32_rgb_image_with_cutout_fill(faithful):
    img = Image.fromarray(_random_images(1, seed=2)[0])
    has_fill = 0
    for row in A.plan_rows(P.draw_plan(7, 0, torch.arange(50), faithful_cutout=faithful)):
        out = A.strong_view(img, row)
        assert out.mode == "RGB" and out.size == (32, 32)
        has_fill += bool((np.asarray(out) == A.CUTOUT_FILL).all(axis=2).any())
    assert has_fill >= 40


# ----------------------------------------------------------------------------- pil_ops: exact, faster stand-ins


def _exactness_images() -> list[Image.Image]:
    """Random, smooth, narrow-range and degenerate RGB images: every branch of the LUT builders."""
    rng = np.random.default_rng(11)
    arrays = list(_random_images(40, seed=12))
    ramp = np.linspace(0, 255, 32, dtype=np.float64)
    arrays.append(np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[None, ::-1]), -1).astype(np.uint8))
    for low, high in [(0, 1), (100, 103), (0, 256), (250, 256), (37, 38)]:  # two levels, narrow, full, one level
        arrays.extend(rng.integers(low, high, size=(3, 32, 32, 3), dtype=np.uint8))
    arrays.append(np.zeros((32, 32, 3), np.uint8))
    arrays.append(np.full((32, 32, 3), 255, np.uint8))
    mixed = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    mixed[..., 1] = 7  # one constant band beside two varied ones
    arrays.append(mixed)
    sparse = np.zeros((32, 32, 3), np.uint8)
    sparse[0, 0] = (200, 3, 255)  # one odd pixel: equalize's step is 0 or tiny
    arrays.append(sparse)
    gray = np.asarray(Image.fromarray(arrays[0]).convert("L").convert("RGB"))
    arrays.append(np.ascontiguousarray(gray))
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


def _same_pixels(ours: Image.Image, theirs: Image.Image) -> bool:
    return ours.mode == theirs.mode and ours.size == theirs.size and ours.tobytes() == theirs.tobytes()


def test_pil_ops_reproduce_pil_and_torchvision_exactly():
    import torchvision.transforms.functional as F
    from PIL import ImageEnhance, ImageOps

    from trainables.data import pil_ops

    images = _exactness_images()
    thresholds = [0.0, 0.3, 1.0, 1.5, 64.0, 127.9, 128.0, 200.5, 255.0, 255.5, 256.0]
    factors = [0.0, 0.05, 0.37, 0.6, 0.95, 1.0, 1.4]
    hues = [-0.5, -0.1, -0.0371, 0.0, 0.02, 0.1, 0.5]
    for img in images:
        assert _same_pixels(pil_ops.autocontrast(img), ImageOps.autocontrast(img))
        assert _same_pixels(pil_ops.equalize(img), ImageOps.equalize(img))
        for bits in range(1, 9):
            assert _same_pixels(pil_ops.posterize(img, bits), ImageOps.posterize(img, bits))
        for threshold in thresholds:
            assert _same_pixels(pil_ops.solarize(img, threshold), ImageOps.solarize(img, threshold)), threshold
        for factor in factors:
            assert _same_pixels(pil_ops.contrast(img, factor), ImageEnhance.Contrast(img).enhance(factor))
            assert _same_pixels(pil_ops.contrast(img, factor), F.adjust_contrast(img, factor))
        for hue in hues:
            assert _same_pixels(pil_ops.adjust_hue(img, hue), F.adjust_hue(img, hue)), hue
        assert _same_pixels(pil_ops.grayscale_rgb(img), F.rgb_to_grayscale(img, num_output_channels=3))


def test_pil_ops_match_on_random_magnitudes_of_the_views():
    import torchvision.transforms.functional as F
    from PIL import ImageEnhance, ImageOps

    from trainables.data import pil_ops

    rng = np.random.default_rng(5)
    for img in (Image.fromarray(x) for x in _random_images(60, seed=21)):
        threshold, factor, hue = rng.uniform(0, 256), rng.uniform(0.05, 1.4), rng.uniform(-0.1, 0.1)
        assert _same_pixels(pil_ops.solarize(img, threshold), ImageOps.solarize(img, threshold))
        assert _same_pixels(pil_ops.contrast(img, factor), ImageEnhance.Contrast(img).enhance(factor))
        assert _same_pixels(pil_ops.adjust_hue(img, hue), F.adjust_hue(img, hue))


def test_pil_ops_reject_what_the_originals_reject():
    from trainables.data import pil_ops

    img = Image.fromarray(_random_images(1)[0])
    with pytest.raises(ValueError, match="0.6"):
        pil_ops.adjust_hue(img, 0.6)
    with pytest.raises(ValueError, match="9"):
        pil_ops.posterize(img, 9)


def _reference_views(img: Image.Image, row: A.SampleDraws) -> tuple[Image.Image, ...]:
    """The weak and strong views composed from torchvision's functional API and PIL's ImageOps/ImageEnhance (the
    reference's calls), on the same plan row as augment.py: an oracle for the fast path."""
    import torchvision.transforms.functional as F
    from PIL import ImageEnhance, ImageOps
    from torchvision.transforms import InterpolationMode

    def crop_and_flip(im, box, flip):
        top, left, h, w = box
        im = F.resized_crop(im, top, left, h, w, [32, 32], InterpolationMode.BILINEAR)
        return F.hflip(im) if flip else im

    weak = crop_and_flip(img, row.weak_box, row.weak_flip)
    if row.jitter:
        adjust = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
        for k in row.jitter_order:
            weak = adjust[k](weak, row.jitter_factors[k])
    if row.gray:
        weak = F.rgb_to_grayscale(weak, num_output_channels=3)

    originals = {
        "AutoContrast": lambda im, v: ImageOps.autocontrast(im),
        "Contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
        "Equalize": lambda im, v: ImageOps.equalize(im),
        "Posterize": lambda im, v: ImageOps.posterize(im, int(v)),
        "Solarize": lambda im, v: ImageOps.solarize(im, v),
    }
    strong = crop_and_flip(img, row.strong_box, row.strong_flip)
    for op_index, magnitude in zip(row.ops, row.magnitudes):
        op = A.RANDAUGMENT_OPS[op_index]
        strong = originals.get(op.name, op.apply)(strong, magnitude)
    if row.cutout[2] > row.cutout[0]:
        strong = strong.copy()
        ImageDraw.Draw(strong).rectangle((row.cutout[0], row.cutout[1], row.cutout[2] - 1, row.cutout[3] - 1),
                                         A.CUTOUT_FILL)
    return weak, strong


@pytest.mark.parametrize("faithful_cutout", [False, True])
def test_fast_views_equal_the_torchvision_and_pil_composition(faithful_cutout):
    ramp = np.linspace(0, 255, 32)
    smooth = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1).astype(np.uint8)
    images = [*_random_images(150, seed=31), smooth]
    dataset = A.TwoViewDataset(np.stack(images), seed=7, faithful_cutout=faithful_cutout)
    rows = A.plan_rows(P.draw_plan(7, 2, torch.arange(len(images)), faithful_cutout))
    for index, pixels in enumerate(images):
        weak, strong, _ = dataset[(2, index)]
        ref_weak, ref_strong = _reference_views(Image.fromarray(pixels), rows[index])
        assert torch.equal(weak, torch.from_numpy(np.asarray(ref_weak).copy()).permute(2, 0, 1)), index
        assert torch.equal(strong, torch.from_numpy(np.asarray(ref_strong).copy()).permute(2, 0, 1)), index
    ops_used = {A.RANDAUGMENT_OPS[i].name for row in rows for i in row.ops}
    assert ops_used == {op.name for op in A.RANDAUGMENT_OPS}, "every op must have been exercised"
