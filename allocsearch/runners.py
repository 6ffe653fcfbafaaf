"""Runners evaluate batches of candidates; every searcher and the error table go through one.

The contract is `runner.evaluate(allocations, fidelity) -> list[float]`, fitnesses in candidate
order. The in-process runner is the default; a runner that spreads candidates over workers plugs
in with no change elsewhere, since an evaluation is a pure function of (allocation, fidelity, data).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ._progress import progress_bar
from .evaluator import Evaluator


class Runner(Protocol):
    def evaluate(self, allocations: Sequence[np.ndarray], fidelity: float = 1.0) -> list[float]: ...

    def close(self) -> None:
        """Release workers (a no-op in process)."""


class InProcessRunner:
    """Evaluates candidates one after another in this process.

    Example:
        >>> runner = InProcessRunner(evaluator)
        >>> runner.evaluate([levels_a, levels_b])
        [0.041, 0.037]
    """

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def evaluate(self, allocations: Sequence[np.ndarray], fidelity: float = 1.0) -> list[float]:
        return [self.evaluator.fitness(levels, fidelity) for levels in allocations]

    def close(self) -> None:
        pass


def error_table(runner: Runner, n_levels: np.ndarray, *, fidelity: float = 1.0, chunk: int = 16,
                progress: bool = True) -> np.ndarray:
    """`E[u, k]`: fitness with only unit u pruned, at level k; 0 at level 0, inf past a unit's levels.

    Candidates go unit by unit, level by level, so consecutive ones differ in one or two units.
    # (units, max_levels)
    """
    n_units = len(n_levels)
    table = np.full((n_units, int(n_levels.max())), np.inf)
    table[:, 0] = 0.0
    cells = [(u, k) for u in range(n_units) for k in range(1, int(n_levels[u]))]
    bar = progress_bar(total=len(cells), desc="error table", enabled=progress)
    for start in range(0, len(cells), chunk):
        part = cells[start : start + chunk]
        allocations = []
        for u, k in part:
            levels = np.zeros(n_units, dtype=int)
            levels[u] = k
            allocations.append(levels)
        for (u, k), value in zip(part, runner.evaluate(allocations, fidelity)):
            table[u, k] = value
        bar.update(len(part))
    bar.close()
    return table
