"""Searchers that propose one allocation from a solver: uniform, owl and dp."""

from __future__ import annotations

import numpy as np

from ..solvers.dp import dp_solve
from ..solvers.shaped import owl_offsets, shaped_levels, uniform_levels
from .base import Proposals


class Uniform(Proposals):
    """uniform: the same removed fraction in every unit, as much as the budget needs. The baseline."""

    name = "uniform"

    def propose(self) -> list[np.ndarray]:
        return [uniform_levels(self.problem)]


class OWL(Proposals):
    """owl: Outlier Weighed Layerwise sparsity (Yin et al. 2024), model-free apart from the outlier
    ratios (see `allocsearch.solvers.shaped`)."""

    name = "owl"

    def propose(self) -> list[np.ndarray]:
        return [shaped_levels(self.problem, owl_offsets(self.problem.space, self.problem.signal("outlier_ratios")))]


class DP(Proposals):
    """dp: the allocation minimising the summed single-unit errors within the limits (the multiple-choice
    knapsack of `allocsearch.solvers.dp`). Several limits: DP on flops (or the first limit),
    Lagrangian prices on the others."""

    name = "dp"
    resolution = 10_000

    def propose(self) -> list[np.ndarray]:
        return [dp_solve(self.problem, resolution=self.resolution).levels]
