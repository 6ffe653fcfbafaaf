"""Shaped allocations: one removed fraction for every unit, shifted per unit, as much as the budget needs.

With no shift this is the uniform allocation, the baseline. OWL (Outlier Weighed Layerwise
sparsity, Yin et al. 2024) shifts each block by its outliers: blocks with more outliers (a larger
share D of Wanda scores above 5x their mean) are pruned less, the removed fraction of every unit of
block l being the target plus lam - 2 lam (D_l - min D) / (max D - min D), within target +- lam
(lam = 0.08). The paper sets per-block sparsity for unstructured pruning; on structured spaces the
same mapping sets each block's removed fraction of heads and channels.
"""

from __future__ import annotations

import numpy as np

from ..core.problem import Problem
from ..core.space import SearchSpace
from ..errors import BudgetError
from .bisection import smallest_feasible

OWL_LAMBDA = 0.08


def shaped_levels(problem: Problem, offsets: np.ndarray | None = None) -> np.ndarray:
    """The least-pruned allocation `fraction + offsets[u]` per unit within the limits, then filled.

    Every unit takes the level nearest `f + offsets[u]` (heads snap to whole heads); f is the
    smallest that meets the limits, found by bisection. The grid leaves part of the budget unused,
    so units then step back one level each, in unit order, while the limits still hold, until none
    can. With no offsets this is the uniform allocation.
    """
    space = problem.space
    offsets = np.zeros(space.n_units) if offsets is None else np.asarray(offsets, dtype=np.float64)

    def levels_at(f: float) -> np.ndarray:
        targets = f + offsets
        return np.array([int(np.argmin(np.abs(u.fractions - t) + 1e-12 * np.arange(u.n_levels)))
                         for u, t in zip(space.units, targets)])

    low, high = -1.0 - offsets.max(), 2.0 - offsets.min()  # every unit dense, every unit at its top
    if not problem.feasible(levels_at(high)):
        raise BudgetError("no allocation of this shape meets the budget; raise the budget")
    levels = levels_at(smallest_feasible(lambda f: problem.feasible(levels_at(f)), low, high, iterations=60))
    changed = True
    while changed:
        changed = False
        for u in range(space.n_units):
            if levels[u] > 0:
                levels[u] -= 1
                if problem.feasible(levels):
                    changed = True
                else:
                    levels[u] += 1
    return levels


def uniform_levels(problem: Problem) -> np.ndarray:
    """The uniform allocation within the limits (see `shaped_levels`)."""
    return shaped_levels(problem)


def owl_offsets(space: SearchSpace, outlier_ratios: np.ndarray, lam: float = OWL_LAMBDA) -> np.ndarray:
    """Each unit's shift of the removed fraction under OWL: more outliers in its block, less pruning.  # (units,)"""
    d = np.asarray(outlier_ratios, dtype=np.float64)  # (blocks,)
    spread = d.max() - d.min()
    normalised = (d - d.min()) / spread if spread > 0 else np.full_like(d, 0.5)
    per_block = lam - 2 * lam * normalised
    return np.array([per_block[u.block] for u in space.units])
