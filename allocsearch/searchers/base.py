"""The one contract every searcher follows: `ask(n)` proposes, `tell(...)` learns.

A searcher sees a `Problem` (space, cost tables, absolute limits; the error table and outlier
ratios are made on first read) and one `np.random.Generator` made from its seed. It never evaluates
anything itself: the search loop sends what it asks to a Runner, scored on the searcher's
`fidelity`, and tells it the fitnesses, in order. Every allocation it proposes meets every limit.

The contract: `done` (reading it changes nothing), `ask(n)` (at most `n` allocations), `tell`,
`fidelity`, `best_levels` / `best_fitness`, `progress()` for a progress bar, `summary()` for the result's
`details`, and `finish(result)`.
Two capabilities, each a small base class the loop looks for:

- `Resumable`: `at_boundary`, `state()`, `load_state()`: checkpoints between generations.
- `Refining`: `refine_step`, `rebase(problem)`: coarse-to-fine rounds on finer grids.

A new searcher is one file in this folder and one line in `SEARCHERS` (`searchers/__init__.py`);
its own options are a frozen dataclass, `Options`, whose fields the CLI turns into flags.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from ..core.problem import Problem
from ..core.result import Result
from ..errors import ConfigError


class Searcher(ABC):
    """Base of all searchers: subclasses set `name` and, when they take options, `Options`."""

    name: ClassVar[str]
    Options: ClassVar[type | None] = None  # a frozen dataclass of the searcher's own options, if any

    def __init__(self, problem: Problem, *, seed: int, **options) -> None:
        parsed = self.parse_options(options)
        if parsed is not None:
            self.options = parsed
        self.problem = problem
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.best_levels: np.ndarray | None = None
        self.best_fitness = np.inf

    @classmethod
    def parse_options(cls, options: dict):
        """The searcher's `Options` made from `options` (None when it takes none), checked: callers run
        it before any model is loaded, so a bad option costs nothing.

        Raises:
            ConfigError: an option the searcher does not have, or a bad value.
        """
        if cls.Options is None:
            if options:
                raise ConfigError(f"method={cls.name!r} takes no options (got {', '.join(sorted(options))})")
            return None
        known = set(cls.Options.__dataclass_fields__)
        if set(options) - known:
            raise ConfigError(f"method={cls.name!r} has no option {', '.join(sorted(set(options) - known))}; "
                              f"its options are {', '.join(sorted(known))}")
        try:
            return cls.Options(**options)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a value of the wrong type, met by a comparison or conversion
            given = ", ".join(f"{k}={v!r}" for k, v in sorted(options.items()))
            raise ConfigError(f"method={cls.name!r}: an option has a value of the wrong type ({given}: {exc}); "
                              "give numbers where the option counts or measures") from None

    @property
    @abstractmethod
    def done(self) -> bool:
        """True when the searcher has nothing more to ask. Reading it changes nothing."""

    @abstractmethod
    def ask(self, n: int) -> list[np.ndarray]:
        """At most `n` allocations (level index per unit) to evaluate next, each within the limits."""

    def tell(self, allocations: list[np.ndarray], fitnesses: list[float]) -> None:
        """Receive the fitnesses of what `ask` returned, in order. Keeps the best by default."""
        for levels, fitness in zip(allocations, fitnesses):
            if fitness < self.best_fitness:
                self.best_levels, self.best_fitness = np.array(levels), float(fitness)

    @property
    def fidelity(self) -> float:
        """Share of calibration tokens the next asked batch is scored on."""
        return 1.0

    def progress(self) -> tuple[int, int, dict] | None:
        """(steps done, steps planned, figures to show) for a progress bar, or None."""
        return None

    def summary(self) -> dict:
        """JSON figures of the search itself, saved in the result's `details` (a predictor's rank
        correlation, what spdy did); empty by default."""
        return {}

    def finish(self, result: Result) -> None:
        """Called once with the result, its held-out score measured (a study records it on itself)."""


class Resumable(ABC):
    """A searcher that can write a checkpoint between generations and continue from one."""

    @property
    @abstractmethod
    def at_boundary(self) -> bool:
        """True where `state()` captures everything there is."""

    @abstractmethod
    def state(self) -> dict:
        """JSON data, plus `seen`, an int array: everything needed to continue from here."""

    @abstractmethod
    def load_state(self, state: dict) -> None:
        """Continue from `state()` taken on a problem with the same space as this one."""


class Refining(ABC):
    """A searcher that asks for finer grids around its best allocation (coarse-to-fine rounds)."""

    refine_step: float | None = None  # set when it is done on this grid and wants one this fine

    @abstractmethod
    def rebase(self, problem: Problem) -> None:
        """Continue on the refined grid of `problem`, whose `init` is the best allocation, expressed on it."""


class Proposals(Searcher):
    """A searcher that proposes a fixed list of allocations once and keeps the best measured."""

    def __init__(self, problem: Problem, *, seed: int, **options) -> None:
        super().__init__(problem, seed=seed, **options)
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
