"""Torch helpers: a fixed thread count, hashing of weights for cache keys, reading one safetensors tensor."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def safetensors_index(path: str | Path) -> dict[str, dict]:
    """The tensors of a safetensors file: name -> {dtype, shape, offset, bytes} (offsets from the file start)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    index = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        index[name] = {"dtype": _SAFETENSORS_DTYPES[info["dtype"]], "shape": info["shape"], "offset": 8 + size + begin,
                       "bytes": end - begin}
    return index


def read_safetensor(path: str | Path, entry: dict):
    """One tensor of a safetensors file (an entry of `safetensors_index`), read into memory of its own."""
    dtype = getattr(torch, entry["dtype"])
    if entry["bytes"] == 0:
        return torch.empty(entry["shape"], dtype=dtype)
    raw = np.fromfile(path, dtype=np.uint8, count=entry["bytes"], offset=entry["offset"])
    return torch.from_numpy(raw).view(dtype).reshape(entry["shape"])
