"""Torch helpers: a fixed thread count, and hashing of weights for cache keys."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

import torch
from torch import nn


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with exactly `n` intra-op threads: CPU results depend on the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def weights_hash(model: nn.Module) -> str:
    """A short hash of every parameter and buffer (name, dtype, shape and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
