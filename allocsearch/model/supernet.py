"""The supernet cache: every unit of a search space pruned at every level, built once, on disk.

Build: the build's calibration windows (many more tokens than a refit has inputs) run through the
model block by block, each block once. For each block, hooks gather the input statistics of its
linear layers (Gram matrices where a refit or a local error needs them); the criterion turns them
into removal levels (one small integer per group or weight, masks nested across levels) and, for
reconstructing criteria, into per-level output-projection weights (kept slices only). For every unit
and level the build also records the local output error ||W x - W' x'||^2 relative to ||W x||^2, in
closed form from the Gram matrix: the input of the proxy error table. The next block's inputs come
from the dense block (default) or from the block pruned at a reference level (`calib_from`, Tyr's
error accumulation).

On disk, a directory per cache key (model weights, space, criterion, grid, calibration data and
options): one safetensors file per block and a `manifest.json` with SHA-256 checksums, written to a
temporary directory and renamed into place, under a file lock (a second process starting the same
build waits and reads the first one's). A cache whose manifest or checksums do not match is
rebuilt, never used. Per-level weights are read when a candidate needs them, into memory of their
own (only the variants in use take memory), and never written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from .. import _io
from .._progress import progress_bar
from ..core.space import SearchSpace
from ..errors import ConfigError
from ._modules import get_module, linear_weight, native_layout
from ._torch import read_safetensor, safetensors_index, torch_threads, weights_hash
from .blockwise import Blockwise
from .compose import Composer
from .data import tokens_hash
from .pruners import (
    LayerStats,
    LsqRefit,
    get_criterion,
    masked_errors,
    output_energy,
    removal_levels,
    sliced_error,
)

FORMAT = 3
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupernetConfig:
    """How the cache is built.

    Args:
        criterion: `magnitude`, `wanda` or `lsq`; None takes `lsq` (structured) / `wanda` (unstructured).
        damp: relative damping of the least-squares refit.
        calib_from: `None` feeds each block the dense model's activations; a fraction (e.g. 0.5)
            feeds it the activations of the earlier blocks pruned uniformly at that level.
        batch_size: calibration sequences per forward.
        threads: torch threads while building (results depend on it).
    """

    criterion: str | None = None
    damp: float = 0.01
    calib_from: float | None = None
    batch_size: int = 16
    threads: int = 1

    def __post_init__(self) -> None:
        if self.calib_from is not None and not 0 <= self.calib_from <= 1:
            raise ConfigError(f"calib_from={self.calib_from!r} must be a removed fraction in [0, 1], or None for dense")
        if self.damp < 0:
            raise ConfigError(f"damp={self.damp!r} must be >= 0")


class Supernet:
    """Read access to a built cache: removal levels, per-level output-projection weights, and the
    local output errors the build measured at every level (the proxy error table's input).

    For example::

        supernet = Supernet.build_or_load(model, space, calib_tokens, cache_dir="~/.cache/allocsearch")
        supernet.removal(0)          # first level at which each head group goes
        # tensor([3, 1, 8, ...], dtype=torch.uint8)
    """

    def __init__(self, path: Path, space: SearchSpace, manifest: dict) -> None:
        self.path, self.space, self.manifest = path, space, manifest
        self.criterion = manifest["criterion"]
        self._where = {key: (name, entry) for name in manifest["files"]
                       for key, entry in safetensors_index(path / name).items()}
        self._removal = [self._tensor(f"{u}.removal") for u in range(space.n_units)]

    def _tensor(self, key: str) -> torch.Tensor:
        name, entry = self._where[key]
        return read_safetensor(self.path / name, entry)

    def removal(self, unit: int) -> torch.Tensor:
        """First level at which each group (or weight, as (out, in)) of the unit is removed."""
        return self._removal[unit]

    def variant(self, unit: int, level: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Per-level output-projection weight (native layout) and bias, or None when not stored.

        Read from disk on each call into memory of its own: only the variants in use take memory.
        """
        key = f"{unit}.{level}.weight"
        if key not in self._where:
            return None
        bias = f"{unit}.{level}.bias"
        return self._tensor(key), (self._tensor(bias) if bias in self._where else None)

    def local_errors(self) -> np.ndarray:
        """Per token, the output error of each unit's output projection (structured) or layer
        (unstructured) at each level, relative to its dense output energy; inf past a unit's levels.
        # (units, max_levels)"""
        table = np.full((self.space.n_units, int(self.space.n_levels.max())), np.inf)
        for u, entry in enumerate(self.manifest["proxy"]):
            table[u, : len(entry["local"])] = np.asarray(entry["local"]) / max(entry["output"], 1e-30)
        return table

    @property
    def key(self) -> str:
        return self.manifest["key"]

    def disk_bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())

    @classmethod
    def build_or_load(cls, model: nn.Module, space: SearchSpace, calib: torch.Tensor, *,
                      cache_dir: str | Path, config: SupernetConfig = SupernetConfig(),
                      progress: bool = True, weights: str | None = None) -> Supernet:
        """Open the cache for these inputs, building it first if it is missing, partial or corrupt.

        `calib` are the build's token windows; `weights` the model's weights hash when known.
        """
        criterion = get_criterion(config.criterion, space.granularity)
        key_parts = {
            "format": FORMAT, "weights": weights or weights_hash(model), "space": space.id,
            "criterion": criterion.name, "damp": config.damp if criterion.reconstructs else None,
            "calib_from": config.calib_from, "calib": tokens_hash(calib), "batch_size": config.batch_size,
            "threads": config.threads, "device": next(model.parameters()).device.type,
        }
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir).expanduser() / "supernet" / key
        manifest = verify(path)
        if manifest is None:
            with _io.locked(path):  # a second process building the same key waits, then reads it
                manifest = verify(path)
                if manifest is None:
                    if path.exists():
                        log.warning("supernet cache %s is incomplete or corrupt; rebuilding it", path)
                    log.info("building the supernet cache (%s, %d units, %s) in %s", criterion.name, space.n_units,
                             space.granularity, path)
                    with _io.atomic_directory(path) as tmp:
                        _build(tmp, model, space, calib, config, criterion, key, key_parts, progress)
                    manifest = verify(path)
                    if manifest is None:
                        raise RuntimeError(f"the supernet cache just written to {path} does not verify")
        else:
            log.info("supernet cache %s verified", path)
        return cls(path, space, manifest)


