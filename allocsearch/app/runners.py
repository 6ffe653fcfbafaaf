"""Runners evaluate batches of candidates; every searcher and the error table go through one.

The contract is `runner.evaluate(allocations, fidelity) -> list[float]`, fitnesses in candidate
order. The in-process runner is the default; a runner that spreads candidates over workers plugs
in with no change elsewhere, since an evaluation is a pure function of (allocation, fidelity, data).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..model.evaluator import Evaluator


class Runner(Protocol):
    def evaluate(self, allocations: Sequence[np.ndarray], fidelity: float = 1.0) -> list[float]: ...

    def close(self) -> None:
        """Release workers (a no-op in process)."""


class InProcessRunner:
    """Evaluates candidates one after another in this process.

    For example::

        runner = InProcessRunner(session.evaluator)
        runner.evaluate([levels_a, levels_b])  # [0.041, 0.037]
    """

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def evaluate(self, allocations: Sequence[np.ndarray], fidelity: float = 1.0) -> list[float]:
        return [self.evaluator.fitness(levels, fidelity) for levels in allocations]

    def close(self) -> None:
        pass
