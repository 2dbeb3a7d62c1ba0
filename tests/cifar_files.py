"""Tiny CIFAR files in the real on-disk formats, for tests that need a data root without the real data.

Pickles follow torchvision's extracted archives (`cifar-10-batches-py/data_batch_1..5`, `test_batch`,
`batches.meta`; `cifar-100-python/train`, `test`, `meta`) with rows in a random class order, as in the real
files. Parquet follows the Hub export (`<dataset>/<split>.parquet` with an `img` struct<bytes, path> column and
integer label columns), class-sorted like the project's shared copy. Every writer returns what it wrote, per
split, so a test can compare a loader's output with it.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from trainables.data.sources import CIFAR100_COARSE_OF_FINE

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_FINE_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
    "tank", "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees", "vehicles_1",
    "vehicles_2",
)  # fmt: skip
# torchvision's fine indices are alphabetical; a typo in the table above would break that.
assert len(CIFAR100_FINE_CLASSES) == 100 and list(CIFAR100_FINE_CLASSES) == sorted(CIFAR100_FINE_CLASSES)
assert len(CIFAR100_COARSE_CLASSES) == 20

# The real files are Python 2 pickles; protocol 2 is the newest that Python 2 could have written.
_PICKLE_PROTOCOL = 2


class Written(NamedTuple):
    """One split as a writer put it on disk, in file row order."""

    images: np.ndarray  # uint8 [N, 32, 32, 3] RGB HWC; for JPEG Parquet, the pixels before compression
    labels: np.ndarray  # int64 [N]
    coarse_labels: np.ndarray | None  # int64 [N] for CIFAR-100, else None


def random_split(num_classes: int, per_class: int, rng: np.random.Generator, interleave: bool) -> Written:
    """Random images, `per_class` of each class: class-sorted, or in a random class order if `interleave`."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    if interleave:
        labels = labels[rng.permutation(len(labels))]
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    coarse = np.asarray(CIFAR100_COARSE_OF_FINE, dtype=np.int64)[labels] if num_classes == 100 else None
    return Written(images, labels, coarse)


def pickle_rows(images: np.ndarray) -> np.ndarray:
    """HWC images as the pickles store them: uint8 [N, 3072], each row the R, G then B planes."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_pickle(path: str | os.PathLike, entry: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=_PICKLE_PROTOCOL)


def write_cifar10_pickles(
    root: str | os.PathLike, per_class_train: int = 3, per_class_test: int = 2, seed: int = 0
) -> dict[str, Written]:
    """Write root/cifar-10-batches-py like torchvision's extracted archive; the train split spans 5 batches."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {"train": random_split(10, per_class_train, rng, interleave=True),
               "test": random_split(10, per_class_test, rng, interleave=True)}
    train = written["train"]
    for number, rows in enumerate(np.array_split(np.arange(len(train.labels)), 5), start=1):
        write_pickle(folder / f"data_batch_{number}", _cifar10_batch(train, rows, f"training batch {number} of 5"))
    test = written["test"]
    write_pickle(folder / "test_batch", _cifar10_batch(test, np.arange(len(test.labels)), "testing batch 1 of 1"))
    write_pickle(folder / "batches.meta", {"num_cases_per_batch": len(train.labels) // 5,
                                           "label_names": list(CIFAR10_CLASSES), "num_vis": 3072})
    return written


def _cifar10_batch(split: Written, rows: np.ndarray, batch_label: str) -> dict:
    return {
        "batch_label": batch_label,
        "labels": split.labels[rows].tolist(),
        "data": pickle_rows(split.images[rows]),
        "filenames": [f"{CIFAR10_CLASSES[label]}_s_{row:06d}.png" for row, label in zip(rows, split.labels[rows])],
    }


def write_cifar100_pickles(
    root: str | os.PathLike, per_class_train: int = 2, per_class_test: int = 1, seed: int = 0
) -> dict[str, Written]:
    """Write root/cifar-100-python (train, test, meta) like torchvision's extracted archive."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {"train": random_split(100, per_class_train, rng, interleave=True),
               "test": random_split(100, per_class_test, rng, interleave=True)}
    for split, part in written.items():
        write_pickle(folder / split, {
            "filenames": [f"{CIFAR100_FINE_CLASSES[label]}_s_{row:06d}.png" for row, label in enumerate(part.labels)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": part.labels.tolist(),
            "coarse_labels": part.coarse_labels.tolist(),
            "data": pickle_rows(part.images),
        })
    write_pickle(folder / "meta", {"fine_label_names": list(CIFAR100_FINE_CLASSES),
                                   "coarse_label_names": list(CIFAR100_COARSE_CLASSES)})
    return written


def encode_image(image: np.ndarray, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


def write_parquet(
    path: str | os.PathLike,
    blobs: list[bytes | None],
    labels: dict[str, np.ndarray],
    image_paths: list[str] | None = None,
    image_column: str = "img",
) -> None:
    """Write one Hub-style Parquet file from encoded images and label columns (also for malformed variants)."""
    image_paths = image_paths if image_paths is not None else [f"{row:04d}.png" for row in range(len(blobs))]
    img = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array(image_paths, pa.string())],
                                     names=["bytes", "path"])
    columns = {image_column: img, **{name: pa.array(values, pa.int64()) for name, values in labels.items()}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _write_parquet_dataset(
    root: str | os.PathLike, dataset: str, per_class: dict[str, int], seed: int, image_format: str,
    image_column: str,
) -> dict[str, Written]:
    rng = np.random.default_rng(seed)
    num_classes = 10 if dataset == "cifar10" else 100
    names = CIFAR10_CLASSES if dataset == "cifar10" else CIFAR100_FINE_CLASSES
    suffix = "jpg" if image_format.upper() in ("JPEG", "JPG") else image_format.lower()
    written = {}
    for split, count in per_class.items():
        part = random_split(num_classes, count, rng, interleave=False)
        # File numbers restart per class, like "airplane/0000.jpg" in the shared copy.
        numbers = np.arange(len(part.labels)) - np.searchsorted(part.labels, part.labels)
        image_paths = [f"{names[label]}/{number:04d}.{suffix}" for label, number in zip(part.labels, numbers)]
        if dataset == "cifar10":
            labels = {"label": part.labels}
        else:
            labels = {"fine_label": part.labels, "coarse_label": part.coarse_labels}
        blobs = [encode_image(image, image_format) for image in part.images]
        write_parquet(Path(root) / dataset / f"{split}.parquet", blobs, labels, image_paths, image_column)
        written[split] = part
    return written


def write_cifar10_parquet(
    root: str | os.PathLike, per_class_train: int = 3, per_class_test: int = 2, seed: int = 0,
    image_format: str = "PNG", image_column: str = "img",
) -> dict[str, Written]:
    """Write root/cifar10/{train,test}.parquet (columns img, label), class-sorted."""
    return _write_parquet_dataset(root, "cifar10", {"train": per_class_train, "test": per_class_test}, seed,
                                  image_format, image_column)


def write_cifar100_parquet(
    root: str | os.PathLike, per_class_train: int = 2, per_class_test: int = 1, seed: int = 0,
    image_format: str = "PNG", image_column: str = "img",
) -> dict[str, Written]:
    """Write root/cifar100/{train,test}.parquet (columns img, fine_label, coarse_label), class-sorted."""
    return _write_parquet_dataset(root, "cifar100", {"train": per_class_train, "test": per_class_test}, seed,
                                  image_format, image_column)
