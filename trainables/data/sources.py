"""Where CIFAR images come from: torchvision's pickles, a Hub-style Parquet export, or a synthetic stand-in.

`load_split(dataset, split, root)` returns one split as an `ImageSet` of plain arrays in the source's native
sample order. That order matters: the LT subset takes each class's indices in file order (METHOD.md §1.1), so
no source may reorder rows. Loaded splits are cached per process and returned read-only.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DATASETS, FULL_CLASS_SIZE, TEST_CLASS_SIZE

_SPLITS = ("train", "test")
_SIDE = 32
_PIXELS = _SIDE * _SIDE * 3
_NUM_COARSE = 20

_PICKLE_DIR = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_PICKLE_FILES = {
    ("cifar10", "train"): tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("cifar10", "test"): ("test_batch",),
    ("cifar100", "train"): ("train",),
    ("cifar100", "test"): ("test",),
}
_PICKLE_LABEL_KEYS = {"cifar10": ("labels",), "cifar100": ("fine_labels", "coarse_labels")}
_PARQUET_LABEL_COLUMNS = {"cifar10": ("label",), "cifar100": ("fine_label", "coarse_label")}
_PARQUET_IMAGE_COLUMNS = ("img", "image")

# The official CIFAR-100 superclass of each fine label (fine indices alphabetical, as in torchvision).
CIFAR100_COARSE_OF_FINE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip
assert len(CIFAR100_COARSE_OF_FINE) == 100
assert np.array_equal(np.bincount(CIFAR100_COARSE_OF_FINE, minlength=_NUM_COARSE), np.full(_NUM_COARSE, 5))

# Enough for both splits of both datasets; a CIFAR train split costs ~150 MB.
_CACHE_SIZE = 4


class DataError(Exception):
    """A data root is missing or malformed; the message names the path and what was expected."""


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on arrays has no single truth value
class ImageSet:
    """One split of a CIFAR dataset, in the source's native row order."""

    images: np.ndarray  # uint8 [N, 32, 32, 3] RGB (HWC), C-contiguous
    labels: np.ndarray  # int64 [N]: class index (CIFAR-100: the fine label)
    coarse_labels: np.ndarray | None  # int64 [N]: CIFAR-100 superclass (0..19); None for CIFAR-10
    source: str  # human-readable origin

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.dtype != np.uint8 or self.images.shape != (n, _SIDE, _SIDE, 3):
            raise ValueError(f"images must be uint8 [{n}, 32, 32, 3], got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise ValueError(f"labels must be int64 [N], got {self.labels.dtype} {self.labels.shape}")
        if self.coarse_labels is not None and (
            self.coarse_labels.dtype != np.int64 or self.coarse_labels.shape != self.labels.shape
        ):
            raise ValueError(f"coarse_labels must be int64 [{n}], got {self.coarse_labels.dtype} "
                             f"{self.coarse_labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)


def load_split(dataset: str, split: str, root: str | os.PathLike, download: bool = False) -> ImageSet:
    """Load `split` ('train'|'test') of `dataset` ('cifar10'|'cifar100') from `root`.

    Resolution order:
    1. root == 'synthetic' -> `synthetic_split(dataset, split)`;
    2. root/'cifar-10-batches-py' (CIFAR-10) or root/'cifar-100-python' (CIFAR-100) exists -> torchvision's
       pickles (the folder's existence commits to this layout: missing files in it are an error);
    3. root/'cifar10'/'<split>.parquet' or root/'cifar100'/'<split>.parquet' exists -> Parquet (Hub export);
    4. download=True -> `download.download_cifar` fetches torchvision's pickles into root, then 2.;
    5. otherwise DataError.

    The pickles are read with `pickle`, so only point this at files you trust (as with torchvision itself).
    The result is cached per process and its arrays are read-only: copy before modifying.
    """
    _check_names(dataset, split)
    if os.fspath(root) == "synthetic":
        return synthetic_split(dataset, split)
    root_path = Path(root).expanduser().resolve()
    layout = _find_layout(dataset, split, root_path)
    if layout is None and download:
        _download_pickles(dataset, split, root_path)
        layout = _find_layout(dataset, split, root_path)
    if layout is None:
        pretty = "CIFAR-10" if dataset == "cifar10" else "CIFAR-100"
        raise DataError(
            f"no {pretty} {split} data under {root_path}; accepted layouts: "
            f"(1) root='synthetic' for generated images, "
            f"(2) torchvision pickles in {root_path / _PICKLE_DIR[dataset]}, "
            f"(3) Parquet at {root_path / dataset / f'{split}.parquet'}; "
            f"or pass download=True to fetch (2)"
        )
    kind, files = layout
    return _load_files(dataset, split, kind, _file_stamps(files))


def synthetic_split(dataset: str, split: str) -> ImageSet:
    """A generated stand-in with the real split's shape: learnable classes, class-sorted rows, deterministic.

    CIFAR-10: 5000 train / 1000 test images per class; CIFAR-100: 500 / 100, with the official coarse labels.
    """
    _check_names(dataset, split)
    return _synthetic_cached(dataset, split)


# --- resolution ------------------------------------------------------------------------------------------------


def _check_names(dataset: str, split: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def _find_layout(dataset: str, split: str, root: Path) -> tuple[str, tuple[Path, ...]] | None:
    pickle_dir = root / _PICKLE_DIR[dataset]
    if pickle_dir.is_dir():
        files = tuple(pickle_dir / name for name in _PICKLE_FILES[dataset, split])
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{pickle_dir}: missing {split} file(s) {missing}; torchvision's layout has "
                            f"{list(_PICKLE_FILES[dataset, split])}")
        return "pickle", files
    parquet = root / dataset / f"{split}.parquet"
    if parquet.is_file():
        return "parquet", (parquet,)
    return None


def _download_pickles(dataset: str, split: str, root: Path) -> None:
    # The download module fetches torchvision's archive (locked, checked, unpacked atomically); reading stays ours.
    from .download import DownloadError, download_cifar

    try:
        download_cifar(dataset, root)
    except DownloadError as exc:
        raise DataError(f"{root}: downloading {dataset} failed: {exc}") from exc


def _file_stamps(files: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    # Part of the cache key, so a file rewritten in place is read again.
    stamps = []
    for f in files:
        st = f.stat()
        stamps.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(stamps)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_files(dataset: str, split: str, kind: str, stamps: tuple[tuple[str, int, int], ...]) -> ImageSet:
    files = [Path(path) for path, _, _ in stamps]
    if kind == "pickle":
        images, labels, coarse = _read_pickles(dataset, files)
        source = f"torchvision pickles in {files[0].parent}"
        where = files[0].parent
    else:
        images, labels, coarse = _read_parquet(dataset, files[0])
        source = f"Parquet file {files[0]}"
        where = files[0]
    _check_labels(labels, coarse, DATASETS[dataset], where)
    return _frozen(ImageSet(images=images, labels=labels, coarse_labels=coarse, source=source))


def _frozen(image_set: ImageSet) -> ImageSet:
    # The cache hands the same arrays to every caller, so none of them may write into them.
    for arr in (image_set.images, image_set.labels, image_set.coarse_labels):
        if arr is not None:
            arr.flags.writeable = False
    return image_set


# --- torchvision pickles ---------------------------------------------------------------------------------------


def _read_pickles(dataset: str, files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    # Read by hand rather than through torchvision.datasets.CIFAR10/100: those verify the md5 of every file
    # (small test files would fail) and drop CIFAR-100's coarse labels, which the NU setting needs.
    label_keys = _PICKLE_LABEL_KEYS[dataset]
    batches = []
    for path in files:
        entry = _unpickle(path)
        missing = [key for key in ("data", *label_keys) if key not in entry]
        if missing:
            raise DataError(f"{path}: missing key(s) {missing}; found {sorted(entry)}")
        data = entry["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {_PIXELS}) (32x32 RGB, CHW), "
                            f"got {got}")
        labels = [_int_labels(entry[key], len(data), path, repr(key)) for key in label_keys]
        batches.append((data, labels))

    total = sum(len(data) for data, _ in batches)
    images = np.empty((total, _SIDE, _SIDE, 3), dtype=np.uint8)
    start = 0
    for data, _ in batches:
        # Rows are CHW planes; transposing per batch avoids a second full-size temporary.
        images[start : start + len(data)] = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
        start += len(data)
    labels = np.concatenate([batch_labels[0] for _, batch_labels in batches])
    coarse = np.concatenate([batch_labels[1] for _, batch_labels in batches]) if dataset == "cifar100" else None
    return images, labels, coarse


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # latin1: the original files were pickled by Python 2 with byte strings and numpy arrays.
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:  # pickle raises many unrelated types on a corrupt file
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(entry, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _int_labels(values: object, n: int, path: Path, what: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.size == 0:  # np.asarray([]) is float64, yet an empty batch is no type error
        labels = labels.astype(np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: {what} must be a list of integers, got {labels.dtype} of shape {labels.shape}")
    if len(labels) != n:
        raise DataError(f"{path}: {what} has {len(labels)} entries but there are {n} images")
    return labels.astype(np.int64)


# --- Parquet ---------------------------------------------------------------------------------------------------


def _read_parquet(dataset: str, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(path)
        found = parquet_file.schema_arrow.names
    except Exception as exc:  # pyarrow's errors vary with how the file is broken
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    image_column = next((name for name in _PARQUET_IMAGE_COLUMNS if name in found), None)
    label_columns = _PARQUET_LABEL_COLUMNS[dataset]
    missing = [name for name in label_columns if name not in found]
    if image_column is None or missing:
        if image_column is None:
            missing.insert(0, "img (or image)")
        raise DataError(f"{path}: missing column(s) {missing}; expected 'img' (or 'image') and "
                        f"{list(label_columns)}; found {found}")
    try:
        table = parquet_file.read(columns=[image_column, *label_columns])
    except Exception as exc:
        raise DataError(f"{path}: reading columns failed ({type(exc).__name__}: {exc})") from exc

    column = table.column(image_column).combine_chunks()
    row_paths = None
    if pa.types.is_struct(column.type):
        field_names = [column.type.field(i).name for i in range(column.type.num_fields)]
        if "bytes" not in field_names:
            raise DataError(f"{path}: column {image_column!r} must be struct<bytes, path>, has fields {field_names}")
        # flatten(), unlike field(), folds a null struct and the parent's offset into the children.
        children = dict(zip(field_names, column.flatten()))
        blobs, row_paths = children["bytes"], children.get("path")
    elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        blobs = column
    else:
        raise DataError(f"{path}: column {image_column!r} must be struct<bytes, path> or binary, got {column.type}")
    null_rows = np.flatnonzero(blobs.is_null().to_numpy(zero_copy_only=False))
    if len(null_rows):
        raise DataError(f"{path}: row {null_rows[0]} of column {image_column!r} has no image bytes")

    images = _decode_images(blobs.to_pylist(), path, image_column, row_paths)
    labels = [_parquet_labels(table.column(name), name, path) for name in label_columns]
    return images, labels[0], (labels[1] if dataset == "cifar100" else None)


def _parquet_labels(column, name: str, path: Path) -> np.ndarray:
    import pyarrow as pa

    if not pa.types.is_integer(column.type):
        raise DataError(f"{path}: column {name!r} must hold integers, got {column.type}")
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: column {name!r} is null in row {row}")
    return column.to_numpy().astype(np.int64)


def _decode_images(blobs: list[bytes], path: Path, column: str, row_paths) -> np.ndarray:
    # Measured on 2 cores with 50k 32x32 JPEGs: Pillow spends most of each image in Python-level header parsing
    # that holds the GIL, so a thread pool was slower (5.3 s) than this plain loop (3.6 s).
    from PIL import Image, UnidentifiedImageError

    images = np.empty((len(blobs), _SIDE, _SIDE, 3), dtype=np.uint8)

    def where(row: int) -> str:
        name = row_paths[row].as_py() if row_paths is not None else None
        return f"row {row}" + (f" ({name!r})" if name else "")

    for row, blob in enumerate(blobs):
        try:
            try:
                # Naming the expected formats skips Pillow's probing of every other plugin.
                image = Image.open(io.BytesIO(blob), formats=("JPEG", "PNG"))
            except UnidentifiedImageError:
                image = Image.open(io.BytesIO(blob))
            with image:
                if image.size != (_SIDE, _SIDE):
                    raise DataError(f"{path}: image in {where(row)} of column {column!r} is "
                                    f"{image.size[0]}x{image.size[1]}, expected 32x32")
                images[row] = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except DataError:
            raise
        except Exception as exc:  # any decoder failure is a broken row
            raise DataError(f"{path}: cannot decode the image in {where(row)} of column {column!r} "
                            f"({type(exc).__name__}: {exc})") from exc
    return images


# --- checks shared by the file sources -------------------------------------------------------------------------


def _check_labels(labels: np.ndarray, coarse: np.ndarray | None, num_classes: int, where: Path) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(f"{where}: label {labels[bad[0]]} in row {bad[0]} is outside [0, {num_classes})")
    present = np.unique(labels)
    if len(present) != num_classes:
        absent = sorted(set(range(num_classes)) - set(present.tolist()))
        raise DataError(f"{where}: expected all {num_classes} classes, found {len(present)} "
                        f"(absent: {absent[:20]}{' ...' if len(absent) > 20 else ''})")
    if coarse is None:
        return
    bad = np.flatnonzero((coarse < 0) | (coarse >= _NUM_COARSE))
    if len(bad):
        raise DataError(f"{where}: coarse label {coarse[bad[0]]} in row {bad[0]} is outside [0, {_NUM_COARSE})")
    # A source may group classes differently from the official table (we then use its grouping), but the
    # grouping must be a function of the fine label.
    pairs = np.unique(np.stack([labels, coarse], axis=1), axis=0)
    fines, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        fine = fines[counts > 1][0]
        raise DataError(f"{where}: fine label {fine} appears with several coarse labels "
                        f"{pairs[pairs[:, 0] == fine, 1].tolist()}; each fine label needs exactly one")


# --- synthetic source ------------------------------------------------------------------------------------------

_SYNTHETIC_SEED = 0x43494641  # arbitrary, fixed: the synthetic data must be identical in every process
_SYNTHETIC_PER_CLASS = {
    **{(name, "train"): n for name, n in FULL_CLASS_SIZE.items()},
    **{(name, "test"): n for name, n in TEST_CLASS_SIZE.items()},
}  # the real splits' class sizes
# Pixel centres on a unit-width image: frequencies below are in cycles per image width.
_COORD = ((np.arange(_SIDE, dtype=np.float32) - (_SIDE - 1) / 2) / _SIDE).astype(np.float32)
# Textures survive the weak augmentation: all are mapped to themselves by a horizontal flip (stripes at angle
# a become 180-a, so only axis-aligned stripes or symmetric pairs qualify) and by crops (they fill the image).
_TEXTURES = ("horizontal stripes", "vertical stripes", "plaid", "diagonal lattice", "rings")


def _class_recipes(dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texture index, hue (turns) and stripe frequency of each class."""
    if dataset == "cifar10":
        classes = np.arange(10)
        # Classes sharing a texture get opposite hues, and adjacent hues (36 deg apart, within ColorJitter's
        # +-36 deg) belong to different textures, so each cue alone is ambiguous for some pairs.
        return classes % 5, classes / 10, np.full(10, 4.0)
    coarse = np.asarray(CIFAR100_COARSE_OF_FINE)
    rank = np.array([np.count_nonzero(coarse[:fine] == coarse[fine]) for fine in range(100)])
    # Like real CIFAR-100, a superclass's members look alike: they share texture and hue band and differ only in
    # a small hue offset and stripe frequency, which augmentation partly masks.
    hue = (coarse // 5) / 4 + (rank - 2) * 0.04
    freq = np.array([2.5, 3.2, 4.0, 5.0, 6.4])[rank]
    return coarse % 5, hue, freq


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = (np.asarray([5.0, 3.0, 1.0]) + (h[:, None] % 1.0) * 6) % 6
    return v[:, None] * (1 - s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))


def _plane_wave(kx: np.ndarray, ky: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """cos(kx*x + ky*y + phase) on the pixel grid, float32 [n, 32, 32], from per-image wave vectors [n]."""
    # The angle-addition identity needs cosines of [n, 32] rows and columns only, not of every pixel.
    ax = kx[:, None] * _COORD + phase[:, None]
    ay = ky[:, None] * _COORD
    cos_x, sin_x = np.cos(ax).astype(np.float32)[:, None, :], np.sin(ax).astype(np.float32)[:, None, :]
    cos_y, sin_y = np.cos(ay).astype(np.float32)[:, :, None], np.sin(ay).astype(np.float32)[:, :, None]
    return cos_x * cos_y - sin_x * sin_y


def _render(rng: np.random.Generator, n: int, texture: int, hue: float, freq: float) -> np.ndarray:
    """n images of one class as float32 [n, 32, 32, 3], pixel value + 0.5 (about [0.5, 255.5])."""
    # Per-image jitter of orientation, scale and phase keeps the task from being a template match.
    angle = rng.uniform(-0.2, 0.2, n)
    omega = 2 * np.pi * freq * np.exp(rng.uniform(-0.25, 0.25, n))
    phase = rng.uniform(0, 2 * np.pi, (2, n))
    along_x, along_y = omega * np.cos(angle), omega * np.sin(angle)  # wave vector of the "vertical" stripes
    if texture == 0:
        wave = _plane_wave(-along_y, along_x, phase[0])
    elif texture == 1:
        wave = _plane_wave(along_x, along_y, phase[0])
    elif texture == 2:
        wave = 0.5 * (_plane_wave(along_x, along_y, phase[0]) + _plane_wave(-along_y, along_x, phase[1]))
    elif texture == 3:
        diag_x, diag_y = (along_x - along_y) / np.sqrt(2), (along_x + along_y) / np.sqrt(2)
        wave = 0.5 * (_plane_wave(diag_x, diag_y, phase[0]) + _plane_wave(-diag_y, diag_x, phase[1]))
    else:
        centre = rng.uniform(-0.5, 0.5, (2, n)).astype(np.float32)[:, :, None, None]
        radius = np.sqrt((_COORD[None, None, :] - centre[0]) ** 2 + (_COORD[None, :, None] - centre[1]) ** 2)
        wave = np.cos(omega.astype(np.float32)[:, None, None] * radius + phase[0].astype(np.float32)[:, None, None])

    # Foreground in the class hue over a dull background of random hue; contrast and noise vary per image so
    # some images carry only a faint texture.
    foreground = _hsv_to_rgb(hue + rng.normal(0, 0.03, n), rng.uniform(0.45, 0.9, n), rng.uniform(0.55, 0.95, n))
    background = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0, 0.3, n), rng.uniform(0.1, 0.55, n))
    contrast = rng.uniform(0.3, 1.0, n).astype(np.float32)[:, None, None]
    noise_scale = rng.uniform(0.02, 0.1, n).astype(np.float32)[:, None, None, None]
    mix = (0.5 + 0.5 * contrast * wave)[:, None]
    noise = rng.standard_normal((n, 1, _SIDE, _SIDE), dtype=np.float32) * (255 * noise_scale)
    # Scaled to [0, 255] with +0.5 so that truncating to uint8 rounds. Channels-first here, because numpy
    # broadcasts far faster over a 32x32 inner loop than over an inner axis of 3 (~5x for this function).
    low = (background * 255 + 0.5).astype(np.float32)[:, :, None, None]
    span = ((foreground - background) * 255).astype(np.float32)[:, :, None, None]
    pixels = span * mix
    pixels += low
    pixels += noise
    return pixels.transpose(0, 2, 3, 1)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _synthetic_cached(dataset: str, split: str) -> ImageSet:
    num_classes = DATASETS[dataset]
    per_class = _SYNTHETIC_PER_CLASS[dataset, split]
    # One stream per (dataset, split): train and test never share draws, and neither depends on the other.
    stream = (list(DATASETS).index(dataset), _SPLITS.index(split))
    rng = np.random.default_rng(np.random.SeedSequence(_SYNTHETIC_SEED, spawn_key=stream))
    textures, hues, freqs = _class_recipes(dataset)
    images = np.empty((num_classes * per_class, _SIDE, _SIDE, 3), dtype=np.uint8)
    # Blocks of a few hundred images keep the float temporaries cache-sized (measured ~1.6x faster than whole
    # 5000-image classes).
    block = 500
    for c in range(num_classes):
        for start in range(c * per_class, (c + 1) * per_class, block):
            stop = min(start + block, (c + 1) * per_class)
            pixels = _render(rng, stop - start, int(textures[c]), float(hues[c]), float(freqs[c]))
            images[start:stop] = np.clip(pixels, 0, 255, out=pixels)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    coarse = np.asarray(CIFAR100_COARSE_OF_FINE, dtype=np.int64)[labels] if dataset == "cifar100" else None
    source = f"synthetic {dataset} {split} (textures {', '.join(_TEXTURES)}; seed {_SYNTHETIC_SEED:#x})"
    return _frozen(ImageSet(images=images, labels=labels, coarse_labels=coarse, source=source))
