"""A sweep's progress in one line: cells finished, running, failed and pending, and an ETA from measured epochs.

Pure functions of what the driver has seen; `SweepRecorder` (sweep/tune.py) feeds them and prints the line.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

STATES = ("finished", "running", "failed", "pending")


@dataclass(frozen=True)
class Progress:
    finished: int
    running: int
    failed: int
    pending: int
    epochs_left: int
    eta_s: float | None  # None until an epoch has been measured
    measured: int  # epochs the ETA is based on

    def line(self) -> str:
        cells = ", ".join(f"{getattr(self, s)} {s}" for s in STATES)
        if self.eta_s is None:
            eta = "ETA after the first epoch" if self.epochs_left else "done"
        else:
            eta = f"{self.epochs_left} epochs left, ETA {format_duration(self.eta_s)} (from {self.measured} epochs)"
        return f"progress: {cells}; {eta}"


def summarize(total_epochs: Mapping[str, int], done_epochs: Mapping[str, int], states: Mapping[str, str],
              epoch_seconds: Sequence[float], slots: int) -> Progress:
    """Counts per state and an ETA for the cells `total_epochs` names (cell -> its epochs in all).

    `states`: cell -> one of STATES (a cell not named is pending); `done_epochs`: cell -> epochs done; each
    measured epoch's wall seconds in `epoch_seconds`; `slots`: cells that run at once. The ETA assumes the epochs
    left take the mean measured time and fill the slots evenly (never more slots than cells left): a rough figure,
    as SoLar's and the CORR family's epochs differ in cost.
    """
    if slots < 1:
        raise ValueError(f"slots={slots}: must be >= 1")
    unknown = {s for s in states.values() if s not in STATES}
    if unknown:
        raise ValueError(f"unknown cell state(s) {sorted(unknown)}; expected {STATES}")
    count = Counter(states.get(cell, "pending") for cell in total_epochs)
    open_cells = [c for c in total_epochs if states.get(c, "pending") in ("running", "pending")]
    left = sum(max(0, total_epochs[c] - done_epochs.get(c, 0)) for c in open_cells)
    eta = None
    if epoch_seconds and left:
        eta = left * statistics.fmean(epoch_seconds) / min(slots, len(open_cells))
    elif not left:
        eta = 0.0 if epoch_seconds else None
    return Progress(finished=count["finished"], running=count["running"], failed=count["failed"],
                    pending=count["pending"], epochs_left=left, eta_s=eta, measured=len(epoch_seconds))


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
