"""Wall time and peak memory of each stage of a run (build, reference, table, search, heldout, export).

The peak is the highest resident memory of the process seen during the stage: a thread reads it every
20 ms (Linux's /proc/self/statm; elsewhere the process's peak so far, which can only grow). The
process's own high-water mark is left alone. On a GPU, the peak of memory torch allocated is added.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def rss_mb() -> float:
    """Resident memory now, in MB (the peak so far where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE_MB
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 1024)


class _PeakWatcher(threading.Thread):
    """Samples resident memory until stopped; `peak` is the highest seen."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True, name="allocsearch-memory")
        self.interval, self.peak, self._finished = interval, rss_mb(), threading.Event()

    def run(self) -> None:
        while not self._finished.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def stop(self) -> float:
        self._finished.set()
        self.join()
        return max(self.peak, rss_mb())


@contextlib.contextmanager
def stage(record: dict, name: str, device: torch.device | None = None) -> Iterator[None]:
    """Time a stage and record `{seconds, peak_mb}` (and `gpu_peak_mb` on CUDA) under `record[name]`;
    a stage run twice adds its seconds and keeps the higher peak."""
    watcher = _PeakWatcher()
    watcher.start()
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        peak = watcher.stop()
        entry = record.setdefault(name, {"seconds": 0.0, "peak_mb": 0.0})
        entry["seconds"] = round(entry["seconds"] + time.perf_counter() - start, 2)
        entry["peak_mb"] = round(max(entry["peak_mb"], peak), 1)
        if cuda:
            gpu = torch.cuda.max_memory_allocated(device) / 2**20
            entry["gpu_peak_mb"] = round(max(entry.get("gpu_peak_mb", 0.0), gpu), 1)
