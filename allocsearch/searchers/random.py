"""random: random allocations within the budget, the baseline every learning searcher must beat.

Each candidate draws a removed fraction per unit uniformly in [0, 1] and takes the unit's nearest
level; while a limit is broken, a unit drawn at random among those not at their top removes one
level more. Candidates are distinct; the best measured is kept. Model-free: it reads no table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.problem import Problem
from ..errors import BudgetError, ConfigError
from .base import Searcher


@dataclass(frozen=True)
class RandomOptions:
    """Options of `RandomSearch`."""

    samples: int = field(default=64, metadata={"help": "random allocations to measure"})

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"samples={self.samples!r} must be a positive integer")


class RandomSearch(Searcher):
    """Measures `samples` distinct random allocations within the limits."""

    name = "random"
    Options = RandomOptions

    def __init__(self, problem: Problem, *, seed: int, **options) -> None:
        super().__init__(problem, seed=seed, **options)
        if not problem.feasible(problem.space.n_levels - 1):  # else no draw could ever be repaired
            raise BudgetError(f"no allocation meets the limits {problem.limits}, not even every unit at its deepest "
                              "level; raise the budget")
        self._seen: set[bytes] = set()
        self._exhausted = False

    @property
    def done(self) -> bool:
        return self._exhausted or len(self._seen) >= self.options.samples

    def ask(self, n: int) -> list[np.ndarray]:
        asked: list[np.ndarray] = []
        for _ in range(20 * min(n, self.options.samples - len(self._seen))):  # small spaces run out of new ones
            if len(asked) == n or len(self._seen) >= self.options.samples:
                break
            levels = self._draw()
            if levels.tobytes() not in self._seen:
                self._seen.add(levels.tobytes())
                asked.append(levels)
        self._exhausted = not asked
        return asked

    def _draw(self) -> np.ndarray:
        space, top = self.problem.space, self.problem.space.n_levels - 1
        fractions = self.rng.uniform(0.0, 1.0, space.n_units)
        levels = np.array([int(np.argmin(np.abs(u.fractions - f))) for u, f in zip(space.units, fractions)])
        while not self.problem.feasible(levels):
            more = np.flatnonzero(levels < top)
            levels[int(self.rng.choice(more))] += 1
        return levels
