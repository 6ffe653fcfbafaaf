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

Everything outside the units (embeddings, norms, the LM head, output biases) is the constant. The
tables are counted from a model by `allocsearch.model.build.costs_from_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

METRICS = ("flops", "params", "bytes")


@dataclass(frozen=True)
class CostModel:
    """Cost tables of a search space on one model.

    Counted from a model by `allocsearch.model.build.costs_from_model`.
    """

    tables: dict[str, np.ndarray]  # metric -> (units, max_levels), inf past a unit's levels
    constant: dict[str, float]
    seq_len: int
    dtype_bytes: int

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
