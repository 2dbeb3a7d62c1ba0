"""Self-describing checkpoints: config, position, and every piece of state needed to continue bit for bit.

A checkpoint holds the model, the optimiser and schedule, the method's state (W, mu, ...), the metric history and the
config that produced them, so a run can be resumed or inspected without the code that wrote it. Randomness needs no
saved generator state: every draw is keyed on (seed, epoch, step or sample) (see data/loaders.py, methods/mixup.py),
so the position alone determines what comes next; the scheme is recorded in the file for readers.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

FORMAT = "records-sweep-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"
RNG_SCHEME = ("derived: batch order from (seed, epoch); augmentation from (seed, epoch, sample); mixup from "
              "(seed, epoch, step[, rank]); model init from seed")


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, *, config: dict, config_hash: str, stage: str, epoch: int, model: dict,
                    optimizer: dict, scheduler: dict, method: dict, history: list[dict], extra: dict | None = None,
                    package_version: str = "") -> None:
    """`epoch` is the number of epochs completed in `stage` (the next epoch to run)."""
    payload = {
        "format": FORMAT, "version": VERSION, "saved_at": time.time(), "package_version": package_version,
        "config": config, "config_hash": config_hash, "stage": stage, "epoch": epoch,
        "model": model, "optimizer": optimizer, "scheduler": scheduler, "method": method,
        "history": history, "rng": RNG_SCHEME, "extra": extra or {},
    }
    atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} is not the supported {VERSION}")
    return payload
