"""A search space and its cost tables, read from a concrete model.

`space_from_model` reads a family spec (`allocsearch.model.spec`) against the model's modules and
makes its units; `costs_from_model` counts FLOPs, parameters and bytes of every unit at every level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..core.cost import METRICS, CostModel
from ..core.space import GRANULARITIES, LevelGrid, SearchSpace, Slice, Unit
from ..errors import ConfigError, SpaceError
from ._modules import get_module, is_linear, linear_shape
from .decilm import check_space as check_decilm
from .spec import load_spec

FIT_CHECKS = {"decilm": check_decilm}  # LevelGrid.fit -> what refuses a space the format cannot hold


def space_from_model(model: nn.Module, *, granularity: str = "structured", space: str | Path | None = None,
                     grid: LevelGrid = LevelGrid()) -> SearchSpace:
    """Read the family spec of `model` (or `space`, a family name or YAML file) against it.

    For example::

        space = space_from_model(model, granularity="structured")
        space.units[0].name, space.units[0].fractions  # 'transformer.h.0.heads', array([0., 0.125, ...])
    """
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity={granularity!r} must be one of {', '.join(GRANULARITIES)}")
    spec = load_spec(space, getattr(model.config, "model_type", None))
    _check_final(model, spec)
    units = _structured_units(model, spec, grid) if granularity == "structured" else _linear_units(model, spec, grid)
    space = SearchSpace(spec["family"], spec["task"], granularity, tuple(units), spec, grid)
    if grid.fit:
        FIT_CHECKS[grid.fit](model.config, space)
    return space


def costs_from_model(model: nn.Module, space: SearchSpace, *, seq_len: int) -> CostModel:
    """The cost tables of `space` on `model` (see `allocsearch.core.cost` for what is counted).

    For example::

        costs = costs_from_model(model, space, seq_len=128)
        costs.total(space.nearest_levels(0.5))["flops"] / costs.dense["flops"]  # 0.52
    """
    dtype_bytes = next(model.parameters()).element_size()
    width = int(space.n_levels.max())
    tables = {m: np.full((space.n_units, width), np.inf) for m in METRICS}
    for u, unit in enumerate(space.units):
        rows = [_unit_cost(model, unit, k, seq_len, dtype_bytes) for k in range(unit.n_levels)]
        for m in METRICS:
            tables[m][u, : unit.n_levels] = [r[m] for r in rows]
    unit_params = sum(float(tables["params"][u, 0]) for u in range(space.n_units))
    params = _unique_params(model)
    in_units = {p for unit in space.units for p in unit.modules}
    once = {f"{path}" for path in space.spec.get("once_per_sequence", [])}
    flops = 0.0
    for name, module in model.named_modules():
        if is_linear(module) and name not in in_units:
            out_f, in_f = linear_shape(module)
            flops += 2.0 * in_f * out_f / (seq_len if name in once else 1)
    constant_params = params - unit_params
    constant = {"flops": flops, "params": constant_params, "bytes": constant_params * dtype_bytes}
    return CostModel(tables, constant, seq_len, dtype_bytes)


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def _checked_linear(model: nn.Module, path: str, family: str) -> nn.Module:
    try:
        module = get_module(model, path)
    except AttributeError:
        raise SpaceError(
            f"space {family}: module {path!r} does not exist in this model; check the module paths in the YAML"
        ) from None
    if not is_linear(module):
        raise SpaceError(f"space {family}: module {path!r} is a {type(module).__name__}, not a linear layer")
    return module


def _check_final(model: nn.Module, spec: dict) -> None:
    """Every `final` path names a module of the model, or an attribute it holds as None (absent here)."""
    for path in spec["final"]:
        parent_path, _, name = path.rpartition(".")
        try:
            value = getattr(get_module(model, parent_path), name)
        except AttributeError:
            value = AttributeError
        if not (value is None or isinstance(value, nn.Module)):
            raise SpaceError(f"space {spec['family']}: final module {path!r} does not exist in this model; "
                             "check the final paths in the YAML")


def _blocks(model: nn.Module, spec: dict) -> tuple[str, int]:
    try:
        blocks = get_module(model, spec["blocks"])
    except AttributeError:
        raise SpaceError(f"space {spec['family']}: blocks {spec['blocks']!r} do not exist in this model") from None
    return spec["blocks"], len(blocks)


def _structured_units(model: nn.Module, spec: dict, grid: LevelGrid) -> list[Unit]:
    family, heads, channels = spec["family"], spec["heads"], spec["channels"]
    n_heads = _config_int(model.config, "num_attention_heads", "n_head")
    n_kv = _config_int(model.config, "num_key_value_heads") or n_heads
    if n_heads is None or n_heads % n_kv:
        raise SpaceError(f"space {family}: cannot read the head counts from the model config")
    per_group = n_heads // n_kv
    prefix, n_blocks = _blocks(model, spec)
    units = []
    for b in range(n_blocks):
        at = f"{prefix}.{b}"
        out_path = f"{at}.{heads['out']}"
        width = linear_shape(_checked_linear(model, out_path, family))[1]
        head_dim = width // n_heads
        if "qkv" in heads:
            qkv = f"{at}.{heads['qkv']}"
            if per_group != 1 or linear_shape(_checked_linear(model, qkv, family))[0] != 3 * width:
                raise SpaceError(f"space {family}: fused qkv {qkv!r} must hold 3 x {width} rows of plain multi-head attention")
            producers = tuple(Slice(qkv, i * width, head_dim) for i in range(3))
        else:
            q, k, v = (f"{at}.{heads[r]}" for r in ("query", "key", "value"))
            for path, rows in ((q, width), (k, n_kv * head_dim), (v, n_kv * head_dim)):
                if linear_shape(_checked_linear(model, path, family))[0] != rows:
                    raise SpaceError(f"space {family}: {path!r} should have {rows} output rows for {n_heads} heads")
            producers = (Slice(q, 0, per_group * head_dim), Slice(k, 0, head_dim), Slice(v, 0, head_dim))
        units.append(Unit(
            name=f"{at}.heads", kind="heads", block=b, groups=n_kv,
            counts=grid.counts(n_kv, "structured", whole=grid.fit is not None),
            producers=producers, consumer=Slice(out_path, 0, per_group * head_dim),
            sublayer=f"{at}.{heads['attention']}", attrs=tuple(sorted(heads["set"].items())),
            heads_per_group=per_group, head_dim=head_dim,
        ))
        down = f"{at}.{channels['down']}"
        n_channels = linear_shape(_checked_linear(model, down, family))[1]
        ups = tuple(f"{at}.{p}" for p in channels["up"])
        for up in ups:
            if linear_shape(_checked_linear(model, up, family))[0] != n_channels:
                raise SpaceError(f"space {family}: {up!r} should have {n_channels} output rows like {down!r} has inputs")
        units.append(Unit(
            name=f"{at}.channels", kind="channels", block=b, groups=n_channels,
            counts=grid.counts(n_channels, "structured", grid.channel_step),
            producers=tuple(Slice(up, 0, 1) for up in ups), consumer=Slice(down, 0, 1),
            sublayer=f"{at}.{channels['mlp']}" if channels.get("mlp") else None,
        ))
    return units


def _linear_units(model: nn.Module, spec: dict, grid: LevelGrid) -> list[Unit]:
    heads, channels = spec["heads"], spec["channels"]
    names = [heads["qkv"]] if "qkv" in heads else [heads["query"], heads["key"], heads["value"]]
    names += [heads["out"], *channels["up"], channels["down"]]
    prefix, n_blocks = _blocks(model, spec)
    units = []
    for b in range(n_blocks):
        for name in names:
            path = f"{prefix}.{b}.{name}"
            in_features = linear_shape(_checked_linear(model, path, spec["family"]))[1]
            units.append(Unit(name=path, kind="linear", block=b, groups=in_features,
                              counts=grid.counts(in_features, "unstructured"), module=path))
    return units


def _unique_params(model: nn.Module) -> float:
    seen, count = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            count += p.numel()
    return float(count)


def _unit_cost(model: nn.Module, unit: Unit, level: int, seq_len: int, dtype_bytes: int) -> dict[str, float]:
    if unit.kind == "linear":
        module = get_module(model, unit.module)
        rows, cols = linear_shape(module)
        nnz = rows * (cols - unit.counts[level])
        storage = min(
            rows * cols * dtype_bytes,  # dense
            -(-rows * cols // 8) + nnz * dtype_bytes,  # bitmask + values
            nnz * (dtype_bytes + 4) + (rows + 1) * 4,  # CSR, int32 indices
        )
        return {"flops": 2.0 * nnz, "params": float(nnz), "bytes": float(storage)}
    kept = unit.groups - unit.counts[level]
    weights = params = 0
    for s in unit.producers:
        module = get_module(model, s.module)
        rows = kept * s.width
        weights += rows * linear_shape(module)[1]
        params += rows * linear_shape(module)[1] + (rows if module.bias is not None else 0)
    out = get_module(model, unit.consumer.module)
    consumer = kept * unit.consumer.width * linear_shape(out)[0]
    weights += consumer
    params += consumer
    flops = 2.0 * weights
    if unit.kind == "heads":
        flops += 4.0 * seq_len * unit.head_dim * kept * unit.heads_per_group
    return {"flops": flops, "params": float(params), "bytes": float(params * dtype_bytes)}
