"""dp: the multiple-choice knapsack over the error table (see `allocsearch.dp`)."""

from __future__ import annotations

import numpy as np

from ..dp import dp_allocate_constrained
from .base import Proposals


class DP(Proposals):
    """Proposes the allocation minimising the summed single-unit errors within the limits.

    Several limits: DP on flops (or the first limit), Lagrangian prices on the others.
    """

    name = "dp"
    needs = frozenset({"errors"})
    resolution = 10_000

    def propose(self) -> list[np.ndarray]:
        problem = self.problem
        # The DP sees unit costs; the constant part outside the units comes off each limit.
        limits = {m: limit - problem.costs.constant[m] for m, limit in problem.limits.items()}
        solution = dp_allocate_constrained(problem.errors, problem.costs.tables, limits, primary=problem.primary,
                                           resolution=self.resolution)
        return [solution.levels]
