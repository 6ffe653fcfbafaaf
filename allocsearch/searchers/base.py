"""The one contract every searcher follows: `ask(n)` proposes, `tell(...)` learns.

A searcher sees a `Problem` (space, cost tables, absolute limits, and whatever it `needs`: the
error table, the per-block outlier ratios) and one `np.random.Generator` made from its seed. It
never evaluates anything itself: the search loop sends what it asks to a Runner and tells it the
fitnesses, in order. Every allocation it proposes meets every limit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..budget import within
from ..errors import ConfigError
from ..cost import CostModel
from ..space import SearchSpace


@dataclass(frozen=True)
class Problem:
    """What a searcher works from."""

    space: SearchSpace
    costs: CostModel
    limits: dict[str, float]  # cost metric -> absolute limit
    errors: np.ndarray | None = None  # (units, max_levels): E[u, k], when the searcher needs "errors"
    outlier_ratios: np.ndarray | None = None  # (blocks,), when the searcher needs "outlier_ratios"
    init: np.ndarray | None = None  # (units,): a known good allocation to start from, if any

    def feasible(self, levels: np.ndarray) -> bool:
        return within(self.costs, levels, self.limits)

    @property
    def primary(self) -> str:
        """The metric a single-constraint solver works on: flops when limited, else the first limit."""
        return "flops" if "flops" in self.limits else next(iter(self.limits))


class Searcher(ABC):
    """Base of all searchers.

    Subclasses set `name`, and `needs` to the optional `Problem` fields they read.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type | None] = None  # a frozen dataclass of the searcher's own options, if any
    refine_step: float | None = None  # set when the searcher asks for a finer grid around its best

    @classmethod
    def requirements(cls, options: dict, has_init: bool) -> frozenset[str]:
        """The optional `Problem` fields this searcher reads, given its options and whether the
        problem comes with a start allocation."""
        return cls.needs

    def __init__(self, problem: Problem, *, seed: int, **options) -> None:
        if self.Options is None:
            if options:
                raise ConfigError(f"method {self.name} takes no options (got {', '.join(sorted(options))})")
        else:
            known = set(self.Options.__dataclass_fields__)
            if set(options) - known:
                raise ConfigError(f"method {self.name} has no option {', '.join(sorted(set(options) - known))}; "
                                  f"its options are {', '.join(sorted(known))}")
            self.options = self.Options(**options)
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
    def at_boundary(self) -> bool:
        """True where `state()` captures everything, so a checkpoint can be written (iterative searchers)."""
        return False

    def progress(self) -> tuple[int, int, dict] | None:
        """(steps done, steps planned, figures to show) for a progress bar, or None."""
        return None

    def finish(self, heldout: float | None, dense_heldout: float | None) -> None:
        """Called once the best allocation's held-out score is measured (a study records it)."""

    def state(self) -> dict:
        """What a checkpoint holds (iterative searchers, at a boundary)."""
        raise NotImplementedError(f"searcher {self.name} keeps no checkpoints")

    def load_state(self, state: dict) -> None:
        raise NotImplementedError(f"searcher {self.name} keeps no checkpoints")

    def rebase(self, problem: Problem) -> None:
        """Continue on the refined grid of `problem` (searchers that set `refine_step`)."""
        raise NotImplementedError(f"searcher {self.name} does not refine its grid")

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


class Proposals(Searcher):
    """A searcher that proposes a fixed list of allocations once and keeps the best measured."""

    def __init__(self, problem: Problem, *, seed: int) -> None:
        super().__init__(problem, seed=seed)
        self._pending = distinct(self.propose())

    @abstractmethod
    def propose(self) -> list[np.ndarray]:
        """The candidates, each within the limits."""

    @property
    def done(self) -> bool:
        return not self._pending

    def ask(self, n: int) -> list[np.ndarray]:
        asked, self._pending = self._pending[:n], self._pending[n:]
        return asked


def distinct(allocations: list[np.ndarray]) -> list[np.ndarray]:
    seen, out = set(), []
    for levels in allocations:
        key = np.asarray(levels, dtype=np.int64).tobytes()
        if key not in seen:
            seen.add(key)
            out.append(np.asarray(levels, dtype=np.int64))
    return out
