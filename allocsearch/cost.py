"""The analytical cost model: FLOPs per token, parameters and bytes of every unit at every level.

`C[metric][u, k]` is the cost of unit u at level k; the model's cost under an allocation is
`constant[metric] + sum_u C[metric][u, level_u]`. Padding past a unit's last level is `inf`.

- flops: per token at `seq_len`, counted as `torch.utils.flop_counter.FlopCounterMode` counts a
  forward pass with eager attention: `2 * in * out` per linear layer, and `4 * seq_len * head_dim`
  per query head for the two attention products (the full square, causal or not). Unstructured
  layers count `2 * nonzeros`, what a sparse kernel executes.
- params: parameters (tied weights once).
- bytes: storage at the model's dtype; an unstructured layer at the cheapest of dense,
  bitmask + values and CSR (int32 indices).

Everything outside the units (embeddings, norms, the LM head, output biases) is the constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from torch import nn

from ._modules import get_module, is_linear, linear_shape
from .space import SearchSpace, Unit

METRICS = ("flops", "params", "bytes")


@dataclass(frozen=True)
class CostModel:
    """Cost tables of a search space on one model.

    Example:
        >>> costs = CostModel.from_model(model, space, seq_len=128)
        >>> costs.total(space.nearest_levels(0.5))["flops"] / costs.dense["flops"]
        0.52
    """

    tables: dict[str, np.ndarray]  # metric -> (units, max_levels), inf past a unit's levels
    constant: dict[str, float]
    seq_len: int
    dtype_bytes: int

    @classmethod
    def from_model(cls, model: nn.Module, space: SearchSpace, *, seq_len: int) -> CostModel:
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
        return cls(tables, constant, seq_len, dtype_bytes)

    @cached_property
    def dense(self) -> dict[str, float]:
        """Cost of the unpruned model."""
        return self.total(np.zeros(self.tables["flops"].shape[0], dtype=int))

    @cached_property
    def minimum(self) -> dict[str, float]:
        """The smallest cost reachable in the space, per metric."""
        return {m: self.constant[m] + float(np.nanmin(np.where(np.isinf(t), np.nan, t), axis=1).sum())
                for m, t in self.tables.items()}

    def unit_costs(self, levels: np.ndarray) -> dict[str, np.ndarray]:
        """Per-unit cost of an allocation.  # metric -> (units,)"""
        idx = np.arange(len(levels))
        return {m: t[idx, levels] for m, t in self.tables.items()}

    def total(self, levels: np.ndarray) -> dict[str, float]:
        """Whole-model cost of an allocation."""
        return {m: self.constant[m] + float(c.sum()) for m, c in self.unit_costs(np.asarray(levels)).items()}

    def ratios(self, levels: np.ndarray) -> dict[str, float]:
        """Cost of an allocation as fractions of dense."""
        total, dense = self.total(levels), self.dense
        return {m: total[m] / dense[m] for m in METRICS}


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
