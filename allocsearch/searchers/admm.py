"""admm: allocations from the error table in closed form (`allocsearch.solvers.price`), measured.

Asks the price, ADMM and softmax allocations (the temperature T on a log grid), then softmax at the
midpoints around the best measured T; keeps the best measured.
"""

from __future__ import annotations

import numpy as np

from ..core.problem import Problem
from ..solvers.price import admm_allocation, price_allocation, softmax_allocation
from .base import Searcher, distinct

TEMPERATURES = (0.05, 0.15, 0.4, 1.0, 2.5, 6.0, 1e6)  # in standard deviations of the error slopes


class ADMM(Searcher):
    """Asks the price, ADMM and softmax allocations (T on a log grid), then softmax at the midpoints
    around the best measured T; keeps the best measured."""

    name = "admm"

    def __init__(self, problem: Problem, *, seed: int) -> None:
        super().__init__(problem, seed=seed)
        errors = problem.errors
        self._by_temperature = {t: softmax_allocation(problem, errors, t) for t in TEMPERATURES}
        first = [price_allocation(problem, errors), admm_allocation(problem, errors), *self._by_temperature.values()]
        self._pending = distinct(first)
        self._measured: dict[bytes, float] = {}
        self._round = 1

    @property
    def done(self) -> bool:
        return not self._pending and self._round == 2

    def ask(self, n: int) -> list[np.ndarray]:
        if not self._pending and self._round == 1:
            self._round = 2
            self._pending = [c for c in distinct(self._refinements()) if c.tobytes() not in self._measured]
        asked, self._pending = self._pending[:n], self._pending[n:]
        return asked

    def tell(self, allocations: list[np.ndarray], fitnesses: list[float]) -> None:
        super().tell(allocations, fitnesses)
        for levels, fitness in zip(allocations, fitnesses):
            self._measured[np.asarray(levels, dtype=np.int64).tobytes()] = fitness

    def _refinements(self) -> list[np.ndarray]:
        """Softmax at the geometric midpoints between the best measured T and its neighbours."""
        temps = list(TEMPERATURES)
        scores = [self._measured.get(self._by_temperature[t].tobytes(), np.inf) for t in temps]
        i = int(np.argmin(scores))
        near = [np.sqrt(temps[i] * temps[j]) for j in (i - 1, i + 1) if 0 <= j < len(temps)]
        return [softmax_allocation(self.problem, self.problem.errors, t) for t in near]
