"""Wall time and peak memory of each stage of a run (build, reference, table, search, export).

The peak is the process's resident memory high-water mark over the stage: on Linux the kernel's
VmHWM, reset at the start of each stage through /proc/self/clear_refs; elsewhere the peak since the
process started (which can only grow). On a GPU, the peak of memory allocated by torch is added.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The resident-memory high-water mark (since the last reset where resets work), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 1024)


def rss_mb() -> float:
    """Resident memory now, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


@contextlib.contextmanager
def stage(record: dict, name: str, device: torch.device | None = None) -> Iterator[None]:
    """Time a stage and record `{seconds, peak_mb}` (and `gpu_peak_mb` on CUDA) under `record[name]`;
    a stage run twice adds its seconds and keeps the higher peak."""
    _reset_peak()
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        entry = record.setdefault(name, {"seconds": 0.0, "peak_mb": 0.0})
        entry["seconds"] = round(entry["seconds"] + time.perf_counter() - start, 2)
        entry["peak_mb"] = round(max(entry["peak_mb"], peak_rss_mb()), 1)
        if cuda:
            gpu = torch.cuda.max_memory_allocated(device) / 2**20
            entry["gpu_peak_mb"] = round(max(entry.get("gpu_peak_mb", 0.0), gpu), 1)
