"""The one contract every searcher follows: `ask(n)` proposes, `tell(...)` learns.

A searcher sees a `Problem` (space, cost tables, absolute limits and, when it asks for one, the
error table) and one `np.random.Generator` made from its seed. It never evaluates anything itself:
the search loop sends what it asks to a Runner and tells it the fitnesses, in order. Every
allocation it proposes meets every limit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..budget import within
from ..cost import CostModel
from ..space import SearchSpace


@dataclass(frozen=True)
class Problem:
    """What a searcher works from."""

    space: SearchSpace
    costs: CostModel
    limits: dict[str, float]  # cost metric -> absolute limit
    errors: np.ndarray | None = None  # (units, max_levels), when the searcher needs it

    def feasible(self, levels: np.ndarray) -> bool:
        return within(self.costs, levels, self.limits)


class Searcher(ABC):
    """Base of all searchers.

    Subclasses set `name`, and `needs_errors = True` when they read `problem.errors`.
    """

    name: ClassVar[str]
    needs_errors: ClassVar[bool] = False

    def __init__(self, problem: Problem, *, seed: int) -> None:
        self.problem = problem
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.best_levels: np.ndarray | None = None
        self.best_fitness = np.inf

    @property
    def fidelity(self) -> float:
        """Share of calibration tokens the next asked batch is scored on."""
        return 1.0

    @property
    @abstractmethod
    def done(self) -> bool:
        """True when the searcher has nothing more to ask."""

    @abstractmethod
    def ask(self, n: int) -> list[np.ndarray]:
        """Up to `n` allocations (level index per unit) to evaluate next, each within the limits."""

    def tell(self, allocations: list[np.ndarray], fitnesses: list[float]) -> None:
        """Receive the fitnesses of what `ask` returned, in order. Keeps the best by default."""
        for levels, fitness in zip(allocations, fitnesses):
            if fitness < self.best_fitness:
                self.best_levels, self.best_fitness = np.array(levels), float(fitness)
