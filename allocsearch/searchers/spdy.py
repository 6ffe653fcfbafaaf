"""spdy: a search over per-unit coefficients that reshape the dp (SPDY, Frantar & Alistarh, ICML 2022).

SPDY's dp minimises a sum of per-layer error curves within the budget; instead of trusting each
curve's scale, it searches one coefficient per layer and judges the dp's answer by the measured
distortion of the whole model. Here, with `P[u, k] = E[u, k] / E[u, last level of u]` unit u's error
profile normalised to its deepest level, a coefficient vector `c` in [0, 1]^units gives

    levels(c) = dp within the limits of min_levels sum_u c_u * P[u, levels_u]

("the dp on c_u * C[u, k]" of our issue: the dp on coefficient-scaled per-unit curves), and the
fitness of `c` is the measured distortion of `levels(c)`. A unit whose profile is 0 everywhere
(E[u, last] = 0) keeps an all-zero curve.

- Starts: first the plain dp's own scale (c_u = E[u, last] / max_v E[v, last], so that the dp's
  answer is among the candidates and spdy never ends worse than it), then `starts - 1` coefficient
  vectors drawn from U[0, 1]^units; their allocations are asked in batches. SPDY itself starts from
  random coefficients only; on synthetic problems that lost to the plain dp on 3 seeds in 5.
- Local search from the best start: resample a random `resample` share of the coefficients (at
  least one) from U[0, 1], keep the new vector if its allocation is strictly better; `steps` such
  steps. Each step depends on the last, so this phase asks one allocation at a time.
- Different coefficients often give the same allocation: a repeat is answered from memory (the
  fitness of every measured allocation is kept) and never asked again.

All randomness comes from one generator: a seed fixes the sequence. `state()` / `load_state()`
continue a search after every `tell`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.problem import Problem
from ..errors import ConfigError
from ..solvers.dp import dp_allocate_constrained
from .base import Resumable, Searcher


@dataclass(frozen=True)
class SPDYOptions:
    """Options of `SPDY` (see the module notes)."""

    starts: int = field(default=100, metadata={"help": "coefficient vectors measured first: the plain dp's "
                                                       "scale, then random ones"})
    steps: int = field(default=100, metadata={"help": "local search steps from the best start"})
    resample: float = field(default=0.1, metadata={"help": "share of the coefficients redrawn per local step "
                                                           "(at least one)"})

    def __post_init__(self) -> None:
        for name in ("starts", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}={value!r} must be a non-negative integer")
        if self.starts < 1:
            raise ConfigError(f"starts={self.starts} must be at least 1: local search begins from the best start")
        if not 0 < self.resample <= 1:
            raise ConfigError(f"resample={self.resample!r} must lie in (0, 1]: the share of coefficients "
                              "redrawn per local step")


def error_profiles(problem: Problem) -> np.ndarray:
    """Each unit's errors divided by its error at its deepest level; inf past its levels.  # (units, max_levels)"""
    errors, n_levels = problem.errors, problem.space.n_levels  # (units, max_levels), (units,)
    deepest = errors[np.arange(len(n_levels)), n_levels - 1]  # (units,)
    scale = np.where(deepest > 0, deepest, 1.0)
    valid = np.arange(errors.shape[1])[None, :] < n_levels[:, None]  # (units, max_levels)
    return np.where(valid, np.where(deepest[:, None] > 0, errors / scale[:, None], 0.0), np.inf)


def dp_scale(problem: Problem) -> np.ndarray:
    """The coefficients that give back the dp's own table: each unit's deepest error over the largest.  # (units,)"""
    n_levels = problem.space.n_levels
    deepest = problem.errors[np.arange(len(n_levels)), n_levels - 1]  # (units,)
    return deepest / deepest.max() if deepest.max() > 0 else np.ones_like(deepest)


