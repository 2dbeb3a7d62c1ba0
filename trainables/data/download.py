"""Fetch torchvision's CIFAR archives into a data root: once, checked, safely shared.

`download_cifar(dataset, root)` leaves root/cifar-10-batches-py (or cifar-100-python) as torchvision would, with
four guarantees torchvision's own `download=True` does not give together:
- a lock file in the data root (`filelock`), so concurrent sweeps, or cluster nodes sharing the root, fetch once;
- the archive's MD5 checked before anything is unpacked; a bad archive is removed and named in the error;
- an atomic unpack (a temporary folder renamed into place), so a killed download never leaves half a dataset that
  later looks complete;
- a mirror (`RECORDS_DATA_MIRROR` or `mirror=`: a base URL, or a folder holding the archives) for clusters
  without internet.

The archives' names, URLs and MD5s are read from torchvision's dataset classes, so they stay in one place.
The data is Krizhevsky's CIFAR-10/100 (Learning Multiple Layers of Features from Tiny Images, 2009), as published
on https://www.cs.toronto.edu/~kriz/cifar.html.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MIRROR_ENV = "RECORDS_DATA_MIRROR"
LOCK_NAME = ".records-download.lock"
_CHUNK = 1 << 20


class DownloadError(Exception):
    """A download could not be completed; the message names what was tried."""


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    md5: str
    folder: str  # what the archive unpacks to, directly under the data root
    files: tuple[str, ...]  # the files torchvision checks in that folder


def _archives() -> dict[str, Archive]:
    from torchvision.datasets import CIFAR10, CIFAR100

    return {name: Archive(url=cls.url, filename=cls.filename, md5=cls.tgz_md5, folder=cls.base_folder,
                          files=tuple(f for f, _ in cls.train_list + cls.test_list) + (cls.meta["filename"],))
            for name, cls in (("cifar10", CIFAR10), ("cifar100", CIFAR100))}


ARCHIVES: dict[str, Archive] = _archives()


def source_of(archive: Archive, mirror: str | None) -> str:
    """Where the archive is fetched from: the mirror's copy if a mirror is set, else the official URL."""
    if not mirror:
        return archive.url
    if urllib.parse.urlparse(mirror).scheme in ("http", "https", "ftp", "file"):
        return mirror.rstrip("/") + "/" + archive.filename
    return str(Path(mirror).expanduser() / archive.filename)


def is_present(dataset: str, root: str | os.PathLike) -> bool:
    folder = Path(root) / ARCHIVES[dataset].folder
    return all((folder / name).is_file() for name in ARCHIVES[dataset].files)


def download_cifar(dataset: str, root: str | os.PathLike, mirror: str | None = None, progress: bool | None = None,
                   timeout_s: float = 60.0) -> Path:
    """Make sure root holds `dataset` ('cifar10'|'cifar100') as torchvision's pickles; returns their folder.

    `mirror` defaults to $RECORDS_DATA_MIRROR. `progress`: a tqdm bar on stderr (None: only on a terminal).
    Raises DownloadError (nothing left behind but the lock file) when the archive cannot be fetched or is corrupt.
    """
    from filelock import FileLock

    if dataset not in ARCHIVES:
        raise ValueError(f"dataset must be one of {sorted(ARCHIVES)}, got {dataset!r}")
    archive = ARCHIVES[dataset]
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    target = root / archive.folder
    with FileLock(root / LOCK_NAME):
        if is_present(dataset, root):  # another process fetched it while we waited for the lock
            return target
        if target.exists():
            raise DownloadError(f"{target} exists but lacks some of {list(archive.files)}; remove it to download "
                                "again")
        source = source_of(archive, mirror)
        work = Path(tempfile.mkdtemp(prefix=f".{dataset}-download-", dir=root))
        try:
            tarball = work / archive.filename
            digest = _fetch(source, tarball, progress, timeout_s)
            if digest != archive.md5:
                tarball.unlink()
                raise DownloadError(f"{source}: MD5 {digest} does not match torchvision's {archive.md5} for "
                                    f"{archive.filename}; the corrupt file was removed")
            unpacked = work / "unpacked"
            with tarfile.open(tarball, "r:gz") as tar:
                # filter='data' refuses links and paths that leave the folder (tarfile's own safety check)
                tar.extractall(unpacked, filter="data")
            if not is_present(dataset, unpacked):
                raise DownloadError(f"{source}: the archive does not hold {archive.folder}/{list(archive.files)}")
            os.rename(unpacked / archive.folder, target)  # atomic on one filesystem: all or nothing appears
        except (OSError, tarfile.TarError) as exc:
            raise DownloadError(f"{source}: {type(exc).__name__}: {exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _fetch(source: str, dest: Path, progress: bool | None, timeout_s: float) -> str:
    """Copy source (URL or path) to dest with a progress bar; returns the MD5 of what was written."""
    from tqdm import tqdm

    md5 = hashlib.md5(usedforsecurity=False)
    if "://" in source:
        response = urllib.request.urlopen(source, timeout=timeout_s)  # noqa: S310 (http(s)/ftp/file by design)
        size = int(response.headers.get("Content-Length") or 0) or None
    else:
        response = open(source, "rb")  # noqa: SIM115 (closed below, like the URL response)
        size = os.fstat(response.fileno()).st_size
    bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
               disable=None if progress is None else not progress)
    try:
        with open(dest, "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                md5.update(chunk)
                bar.update(len(chunk))
    finally:
        response.close()
        bar.close()
    return md5.hexdigest()
