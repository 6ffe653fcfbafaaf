"""The supernet cache: every unit of a search space pruned at every level, built once, on disk.

Build: calibration tokens run through the model block by block. For each block, hooks gather the
input statistics of its linear layers; the criterion turns them into removal levels (one small
integer per group or weight, masks nested across levels) and, for reconstructing criteria, into
per-level output-projection weights (kept slices only). The next block's inputs come from the dense
block (default) or from the block pruned at a reference level (`calib_from`, Tyr's error
accumulation).

On disk, a directory per cache key (model weights, space, criterion, grid, calibration data and
options): one safetensors file per block and a `manifest.json` with SHA-256 checksums, written to a
temporary directory and renamed into place. A cache whose manifest or checksums do not match is
rebuilt, never used. Per-level weights are read as memory maps, zero-copy, and never written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import _io
from ._modules import get_module, linear_weight, native_layout
from ._progress import progress_bar
from ._torch import torch_threads, weights_hash
from .compose import Composer
from .data import tokens_hash
from .errors import ConfigError
from .pruners import LayerStats, get_criterion, lsq_refit, removal_levels
from .space import SearchSpace

FORMAT = 1
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
    """Read access to a built cache: removal levels and per-level output-projection weights.

    Example:
        >>> supernet = Supernet.build_or_load(model, space, calib_tokens, cache_dir="~/.cache/allocsearch")
        >>> supernet.removal(0)          # first level at which each head group goes
        tensor([3, 1, 8, ...], dtype=torch.uint8)
    """

    def __init__(self, path: Path, space: SearchSpace, manifest: dict) -> None:
        self.path, self.space, self.manifest = path, space, manifest
        self.criterion = manifest["criterion"]
        self._files = {name: safe_open(str(path / name), framework="pt") for name in manifest["files"]}
        self._where = {key: name for name, f in self._files.items() for key in f.keys()}
        self._removal = [self._tensor(f"{u}.removal") for u in range(space.n_units)]

    def _tensor(self, key: str) -> torch.Tensor:
        return self._files[self._where[key]].get_tensor(key)

    def removal(self, unit: int) -> torch.Tensor:
        """First level at which each group (or weight, as (out, in)) of the unit is removed."""
        return self._removal[unit]

    def variant(self, unit: int, level: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Per-level output-projection weight (native layout) and bias, or None when not stored."""
        key = f"{unit}.{level}.weight"
        if key not in self._where:
            return None
        bias = f"{unit}.{level}.bias"
        return self._tensor(key), (self._tensor(bias) if bias in self._where else None)

    @property
    def key(self) -> str:
        return self.manifest["key"]

    def disk_bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())

    @classmethod
    def build_or_load(cls, model: nn.Module, space: SearchSpace, calib: torch.Tensor, *,
                      cache_dir: str | Path, config: SupernetConfig = SupernetConfig(),
                      progress: bool = True) -> Supernet:
        """Open the cache for these inputs, building it first if it is missing, partial or corrupt."""
        criterion = get_criterion(config.criterion, space.granularity)
        key_parts = {
            "format": FORMAT, "weights": weights_hash(model), "space": space.id, "criterion": criterion.name,
            "damp": config.damp if criterion.reconstructs else None, "calib_from": config.calib_from,
            "calib": tokens_hash(calib) if (criterion.needs_data or config.calib_from is not None) else None,
            "threads": config.threads, "device": next(model.parameters()).device.type,
        }
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir).expanduser() / "supernet" / key
        manifest = verify(path)
        if manifest is None:
            if path.exists():
                log.warning("supernet cache %s is incomplete or corrupt; rebuilding it", path)
            log.info("building the supernet cache (%s, %d units, %s) in %s", criterion.name, space.n_units,
                     space.granularity, path)
            for stale in path.parent.glob(f".{key}.*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
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
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            return None
        for name, info in manifest["files"].items():
            file = path / name
            if file.stat().st_size != info["bytes"] or _io.file_sha256(file) != info["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


class _Stop(Exception):
    pass


def _block_inputs(model: nn.Module, block: nn.Module, calib: torch.Tensor, batch_size: int):
    """Inputs of the first block for each calibration batch: (hidden, other args, kwargs)."""
    captured = []

    def grab(module, args, kwargs):
        captured.append((args[0], args[1:], kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in calib.split(batch_size):
            try:
                model(input_ids=batch, use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _run_block(block: nn.Module, inputs) -> list[torch.Tensor]:
    outputs = []
    for hidden, args, kwargs in inputs:
        out = block(hidden, *args, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


class _Building:
    """What `Composer` needs from a cache, served from memory while the cache is being built."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def removal(self, unit: int) -> torch.Tensor:
        return self.tensors[f"{unit}.removal"]

    def variant(self, unit: int, level: int):
        weight = self.tensors.get(f"{unit}.{level}.weight")
        return None if weight is None else (weight, self.tensors.get(f"{unit}.{level}.bias"))


def _build(tmp: Path, model, space, calib, config, criterion, key, key_parts, progress) -> None:
    start = time.perf_counter()
    blocks = get_module(model, space.spec["blocks"])
    by_block: dict[int, list[int]] = {}
    for u, unit in enumerate(space.units):
        by_block.setdefault(unit.block, []).append(u)
    source = _Building()
    composer = Composer(model, space, source)
    files = {}
    reference = space.nearest_levels(config.calib_from) if config.calib_from is not None else None
    with torch.no_grad(), torch_threads(config.threads):
        inputs = None
        if criterion.needs_data or reference is not None:
            inputs = _block_inputs(model, blocks[0], calib, config.batch_size)
        for b in progress_bar(range(len(blocks)), desc=f"building the supernet ({criterion.name})", enabled=progress):
            units = by_block.get(b, [])
            stats, outputs = _collect(model, space, units, blocks[b], inputs) if inputs is not None else ({}, None)
            block_tensors = {}
            for u in units:
                block_tensors.update(_unit_tensors(model, space, u, criterion, stats, config.damp))
            source.tensors.update(block_tensors)
            if inputs is not None and b + 1 < len(blocks):
                if reference is not None:  # the next block sees this one pruned at the reference level
                    levels = np.zeros(space.n_units, dtype=int)
                    levels[units] = reference[units]
                    composer.apply(levels)
                    outputs = _run_block(blocks[b], inputs)
                    composer.apply(np.zeros(space.n_units, dtype=int))
                inputs = _next_inputs(inputs, outputs)
            name = f"block-{b:04d}.safetensors"
            save_file({k: v.contiguous() for k, v in block_tensors.items()}, str(tmp / name))
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _io.file_sha256(tmp / name)}
    manifest = {
        "format": FORMAT, "key": key, "key_parts": key_parts, "criterion": criterion.name,
        "space": space.to_dict(), "units": [u.name for u in space.units],
        "build_seconds": round(time.perf_counter() - start, 2), "files": files,
    }
    _io.write_json(tmp / "manifest.json", manifest)


def _next_inputs(inputs, outputs):
    return [(out, args, kwargs) for (_, args, kwargs), out in zip(inputs, outputs)]


def _collect(model, space, units, block, inputs) -> tuple[dict[str, LayerStats], list[torch.Tensor]]:
    """Run the dense block once, gathering the input statistics of every linear layer its units touch
    (Gram matrices for output projections); returns them with the block's outputs."""
    stats: dict[str, LayerStats] = {}
    handles = []
    for u in units:
        unit = space.units[u]
        consumers = {unit.consumer.module} if unit.consumer is not None else set()
        for path in unit.modules:
            if path in stats:
                continue
            stats[path] = LayerStats()
            gram = path in consumers and space.granularity == "structured"
            handles.append(get_module(model, path).register_forward_pre_hook(
                lambda m, args, s=stats[path], g=gram: s.add(args[0], g)))
    try:
        outputs = _run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    return stats, outputs


def _unit_tensors(model, space, u, criterion, stats, damp) -> dict[str, torch.Tensor]:
    unit = space.units[u]
    if unit.kind == "linear":
        weight = linear_weight(get_module(model, unit.module))
        scores = criterion.weight_scores(weight, stats.get(unit.module))
        return {f"{u}.removal": removal_levels(scores, unit.counts)}
    weights = {p: linear_weight(get_module(model, p)) for p in unit.modules}
    removal = removal_levels(criterion.group_scores(unit, weights, stats), unit.counts)
    tensors = {f"{u}.removal": removal}
    if criterion.reconstructs:
        consumer = get_module(model, unit.consumer.module)
        for level in range(1, unit.n_levels):
            kept = np.flatnonzero(removal.numpy() > level)
            weight, bias = lsq_refit(weights[unit.consumer.module], consumer.bias, stats[unit.consumer.module],
                                     unit.consumer.indices(kept), damp)
            tensors[f"{u}.{level}.weight"] = native_layout(consumer, weight)
            if bias is not None:
                tensors[f"{u}.{level}.bias"] = bias
    return tensors
