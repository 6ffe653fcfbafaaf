"""uniform: the same removed fraction in every unit, as much as the budget needs. The baseline."""

from __future__ import annotations

import numpy as np

from ..errors import BudgetError
from .base import Problem, Searcher


def uniform_levels(problem: Problem) -> np.ndarray:
    """The least-pruned uniform allocation within the limits, then filled up to the budget.

    Every unit takes the level nearest one fraction f (heads snap to whole heads); f is the smallest
    that meets the limits, found by bisection. The grid leaves part of the budget unused, so units
    then step back one level each, in unit order, while the limits still hold, until none can.
    """
    space = problem.space
    top = max(float(u.fractions[-1]) for u in space.units)
    if not problem.feasible(space.nearest_levels(top)):
        raise BudgetError("no uniform allocation meets the budget; raise the budget")
    low, high = 0.0, top  # infeasible (or dense), feasible
    if problem.feasible(space.nearest_levels(low)):
        return space.nearest_levels(low)
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if problem.feasible(space.nearest_levels(mid)) else (mid, high)
    levels = space.nearest_levels(high)
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


class Uniform(Searcher):
    """Proposes the uniform allocation once."""

    name = "uniform"

    def __init__(self, problem: Problem, *, seed: int) -> None:
        super().__init__(problem, seed=seed)
        self._candidate = uniform_levels(problem)
        self._asked = False

    @property
    def done(self) -> bool:
        return self._asked

    def ask(self, n: int) -> list[np.ndarray]:
        if self._asked:
            return []
        self._asked = True
        return [self._candidate.copy()]
