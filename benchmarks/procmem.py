"""Memory and wall time of a command's whole process tree (shared by the benchmarks)."""

from __future__ import annotations

import subprocess
import time

import psutil


def run_monitored(cmd: list[str], interval: float = 0.5, **popen) -> tuple[float, float, float, int]:
    """Run `cmd` and sample its process tree every `interval` seconds.

    Returns (wall seconds, peak sum of RSS in GiB, peak sum of PSS in GiB, exit code). PSS counts each shared page
    once (split between the processes that map it); a plain RSS sum counts torch's libraries once per process.
    Reading PSS walks every process's smaps, so sampling itself costs some CPU: keep the interval coarse.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss = pss = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                info = p.memory_full_info()
            except psutil.Error:
                continue  # the process ended between listing and reading
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(interval)
    return time.perf_counter() - t0, peak_rss / 2**30, peak_pss / 2**30, proc.returncode