def coefficient_levels(problem: Problem, profiles: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """The dp's allocation for the table `coefficients[u] * profiles[u, k]`: DP on the primary limit,
    Lagrangian prices on any other (the MILP `dp_solve` adds under several limits is too slow to run
    hundreds of times).  # (units,)"""
    valid = np.isfinite(profiles)  # (units, max_levels)
    table = np.where(valid, coefficients[:, None] * np.where(valid, profiles, 0.0), np.inf)  # (units, max_levels)
    return dp_allocate_constrained(table, problem.costs.tables, problem.unit_limits, primary=problem.primary).levels


class SPDY(Searcher, Resumable):
    """Random starts, then local search, over per-unit dp coefficients; fitness measured."""

    name = "spdy"
    Options = SPDYOptions

    def __init__(self, problem: Problem, *, seed: int, **options) -> None:
        super().__init__(problem, seed=seed, **options)
        self.profiles = error_profiles(problem)  # (units, max_levels)
        self.measured: dict[bytes, float] = {}  # allocation -> its fitness
        self.starts_left, self.steps_left = self.options.starts, self.options.steps
        self.repeats = 0  # coefficient vectors answered from memory
        self.coefficients: np.ndarray | None = None  # (units,) of the best start, then of the local search
        self.current = np.inf  # their fitness
        self._open: list[tuple[np.ndarray, bytes]] = []  # (coefficients, allocation) asked, fitness not yet told

    @property
    def done(self) -> bool:
        return not self.starts_left and not self.steps_left and not self._open

    @property
    def at_boundary(self) -> bool:
        return not self._open

    def progress(self) -> tuple[int, int, dict]:
        planned = self.options.starts + self.options.steps
        return planned - self.starts_left - self.steps_left, planned, {"best": f"{self.best_fitness:.5g}",
                                                                       "evals": len(self.measured)}

    def summary(self) -> dict:
        return {"starts": self.options.starts - self.starts_left, "steps": self.options.steps - self.steps_left,
                "measured": len(self.measured), "repeats": self.repeats,
                "coefficients": None if self.coefficients is None else self.coefficients.tolist()}

    def ask(self, n: int) -> list[np.ndarray]:
        asked: dict[bytes, np.ndarray] = {}
        while len(asked) < n and not (self._open and not self.starts_left):  # local steps wait for their fitness
            if self.starts_left == self.options.starts:  # the first start: the plain dp's scale
                self.starts_left -= 1
                coefficients = dp_scale(self.problem)
            elif self.starts_left:
                self.starts_left -= 1
                coefficients = self.rng.uniform(0.0, 1.0, self.problem.space.n_units)  # (units,)
            elif self.steps_left:
                self.steps_left -= 1
                coefficients = self._neighbour()
            else:
                break
            levels = np.asarray(coefficient_levels(self.problem, self.profiles, coefficients), dtype=np.int64)
            key = levels.tobytes()
            self._open.append((coefficients, key))
            if key in self.measured:  # a repeat: judged now, never asked again
                self.repeats += 1
                self._resolve()
            elif key in asked:
                self.repeats += 1
            else:
                asked[key] = levels
        return list(asked.values())

    def tell(self, allocations: list[np.ndarray], fitnesses: list[float]) -> None:
        super().tell(allocations, fitnesses)
        for levels, fitness in zip(allocations, fitnesses):
            self.measured[np.asarray(levels, dtype=np.int64).tobytes()] = float(fitness)
        self._resolve()

    def _resolve(self) -> None:
        """Judge, in order, every open coefficient vector whose allocation has a fitness: strictly better wins."""
        while self._open and self._open[0][1] in self.measured:
            coefficients, key = self._open.pop(0)
            if self.measured[key] < self.current:
                self.coefficients, self.current = coefficients, self.measured[key]

    def _neighbour(self) -> np.ndarray:
        """The current coefficients with a random `resample` share (at least one) redrawn.  # (units,)"""
        units = self.problem.space.n_units
        count = max(1, round(self.options.resample * units))
        chosen = self.rng.choice(units, size=count, replace=False)  # (count,)
        coefficients = self.coefficients.copy()
        coefficients[chosen] = self.rng.uniform(0.0, 1.0, count)
        return coefficients

    # -- checkpoints ----------------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue (JSON data plus `seen`, the measured allocations)."""
        if not self.at_boundary:
            raise RuntimeError("state() is taken between a tell and the next ask only")
        seen = np.array([np.frombuffer(k, dtype=np.int64) for k in self.measured], dtype=np.int64)
        return {"starts_left": self.starts_left, "steps_left": self.steps_left, "repeats": self.repeats,
                "coefficients": None if self.coefficients is None else self.coefficients.tolist(),
                "current": self.current, "fitnesses": list(self.measured.values()),
                "best": None if self.best_levels is None else self.best_levels.tolist(),
                "best_fitness": self.best_fitness, "rng": self.rng.bit_generator.state,
                "options": asdict(self.options), "seen": seen.reshape(-1, self.problem.space.n_units)}

    def load_state(self, state: dict) -> None:
        """Continue from `state()` taken on a problem with the same space as this one."""
        self.starts_left, self.steps_left = int(state["starts_left"]), int(state["steps_left"])
        self.repeats, self.current = int(state["repeats"]), float(state["current"])
        self.coefficients = None if state["coefficients"] is None else np.array(state["coefficients"])
        seen = np.asarray(state["seen"], dtype=np.int64)
        self.measured = {row.tobytes(): float(f) for row, f in zip(seen, state["fitnesses"])}
        self.best_levels = None if state["best"] is None else np.array(state["best"], dtype=np.int64)
        self.best_fitness = float(state["best_fitness"])
        self.rng.bit_generator.state = state["rng"]
        self._open = []
