"""uniform: the same removed fraction in every unit, as much as the budget needs. The baseline."""

from __future__ import annotations

import numpy as np

from ..errors import BudgetError
from .base import Problem, Proposals


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
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if problem.feasible(levels_at(mid)) else (mid, high)
    levels = levels_at(high)
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


class Uniform(Proposals):
    """Proposes the uniform allocation."""

    name = "uniform"

    def propose(self) -> list[np.ndarray]:
        return [uniform_levels(self.problem)]
