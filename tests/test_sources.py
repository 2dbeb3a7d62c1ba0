"""CIFAR sources: round trips through every on-disk format, the real Parquet copy, the synthetic set,
validation errors, caching and the root resolution order."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cifar_files import (
    encode_image,
    pickle_rows,
    write_cifar10_parquet,
    write_cifar10_pickles,
    write_cifar100_parquet,
    write_cifar100_pickles,
    write_parquet,
    write_pickle,
)
from PIL import Image

from trainables.data import sources
from trainables.data.sources import CIFAR100_COARSE_OF_FINE, DataError, ImageSet, load_split, synthetic_split

REAL_CIFAR10 = Path("/work/shared/data/cifar10")


def _assert_well_formed(image_set: ImageSet, n: int) -> None:
    assert image_set.images.shape == (n, 32, 32, 3) and image_set.images.dtype == np.uint8
    assert image_set.images.flags.c_contiguous
    assert image_set.labels.shape == (n,) and image_set.labels.dtype == np.int64


def _load_error(dataset: str, split: str, root: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load_split(dataset, split, root)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_pickles_round_trip_in_native_order(tmp_path, split):
    written = write_cifar10_pickles(tmp_path, per_class_train=3, per_class_test=2)[split]
    loaded = load_split("cifar10", split, tmp_path)
    _assert_well_formed(loaded, len(written.labels))
    # The writer interleaves classes, so equality also checks that rows keep file order (batches 1..5 in turn).
    assert not np.all(np.diff(written.labels) >= 0)
    np.testing.assert_array_equal(loaded.images, written.images)
    np.testing.assert_array_equal(loaded.labels, written.labels)
    assert loaded.coarse_labels is None
    assert "cifar-10-batches-py" in loaded.source and str(tmp_path) in loaded.source


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_pickles_round_trip_with_coarse_labels(tmp_path, split):
    written = write_cifar100_pickles(tmp_path)[split]
    loaded = load_split("cifar100", split, tmp_path)
    _assert_well_formed(loaded, len(written.labels))
    np.testing.assert_array_equal(loaded.images, written.images)
    np.testing.assert_array_equal(loaded.labels, written.labels)
    assert loaded.coarse_labels.dtype == np.int64
    np.testing.assert_array_equal(loaded.coarse_labels, written.coarse_labels)
    assert "cifar-100-python" in loaded.source


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_parquet_round_trip(tmp_path, split):
    written = write_cifar10_parquet(tmp_path)[split]
    loaded = load_split("cifar10", split, tmp_path)
    _assert_well_formed(loaded, len(written.labels))
    np.testing.assert_array_equal(loaded.images, written.images)  # PNG is lossless
    np.testing.assert_array_equal(loaded.labels, written.labels)
    assert loaded.coarse_labels is None
    assert str(tmp_path / "cifar10" / f"{split}.parquet") in loaded.source


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_parquet_round_trip_with_coarse_labels(tmp_path, split):
    written = write_cifar100_parquet(tmp_path)[split]
    loaded = load_split("cifar100", split, tmp_path)
    np.testing.assert_array_equal(loaded.images, written.images)
    np.testing.assert_array_equal(loaded.labels, written.labels)
    np.testing.assert_array_equal(loaded.coarse_labels, written.coarse_labels)


def test_parquet_keeps_row_order_even_when_not_class_sorted(tmp_path):
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat(np.arange(10), 2))
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    write_parquet(tmp_path / "cifar10" / "test.parquet", [encode_image(im) for im in images], {"label": labels})
    loaded = load_split("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(loaded.labels, labels)
    np.testing.assert_array_equal(loaded.images, images)


def test_parquet_accepts_image_column_alias_and_jpeg(tmp_path):
    written = write_cifar10_parquet(tmp_path, image_format="JPEG", image_column="image")["train"]
    loaded = load_split("cifar10", "train", tmp_path)
    np.testing.assert_array_equal(loaded.labels, written.labels)
    # JPEG is lossy, so compare with a direct Pillow decode of the stored bytes, row by row.
    table = pq.read_table(tmp_path / "cifar10" / "train.parquet")
    blobs = table.column("image").combine_chunks().field("bytes").to_pylist()
    expected = np.stack([np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")) for blob in blobs])
    np.testing.assert_array_equal(loaded.images, expected)
    assert np.abs(loaded.images.astype(np.int16) - written.images).mean() < 60


def test_parquet_decodes_grayscale_and_palette_png_to_rgb(tmp_path):
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (10, 32, 32), dtype=np.uint8)
    blobs = [encode_image(image) for image in gray]  # mode "L"
    write_parquet(tmp_path / "cifar10" / "test.parquet", blobs, {"label": np.arange(10)})
    loaded = load_split("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(loaded.images, np.repeat(gray[..., None], 3, axis=3))


# ------------------------------------------------------------------------------------------------ real Parquet


@pytest.mark.skipif(not REAL_CIFAR10.is_dir(), reason=f"{REAL_CIFAR10} not present")
def test_real_cifar10_parquet_copy():
    train = load_split("cifar10", "train", REAL_CIFAR10.parent)
    _assert_well_formed(train, 50_000)
    np.testing.assert_array_equal(np.bincount(train.labels), np.full(10, 5000))
    assert np.all(np.diff(train.labels) >= 0), "the shared copy is class-sorted"
    assert train.coarse_labels is None
    # Real photographs, not blank decodes: every image has some spread of pixel values.
    assert (train.images.max(axis=(1, 2, 3)) > train.images.min(axis=(1, 2, 3))).all()
    test = load_split("cifar10", "test", REAL_CIFAR10.parent)
    _assert_well_formed(test, 10_000)
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))
    assert load_split("cifar10", "train", REAL_CIFAR10.parent) is train, "a second load must come from the cache"


# ------------------------------------------------------------------------------------------------ synthetic


def test_coarse_table_is_the_official_20_by_5_grouping():
    assert len(CIFAR100_COARSE_OF_FINE) == 100
    np.testing.assert_array_equal(np.bincount(CIFAR100_COARSE_OF_FINE), np.full(20, 5))
    # Spot checks by name: apple -> fruit and vegetables, aquarium fish -> fish, whale -> aquatic mammals,
    # worm -> non-insect invertebrates.
    assert (CIFAR100_COARSE_OF_FINE[0], CIFAR100_COARSE_OF_FINE[1]) == (4, 1)
    assert (CIFAR100_COARSE_OF_FINE[95], CIFAR100_COARSE_OF_FINE[99]) == (0, 13)


@pytest.mark.parametrize(
    ("dataset", "split", "num_classes", "per_class"),
    [("cifar10", "train", 10, 5000), ("cifar10", "test", 10, 1000),
     ("cifar100", "train", 100, 500), ("cifar100", "test", 100, 100)],
)
def test_synthetic_has_the_real_shapes_and_class_sorted_rows(dataset, split, num_classes, per_class):
    image_set = load_split(dataset, split, "synthetic")
    assert image_set is synthetic_split(dataset, split)
    _assert_well_formed(image_set, num_classes * per_class)
    np.testing.assert_array_equal(image_set.labels, np.repeat(np.arange(num_classes), per_class))
    if dataset == "cifar100":
        np.testing.assert_array_equal(image_set.coarse_labels, np.asarray(CIFAR100_COARSE_OF_FINE)[image_set.labels])
    else:
        assert image_set.coarse_labels is None
    assert "synthetic" in image_set.source
    # Pixels use the whole range, and images within a class differ.
    assert image_set.images.min() < 20 and image_set.images.max() > 235
    assert not np.array_equal(image_set.images[0], image_set.images[1])


def test_synthetic_is_deterministic_and_splits_differ():
    first = synthetic_split("cifar100", "test").images.copy()
    train = synthetic_split("cifar100", "train")
    sources._synthetic_cached.cache_clear()
    again = synthetic_split("cifar100", "test")
    assert again.images is not first
    np.testing.assert_array_equal(again.images, first)
    assert not np.array_equal(train.images[:100], first[:100]), "train and test must come from different streams"


def test_synthetic_classes_differ_in_colour():
    # A coarse learnability check that costs no training: class-mean colours are well apart.
    image_set = synthetic_split("cifar10", "test")
    means = image_set.images.reshape(10, 1000, -1, 3).mean(axis=(1, 2))
    distances = np.linalg.norm(means[:, None] - means[None], axis=2)
    assert distances[~np.eye(10, dtype=bool)].min() > 10


# ------------------------------------------------------------------------------------------------ read-only + cache


def test_arrays_are_read_only_and_cached(tmp_path):
    write_cifar100_pickles(tmp_path)
    first = load_split("cifar100", "test", tmp_path)
    for arr in (first.images, first.labels, first.coarse_labels):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 0
    # The same root spelled differently still hits the cache.
    assert load_split("cifar100", "test", tmp_path / "." / "cifar-100-python" / "..") is first
    assert not load_split("cifar10", "test", "synthetic").images.flags.writeable


def test_cache_notices_a_rewritten_file(tmp_path):
    write_cifar10_parquet(tmp_path, seed=0)
    first = load_split("cifar10", "test", tmp_path)
    rewritten = write_cifar10_parquet(tmp_path, seed=1)["test"]
    path = tmp_path / "cifar10" / "test.parquet"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = load_split("cifar10", "test", tmp_path)
    assert second is not first
    np.testing.assert_array_equal(second.images, rewritten.images)


# ------------------------------------------------------------------------------------------------ resolution order


def test_pickles_take_precedence_over_parquet(tmp_path):
    from_pickles = write_cifar10_pickles(tmp_path, seed=1)["test"]
    write_cifar10_parquet(tmp_path, seed=2)
    loaded = load_split("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(loaded.images, from_pickles.images)
    # The other dataset's pickles do not count.
    write_cifar100_parquet(tmp_path)
    assert "Parquet" in load_split("cifar100", "test", tmp_path).source


def test_download_fetches_pickles_only_when_nothing_is_there(tmp_path, monkeypatch):
    calls = []

    def fake_download(dataset, root):
        calls.append((dataset, str(root)))
        write_cifar100_pickles(root, seed=5)

    import trainables.data.download

    monkeypatch.setattr(trainables.data.download, "download_cifar", fake_download)
    loaded = load_split("cifar100", "train", tmp_path / "fresh", download=True)
    assert calls == [("cifar100", str((tmp_path / "fresh").resolve()))]
    assert "cifar-100-python" in loaded.source
    load_split("cifar100", "test", tmp_path / "fresh", download=True)
    assert len(calls) == 1, "existing pickles must not be downloaded again"

    write_cifar100_parquet(tmp_path / "parquet_only")
    assert "Parquet" in load_split("cifar100", "test", tmp_path / "parquet_only", download=True).source
    assert len(calls) == 1, "a Parquet copy must not trigger a download"


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    import trainables.data.download as download

    def offline(dataset, root):
        raise download.DownloadError("network unreachable")

    monkeypatch.setattr(download, "download_cifar", offline)
    with pytest.raises(DataError, match="network unreachable") as info:
        load_split("cifar10", "train", tmp_path, download=True)
    assert str(tmp_path.resolve()) in str(info.value)


def test_missing_data_names_the_path_and_the_layouts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    message = _load_error("cifar100", "test", Path("empty"), str(tmp_path.resolve() / "empty"))
    for layout in ("'synthetic'", "cifar-100-python", str(Path("cifar100") / "test.parquet"), "download=True"):
        assert layout in message


def test_invalid_names_are_rejected():
    with pytest.raises(ValueError, match="dataset"):
        load_split("cifar11", "train", "synthetic")
    with pytest.raises(ValueError, match="split"):
        synthetic_split("cifar10", "val")


# ------------------------------------------------------------------------------------------------ malformed pickles


def test_missing_batch_file(tmp_path):
    write_cifar10_pickles(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    _load_error("cifar10", "train", tmp_path, str(tmp_path / "cifar-10-batches-py"), "data_batch_3")
    # The test split is still readable.
    load_split("cifar10", "test", tmp_path)


def test_pickle_missing_keys(tmp_path):
    write_cifar100_pickles(tmp_path)
    path = tmp_path / "cifar-100-python" / "test"
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    del entry["coarse_labels"]
    write_pickle(path, entry)
    _load_error("cifar100", "test", tmp_path, str(path), "missing key(s) ['coarse_labels']", "fine_labels")


def test_pickle_with_wrong_image_size(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_pickles(tmp_path)
    images = np.zeros((10, 30, 30, 3), dtype=np.uint8)
    write_pickle(folder / "test_batch", {"data": pickle_rows(images), "labels": list(range(10))})
    _load_error("cifar10", "test", tmp_path, str(folder / "test_batch"), "(N, 3072)", "(10, 2700)")


def test_pickle_with_label_count_mismatch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_pickles(tmp_path)
    images = np.zeros((10, 32, 32, 3), dtype=np.uint8)
    write_pickle(folder / "test_batch", {"data": pickle_rows(images), "labels": list(range(9))})
    _load_error("cifar10", "test", tmp_path, str(folder / "test_batch"), "9 entries", "10 images")


def test_corrupt_pickle(tmp_path):
    write_cifar10_pickles(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"not a pickle at all")
    _load_error("cifar10", "test", tmp_path, str(path), "not a readable CIFAR pickle")


def test_pickle_label_out_of_range(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_pickles(tmp_path)
    images = np.zeros((11, 32, 32, 3), dtype=np.uint8)
    write_pickle(folder / "test_batch", {"data": pickle_rows(images), "labels": [*range(10), 10]})
    _load_error("cifar10", "test", tmp_path, str(folder), "label 10 in row 10", "outside [0, 10)")


def test_coarse_labels_must_be_a_function_of_the_fine_label(tmp_path):
    write_cifar100_pickles(tmp_path)
    path = tmp_path / "cifar-100-python" / "train"
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    fine = np.asarray(entry["fine_labels"])
    coarse = np.asarray(entry["coarse_labels"])
    # A consistent grouping that differs from the official one is the source's business: it is used as is.
    shifted = (coarse + 1) % 20
    write_pickle(path, {**entry, "coarse_labels": shifted.tolist()})
    np.testing.assert_array_equal(load_split("cifar100", "train", tmp_path).coarse_labels, shifted)
    # One fine label with two coarse labels is not.
    rows = np.flatnonzero(fine == 7)
    coarse[rows[0]] = (coarse[rows[0]] + 1) % 20
    write_pickle(path, {**entry, "coarse_labels": coarse.tolist()})
    _load_error("cifar100", "train", tmp_path, str(path.parent), "fine label 7", "several coarse labels")


# ------------------------------------------------------------------------------------------------ malformed Parquet


def _parquet_with(tmp_path: Path, images: np.ndarray, labels: np.ndarray, **kwargs) -> Path:
    path = tmp_path / "cifar10" / "test.parquet"
    write_parquet(path, [encode_image(im) for im in images], {"label": labels}, **kwargs)
    return path


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(6).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_parquet_missing_columns(tmp_path):
    path = tmp_path / "cifar100" / "test.parquet"
    write_parquet(path, [encode_image(im) for im in _images(100)], {"label": np.arange(100)})
    _load_error("cifar100", "test", tmp_path, str(path), "missing column(s) ['fine_label', 'coarse_label']",
                "found ['img', 'label']")
    path = _parquet_with(tmp_path, _images(10), np.arange(10), image_column="picture")
    _load_error("cifar10", "test", tmp_path, str(path), "img (or image)", "found ['picture', 'label']")


def test_parquet_image_of_wrong_size(tmp_path):
    images = _images(10)
    blobs = [encode_image(im) for im in images]
    blobs[4] = encode_image(np.zeros((28, 32, 3), dtype=np.uint8))
    path = tmp_path / "cifar10" / "test.parquet"
    write_parquet(path, blobs, {"label": np.arange(10)}, image_paths=[f"x/{i}.png" for i in range(10)])
    _load_error("cifar10", "test", tmp_path, str(path), "row 4 ('x/4.png')", "32x28, expected 32x32")


def test_parquet_undecodable_image(tmp_path):
    blobs = [encode_image(im) for im in _images(10)]
    blobs[6] = blobs[6][:40]  # a truncated PNG
    blobs[8] = b"garbage"
    path = tmp_path / "cifar10" / "test.parquet"
    write_parquet(path, blobs, {"label": np.arange(10)})
    _load_error("cifar10", "test", tmp_path, str(path), "cannot decode", "row 6")
    blobs[6] = encode_image(_images(1)[0])
    write_parquet(path, blobs, {"label": np.arange(10)})
    _load_error("cifar10", "test", tmp_path, str(path), "cannot decode", "row 8")


def test_parquet_null_image(tmp_path):
    blobs = [encode_image(im) for im in _images(10)]
    blobs[2] = None
    path = tmp_path / "cifar10" / "test.parquet"
    write_parquet(path, blobs, {"label": np.arange(10)})
    _load_error("cifar10", "test", tmp_path, str(path), "row 2", "no image bytes")


def test_parquet_label_out_of_range_and_missing_class(tmp_path):
    path = _parquet_with(tmp_path, _images(10), np.array([*range(9), -1]))
    _load_error("cifar10", "test", tmp_path, str(path), "label -1 in row 9", "outside [0, 10)")
    path = _parquet_with(tmp_path, _images(10), np.array([*range(9), 8]))
    _load_error("cifar10", "test", tmp_path, str(path), "expected all 10 classes, found 9", "absent: [9]")


def test_parquet_null_or_non_integer_label(tmp_path):
    path = tmp_path / "cifar10" / "test.parquet"
    path.parent.mkdir()
    blobs = [encode_image(im) for im in _images(10)]
    img = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array([None] * 10, pa.string())],
                                     names=["bytes", "path"])
    pq.write_table(pa.table({"img": img, "label": pa.array([*range(9), None], pa.int64())}), path)
    _load_error("cifar10", "test", tmp_path, str(path), "column 'label' is null in row 9")
    pq.write_table(pa.table({"img": img, "label": pa.array([str(i) for i in range(10)])}), path)
    _load_error("cifar10", "test", tmp_path, str(path), "column 'label' must hold integers")


def test_parquet_null_struct_row_is_reported(tmp_path):
    path = tmp_path / "cifar10" / "test.parquet"
    path.parent.mkdir()
    blobs = [encode_image(im) for im in _images(10)]
    img = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array(["p"] * 10, pa.string())],
                                     names=["bytes", "path"], mask=pa.array([False] * 3 + [True] + [False] * 6))
    pq.write_table(pa.table({"img": img, "label": pa.array(range(10), pa.int64())}), path)
    _load_error("cifar10", "test", tmp_path, str(path), "row 3", "no image bytes")


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "cifar10" / "train.parquet"
    path.parent.mkdir()
    path.write_bytes(b"PAR1 but not really")
    _load_error("cifar10", "train", tmp_path, str(path), "not a readable Parquet file")
