"""Composing a candidate: swap each unit's variant for its level into a model, by reference.

Only units whose level changed since the last candidate are touched. A structured unit at level k
keeps the groups whose removal level is above k: the producers get those rows (slices of the dense
weights), the output projection those columns (or the cache's refit weights), the attention module
its new head count; with no group left the sublayer is replaced by `RemovedSublayer`. An
unstructured unit gets its dense weight times its level's mask. Level 0 restores the dense
parameters themselves. The cache is never written: its tensors are wrapped, not copied.

The same code builds the exported model, so an export equals the evaluated candidate.
"""

from __future__ import annotations

import weakref
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..core.space import SearchSpace, Unit
from ._modules import (
    RemovedSublayer,
    as_out_in,
    get_module,
    linear_shape,
    native_layout,
    set_linear,
    set_module,
)


class VariantSource(Protocol):
    """Where removal levels and per-level weights come from (a `Supernet`, or a cache being built)."""

    def removal(self, unit: int) -> torch.Tensor: ...

    def variant(self, unit: int, level: int) -> tuple[torch.Tensor, torch.Tensor | None] | None: ...


class Composer:
    """Applies allocations to a model in place; remembers the dense parameters to restore them.

    Make it while the model is dense. Several composers may share one model (a session and its
    refined-grid successor): the model remembers which one changed it last, and a composer taking
    over sets every unit afresh instead of trusting what it last did.

    For example::

        composer = Composer(model, space, supernet)
        composer.apply(levels)       # model now computes the candidate
        composer.apply(np.zeros_like(levels))   # and the dense model again
    """

    def __init__(self, model: nn.Module, space: SearchSpace, source: VariantSource) -> None:
        self.model, self.space, self.source = model, space, source
        self.levels = np.zeros(space.n_units, dtype=int)
        paths = {p for unit in space.units for p in unit.modules}
        self._dense = {p: (get_module(model, p).weight, get_module(model, p).bias) for p in paths}
        self._sublayers = {u.sublayer: get_module(model, u.sublayer) for u in space.units if u.sublayer}
        self._attrs = {u.sublayer: {a: getattr(self._sublayers[u.sublayer], a) for a, _ in u.attrs}
                       for u in space.units if u.attrs}

    def apply(self, levels: np.ndarray) -> list[int]:
        """Bring the model to `levels`; returns the units that changed."""
        levels = np.asarray(levels, dtype=int)
        self.space.check(levels)
        owner = getattr(self.model, "_allocsearch_composer", None)
        if owner is None or owner() is not self:  # another composer changed the model since
            object.__setattr__(self.model, "_allocsearch_composer", weakref.ref(self))
            self.levels = np.full(self.space.n_units, -1)
        changed = np.flatnonzero(levels != self.levels).tolist()
        for u in changed:
            self._set(u, int(levels[u]))
            self.levels[u] = levels[u]
        return changed

    def _module(self, path: str, unit: Unit) -> nn.Module:
        """A unit's module, found through its original sublayer when that was swapped out."""
        if unit.sublayer and path.startswith(unit.sublayer + "."):
            return self._sublayers[unit.sublayer].get_submodule(path[len(unit.sublayer) + 1 :])
        return get_module(self.model, path)

    def _set(self, u: int, level: int) -> None:
        unit = self.space.units[u]
        if level == 0:
            for p in unit.modules:
                set_linear(self._module(p, unit), *self._dense[p])
            self._set_sublayer(unit, unit.groups)
        elif unit.kind == "linear":
            weight, bias = self._dense[unit.module]
            module = get_module(self.model, unit.module)
            keep = (self.source.removal(u) > level).to(weight.device)  # (out, in)
            set_linear(module, native_layout(module, as_out_in(module, weight) * keep), bias)
        else:
            self._set_structured(u, unit, level)

    def _set_structured(self, u: int, unit: Unit, level: int) -> None:
        kept = np.flatnonzero(self.source.removal(u).cpu().numpy() > level)  # group indices, ascending
        rows: dict[str, list[np.ndarray]] = {}
        for s in unit.producers:
            rows.setdefault(s.module, []).append(s.indices(kept))
        for path, parts in rows.items():
            weight, bias = self._dense[path]
            module = self._module(path, unit)
            index = torch.from_numpy(np.concatenate(parts)).to(weight.device)
            set_linear(module, native_layout(module, as_out_in(module, weight)[index]),
                       None if bias is None else bias[index])
        consumer = self._module(unit.consumer.module, unit)
        weight, bias = self._dense[unit.consumer.module]
        variant = self.source.variant(u, level)
        if variant is not None:
            new_weight, new_bias = (None if t is None else t.to(weight.device) for t in variant)
        else:
            cols = torch.from_numpy(unit.consumer.indices(kept)).to(weight.device)
            new_weight, new_bias = native_layout(consumer, as_out_in(consumer, weight)[:, cols]), None
        set_linear(consumer, new_weight, bias if new_bias is None else new_bias)
        self._set_sublayer(unit, len(kept), consumer)

    def _set_sublayer(self, unit: Unit, kept_groups: int, consumer: nn.Module | None = None) -> None:
        """Keep the head-count attributes in step; swap the sublayer out when no group is left."""
        if not unit.sublayer:
            return
        original = self._sublayers[unit.sublayer]
        heads = kept_groups * unit.heads_per_group
        values = {"heads": heads, "kv_heads": kept_groups, "width": heads * unit.head_dim}
        for attr, what in unit.attrs:
            setattr(original, attr, values[what] if kept_groups < unit.groups else self._attrs[unit.sublayer][attr])
        replacement = original
        if kept_groups == 0:
            attention = unit.kind == "heads"
            if unit.consumer.module.startswith(unit.sublayer + "."):
                replacement = RemovedSublayer(linear_shape(consumer)[0], consumer.bias, attention=attention)
            else:
                replacement = RemovedSublayer(0, attention=attention)
        set_module(self.model, unit.sublayer, replacement)