def verify(path: Path) -> dict | None:
    """The manifest of a complete, intact cache directory, else None."""
    return _io.verify_manifest(path, FORMAT)


class _Building:
    """What `Composer` needs from a cache, served from memory while the cache is being built."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def removal(self, unit: int) -> torch.Tensor:
        return self.tensors[f"{unit}.removal"]

    def variant(self, unit: int, level: int):
        weight = self.tensors.get(f"{unit}.{level}.weight")
        return None if weight is None else (weight, self.tensors.get(f"{unit}.{level}.bias"))


def _build(tmp: Path, model, space, tokens, config, criterion, key, key_parts, progress) -> None:
    start = time.perf_counter()
    blockwise = Blockwise(model, space)
    by_block: dict[int, list[int]] = {}
    for u, unit in enumerate(space.units):
        by_block.setdefault(unit.block, []).append(u)
    source = _Building()
    composer = Composer(model, space, source)
    files, proxy = {}, [None] * space.n_units
    reference = space.nearest_levels(config.calib_from) if config.calib_from is not None else None
    with torch.no_grad(), torch_threads(config.threads):
        inputs = [blockwise.embed(batch) for batch in tokens.split(config.batch_size)]
        hidden = [x.hidden for x in inputs]  # the current block's input, per batch
        n_tokens = sum(h.shape[0] * h.shape[1] for h in hidden)
        for b in progress_bar(range(blockwise.n_blocks), desc=f"building the supernet ({criterion.name})",
                              enabled=progress):
            units = by_block.get(b, [])
            stats, outputs = _collect(model, space, units, blockwise, b, inputs, hidden)
            residual = sum(float((h.double() ** 2).sum()) for h in hidden) / n_tokens
            block_tensors = {}
            for u in units:
                tensors, local, energy = _unit_tensors(model, space, u, criterion, stats, config.damp)
                block_tensors.update(tensors)
                proxy[u] = {"local": [e / n_tokens for e in local], "output": energy / n_tokens, "residual": residual}
            source.tensors = block_tensors  # what composing this block needs; earlier blocks are on disk
            if b + 1 < blockwise.n_blocks:
                if reference is not None:  # the next block sees this one pruned at the reference level
                    levels = np.zeros(space.n_units, dtype=int)
                    levels[units] = reference[units]
                    composer.apply(levels)
                    outputs = [blockwise.run(h, x, b, b + 1) for h, x in zip(hidden, inputs)]
                    composer.apply(np.zeros(space.n_units, dtype=int))
                hidden = outputs
            name = f"block-{b:04d}.safetensors"
            save_file({k: v.contiguous() for k, v in block_tensors.items()}, str(tmp / name))
            files[name] = _io.file_entry(tmp / name)
    manifest = {
        "format": FORMAT, "key": key, "key_parts": key_parts, "criterion": criterion.name,
        "space": space.to_dict(), "units": [u.name for u in space.units], "tokens": n_tokens,
        "build_seconds": round(time.perf_counter() - start, 2), "files": files, "proxy": proxy,
    }
    _io.write_json(tmp / "manifest.json", manifest)


def _collect(model, space, units, blockwise, b, inputs, hidden) -> tuple[dict[str, LayerStats], list[torch.Tensor]]:
    """Run dense block `b` once, gathering the input statistics of every linear layer its units touch
    (Gram matrices for the output projections of structured units, for every layer of unstructured
    ones); returns them with the block's outputs. Layers fed the same tensor (q, k and v; gate and
    up) share one set of statistics."""
    stats: dict[str, LayerStats] = {}
    seen: dict[int, tuple[str, torch.Tensor]] = {}  # this batch's inputs by identity (held, so ids stay unique)

    def add(path: str, x: torch.Tensor, gram: bool) -> None:
        owner = seen.get(id(x))
        if owner is None:
            stats[path].add(x, gram)
            seen[id(x)] = (path, x)
        elif stats[path] is not stats[owner[0]]:
            stats[path] = stats[owner[0]]

    handles = []
    for u in units:
        unit = space.units[u]
        consumers = {unit.consumer.module} if unit.consumer is not None else set()
        for path in unit.modules:
            if path in stats:
                continue
            stats[path] = LayerStats()
            gram = space.granularity == "unstructured" or path in consumers
            handles.append(get_module(model, path).register_forward_pre_hook(
                lambda m, args, p=path, g=gram: add(p, args[0], g)))
    outputs = []
    try:
        for h, x in zip(hidden, inputs):
            outputs.append(blockwise.run(h, x, b, b + 1))
            seen.clear()
    finally:
        for h in handles:
            h.remove()
    return stats, outputs


def _unit_tensors(model, space, u, criterion, stats, damp) -> tuple[dict[str, torch.Tensor], list[float], float]:
    """The unit's cache tensors, its summed output error at each level (of the output projection for
    structured units, of the layer itself for unstructured ones) and the summed output energy there."""
    unit = space.units[u]
    if unit.kind == "linear":
        module = get_module(model, unit.module)
        weight = linear_weight(module)
        removal = removal_levels(criterion.weight_scores(weight, stats[unit.module]), unit.counts)
        local = masked_errors(weight, stats[unit.module], removal, unit.n_levels)
        return {f"{u}.removal": removal}, local, output_energy(weight, None, stats[unit.module])
    weights = {p: linear_weight(get_module(model, p)) for p in unit.modules}
    removal = removal_levels(criterion.group_scores(unit, weights, stats), unit.counts)
    tensors = {f"{u}.removal": removal}
    consumer = get_module(model, unit.consumer.module)
    w_out, s_out = weights[unit.consumer.module], stats[unit.consumer.module]
    refit = LsqRefit(w_out, consumer.bias, s_out, damp) if criterion.reconstructs else None
    local = [0.0]
    for level in range(1, unit.n_levels):
        kept = np.flatnonzero(removal.numpy() > level)
        if refit is not None:
            weight, bias, error = refit(unit.consumer.indices(kept))
            tensors[f"{u}.{level}.weight"] = native_layout(consumer, weight)
            if bias is not None:
                tensors[f"{u}.{level}.bias"] = bias
        else:
            error = sliced_error(w_out, s_out, unit.consumer.indices(np.flatnonzero(removal.numpy() <= level)))
        local.append(error)
    return tensors, local, refit.energy if refit is not None else output_energy(w_out, consumer.bias, s_out)
