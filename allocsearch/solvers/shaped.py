"""Shaped allocations: each unit's removed fraction a function of one scalar, as much as the budget needs.

A shape is `targets(f)`, the removed fraction of every unit for a scalar f, non-decreasing in f;
`shaped_levels` finds the smallest f whose allocation meets every limit, then fills what the grid
leaves. The model-informed allocators (`ecoflap`, `cfsp`, `dlp`) are shapes; so are these two:

- uniform: `f` for every unit, the baseline.
- OWL (Outlier Weighed Layerwise sparsity, Yin et al. 2024) shifts each block by its outliers:
  blocks with more outliers (a larger share D of Wanda scores above 5x their mean) are pruned
  less, the removed fraction of every unit of block l being the target plus
  lam - 2 lam (D_l - min D) / (max D - min D), within target +- lam (lam = 0.08). The paper sets
  per-block sparsity for unstructured pruning; on structured spaces the same mapping sets each
  block's removed fraction of heads and channels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..core.problem import Problem
from ..core.space import SearchSpace
from ..errors import BudgetError
from .bisection import smallest_feasible

OWL_LAMBDA = 0.08

Targets = Callable[[float], np.ndarray]  # f -> removed fraction per unit  # (units,)


def shaped_levels(problem: Problem, targets: Targets | None = None,
                  bounds: tuple[float, float] = (-1.0, 2.0)) -> np.ndarray:
    """The least-pruned allocation of the shape `targets` within the limits, then filled.

    Every unit takes the level nearest its target `targets(f)[u]`, capped to the unit's own range
    `[0, largest level]` (heads snap to whole heads); f is the smallest in `bounds` that meets the
    limits, found by bisection. Then `fill_in_order` spends what the grid leaves unused.

    Args:
        problem: the space, costs and limits.
        targets: f -> removed fraction per unit, non-decreasing in f; None is the uniform shape, f
            for every unit.
        bounds: (low, high): every unit dense at `low`, every unit at its top at `high`.

    Raises:
        BudgetError: when even `targets(high)` breaks a limit.
    """
    space = problem.space
    targets = targets or (lambda f: np.full(space.n_units, f))
    tops = np.array([u.fractions[-1] for u in space.units])  # (units,)

    def levels_at(f: float) -> np.ndarray:
        capped = np.clip(targets(f), 0.0, tops)  # (units,)
        return np.array([int(np.argmin(np.abs(u.fractions - t) + 1e-12 * np.arange(u.n_levels)))
                         for u, t in zip(space.units, capped)])

    return least_feasible(problem, levels_at, bounds)


def least_feasible(problem: Problem, levels_at: Callable[[float], np.ndarray], bounds: tuple[float, float],
                   shape: str = "this shape") -> np.ndarray:
    """`levels_at(f)` at the smallest f in `bounds` that meets the limits (levels non-decreasing in f),
    filled by `fill_in_order`; BudgetError naming `shape` when even `levels_at(high)` breaks a limit."""
    low, high = bounds
    if not problem.feasible(levels_at(high)):
        raise BudgetError(f"no allocation of {shape} meets the budget; raise the budget")
    f = smallest_feasible(lambda f: problem.feasible(levels_at(f)), low, high, iterations=60)
    return fill_in_order(problem, levels_at(f))


def fill_in_order(problem: Problem, levels: np.ndarray) -> np.ndarray:
    """Step units back one level each, in unit order, while the limits still hold, until none can."""
    levels = np.array(levels, dtype=np.int64)
    changed = True
    while changed:
        changed = False
        for u in range(problem.space.n_units):
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


def shifted(offsets: np.ndarray) -> tuple[Targets, tuple[float, float]]:
    """The shape `f + offsets[u]` and its bounds, for `shaped_levels(problem, *shifted(offsets))`."""
    offsets = np.asarray(offsets, dtype=np.float64)  # (units,)
    return (lambda f: f + offsets), (-1.0 - offsets.max(), 2.0 - offsets.min())


def block_targets(space: SearchSpace, removed: Callable[[float], np.ndarray]) -> Targets:
    """A per-block removed fraction `removed(f)` (blocks,) as the shape of every unit of each block."""
    blocks = np.array([u.block for u in space.units])  # (units,)
    return lambda f: removed(f)[blocks]


def owl_offsets(space: SearchSpace, outlier_ratios: np.ndarray, lam: float = OWL_LAMBDA) -> np.ndarray:
    """Each unit's shift of the removed fraction under OWL: more outliers in its block, less pruning.  # (units,)"""
    d = np.asarray(outlier_ratios, dtype=np.float64)  # (blocks,)
    spread = d.max() - d.min()
    normalised = (d - d.min()) / spread if spread > 0 else np.full_like(d, 0.5)
    per_block = lam - 2 * lam * normalised
    return np.array([per_block[u.block] for u in space.units])
