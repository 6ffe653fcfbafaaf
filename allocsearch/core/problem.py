"""What a searcher or solver works from: the space, its costs, the absolute limits, and tables.

The error table `E[u, k]` and the per-block outlier ratios are expensive to make (a table means
measuring candidates), so a problem may hold them as functions: each is made on first read and
kept. A searcher that never reads one never pays for it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .budget import within
from .cost import CostModel
from .space import SearchSpace

Table = np.ndarray | Callable[[], np.ndarray] | None


class Problem:
    """An allocation problem: one level per unit of `space`, every limit met.

    Args:
        space, costs: the search space and its cost tables.
        limits: cost metric -> absolute limit.
        errors: `E[u, k]`, (units, max_levels), or a function making it.
        outlier_ratios: OWL's per-block outlier ratios, (blocks,), or a function making them.
        init: a known good allocation to start from, (units,), if any.
    """

    def __init__(self, space: SearchSpace, costs: CostModel, limits: dict[str, float], *, errors: Table = None,
                 outlier_ratios: Table = None, init: np.ndarray | None = None) -> None:
        self.space, self.costs, self.limits, self.init = space, costs, dict(limits), init
        self._tables = {"errors": errors, "outlier_ratios": outlier_ratios}

    @property
    def errors(self) -> np.ndarray:
        """The error table E[u, k].  # (units, max_levels)"""
        return self._table("errors")

    @property
    def outlier_ratios(self) -> np.ndarray:
        """Per-block outlier ratios (OWL).  # (blocks,)"""
        return self._table("outlier_ratios")

    def _table(self, name: str) -> np.ndarray:
        value = self._tables[name]
        if value is None:
            raise RuntimeError(f"this problem was made without {name}")
        if callable(value):
            value = self._tables[name] = np.asarray(value())
        return value

    def on(self, space: SearchSpace, costs: CostModel, init: np.ndarray) -> Problem:
        """The same limits on another grid of the same model (coarse-to-fine), starting from `init`."""
        return Problem(space, costs, self.limits, init=init)

    def feasible(self, levels: np.ndarray) -> bool:
        return within(self.costs, levels, self.limits)

    @property
    def primary(self) -> str:
        """The metric a single-constraint solver works on: flops when limited, else the first limit."""
        return "flops" if "flops" in self.limits else next(iter(self.limits))
