"""Budget queries over what is known: the DP frontier and every allocation a search measured.

The Planner holds, per cost metric, the DP frontier over the error table (the best predicted
allocation for every budget bucket, from one pass) and every evaluated allocation with its measured
fitness. `query(flops=0.55)` answers from arrays in memory, in well under a millisecond: the best
known allocation within the budget, ranked by measured fitness where it was measured and by the
additive model's prediction where not. The prediction is put on the measured scale first: it is
multiplied by the median ratio of measured fitness to prediction over the measured points (the DP
picks what the additive model likes best, so its raw predictions run optimistic). It is saved and
loaded as one `.npz` file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from .. import _io
from ..core.budget import KINDS, Budget
from ..core.cost import METRICS, CostModel
from ..core.problem import Problem, unit_limit
from ..core.result import Result
from ..core.space import SearchSpace
from ..errors import AllocSearchError, BudgetError, InputFileError, SpaceError
from ..searchers.optuna import default_storage, open_storage
from ..solvers.dp import dp_allocate_constrained, dp_frontier
from ..solvers.repair import predicted_error
from ..solvers.shaped import uniform_levels
from .config import RunConfig
from .paths import READ_ERRORS, damage
from .search import search
from .session import Session

FORMAT = 1


@dataclass(frozen=True)
class Plan:
    """A query's answer."""

    levels: np.ndarray  # (units,)
    allocation: dict[str, float]  # unit -> removed fraction
    cost: dict[str, float]  # flops, params, bytes and their ratios to dense
    predicted_error: float  # sum of the error table over units
    measured_fitness: float | None  # when a search evaluated exactly this allocation
    source: str  # "frontier" or "evaluated"


class Planner:
    """Instant budget queries for one model and search space.

    For example::

        planner = Planner.from_session(session)          # DP frontier from the error table
        planner.add_result(allocsearch.search("flops=0.5", method="admm", session=session))
        planner.query(flops=0.55).allocation
        planner.save("plan.npz"); Planner.load("plan.npz").query(memory="40MB")
    """

    def __init__(self, space: SearchSpace, costs: CostModel, errors: np.ndarray, *, config: dict | None = None,
                 resolution: int = 10_000, frontiers: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.space, self.costs, self.errors = space, costs, np.asarray(errors, dtype=np.float64)
        self.config, self.resolution = dict(config or {}), resolution
        self._idx = np.arange(space.n_units)
        small = np.uint8 if space.n_levels.max() <= 256 else np.uint16
        self._frontier: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # metric -> (errors, allocations)
        for m in METRICS:
            if frontiers is not None:
                self._frontier[m] = frontiers[m]
            else:
                f = dp_frontier(self.errors, costs.tables[m], resolution=resolution)
                self._frontier[m] = (f.errors, f.allocations.astype(small))
        self._totals = {m: self._total_costs(self._frontier[m][1]) for m in METRICS}  # metric -> (buckets, 3)
        # per metric, the least cost of its own frontier from each bucket on: non-decreasing, so the last
        # bucket within one limit is a binary search  # metric -> (buckets,)
        self._suffix_min = {m: np.minimum.accumulate(self._totals[m][::-1, i])[::-1] for i, m in enumerate(METRICS)}
        self._small = small
        self._points: list[tuple[np.ndarray, float, float]] = []  # (levels, fitness, fidelity)
        self._arrays: tuple[np.ndarray, ...] | None = None  # the points as arrays, made on demand
        self._measured: dict[bytes, float] = {}

    def _total_costs(self, allocations: np.ndarray) -> np.ndarray:
        """Whole-model cost of each allocation, per metric.  # (n, 3)"""
        allocations = allocations.astype(np.int64)
        return np.stack([self.costs.tables[m][self._idx, allocations].sum(axis=1) + self.costs.constant[m]
                         for m in METRICS], axis=1)

    @classmethod
    def from_session(cls, session, *, resolution: int = 10_000) -> Planner:
        """Frontiers from the session's error table (computed if not cached)."""
        return cls(session.space, session.costs, session.error_table(), config=asdict(session.config),
                   resolution=resolution)

    # -- what searches found -------------------------------------------------------------------------

    def add(self, levels: np.ndarray, fitness: float, fidelity: float = 1.0) -> None:
        """Record an evaluated allocation; only full-fidelity points count as measured."""
        levels = np.asarray(levels, dtype=np.int64)
        self.space.check(levels)
        self._points.append((levels, float(fitness), float(fidelity)))
        self._arrays = None
        if fidelity >= 1.0:
            key = levels.tobytes()
            self._measured[key] = min(fitness, self._measured.get(key, np.inf))

    def add_result(self, result: Result) -> int:
        """Record every candidate a search evaluated; returns how many.

        Points from refined grids (coarse-to-fine rounds) are kept where they lie on this planner's
        grid, matched by the removed groups of every unit, and skipped where they do not.
        """
        if result.space.get("base_id", result.space.get("id")) != self.space.id:
            raise SpaceError(f"the result was searched on space {result.space.get('base_id')}, this planner holds "
                             f"{self.space.id}; use a planner made for the same model and space")
        rounds = result.space.get("rounds") or [self.space.counts]
        added = 0
        for point in result.history:
            grid = rounds[point.get("round", 0)]
            removed = [grid[u][k] for u, k in enumerate(point["levels"])]
            levels = self.space.level_of_counts(removed)
            if levels is not None:
                self.add(levels, point["fitness"], point["fidelity"])
                added += 1
        return added

    def add_study(self, study: str, storage: str | None = None) -> int:
        """Record every trial of an Optuna study made by `search(method="optuna")`; returns how many."""
        loaded = optuna.load_study(study_name=study, storage=open_storage(storage or default_storage(study)))
        if loaded.user_attrs.get("space") != self.space.id:
            raise SpaceError(f"study {study!r} searched space {loaded.user_attrs.get('space')}, this planner holds "
                             f"{self.space.id}")
        added = 0
        for trial in loaded.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if trial.state == TrialState.COMPLETE:
                self.add(np.array(trial.user_attrs["levels"]), trial.values[0], 1.0)
            elif trial.intermediate_values:
                self.add(np.array(trial.user_attrs["levels"]), trial.intermediate_values[0], loaded.user_attrs["prune"])
            else:
                continue
            added += 1
        return added

    @property
    def n_points(self) -> int:
        return len(self._points)

    def _point_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """levels (n, units), fitness (n,), fidelity (n,), whole-model costs (n, 3), and the factor
        that puts predictions on the measured scale."""
        if self._arrays is None:
            levels = np.array([p[0] for p in self._points], dtype=np.int64).reshape(-1, self.space.n_units)
            fitness = np.array([p[1] for p in self._points])
            fidelity = np.array([p[2] for p in self._points])
            predicted = self.errors[self._idx, levels].sum(axis=1) if len(levels) else np.zeros(0)
            usable = (fidelity >= 1.0) & (predicted > 0)
            scale = float(np.median(fitness[usable] / predicted[usable])) if usable.any() else 1.0
            self._arrays = (levels, fitness, fidelity, self._total_costs(levels), scale)
        return self._arrays

    # -- queries ---------------------------------------------------------------------------------------

    def query(self, budget: Budget | str | None = None, **kinds) -> Plan:
        """The best known allocation within the budget (`flops=0.55`, `memory="40MB"`, ...)."""
        if budget is None:
            budget = Budget(**kinds)
        elif not isinstance(budget, Budget):
            budget = Budget.parse(budget)
        limits = budget.limits(self.costs)
        bound = np.array([limits.get(m, np.inf) for m in METRICS])
        primary = "flops" if "flops" in limits else next(iter(limits))
        errors, allocations = self._frontier[primary]
        levels_seen, fitness, fidelity, point_costs, scale = self._point_arrays()
        if len(limits) == 1:
            last = int(np.searchsorted(self._suffix_min[primary], limits[primary], side="right")) - 1
            fits = np.array([last]) if last >= 0 else np.zeros(0, dtype=int)
        else:
            fits = np.flatnonzero((self._totals[primary] <= bound).all(axis=1))
        if len(fits):
            b = fits[-1]  # errors do not increase with the bucket
            levels, predicted = allocations[b].astype(np.int64), errors[b]
        else:  # the frontier of one metric misses the others' limits: solve with prices
            unit_limits = {m: unit_limit(limit, self.costs.constant[m]) for m, limit in limits.items()}
            levels = dp_allocate_constrained(self.errors, self.costs.tables, unit_limits, primary=primary,
                                             resolution=self.resolution).levels
            predicted = predicted_error(self.errors, levels)
        candidates = [(self._measured.get(levels.tobytes(), scale * predicted), levels, "frontier")]
        measured = np.flatnonzero((fidelity >= 1.0) & (point_costs <= bound).all(axis=1))
        if len(measured):
            i = measured[np.argmin(fitness[measured])]
            candidates.append((fitness[i], levels_seen[i], "evaluated"))
        _, levels, source = min(candidates, key=lambda c: c[0])
        return self._plan(levels, source)

    def _plan(self, levels: np.ndarray, source: str) -> Plan:
        total, dense = self.costs.total(levels), self.costs.dense
        cost = {**total, **{f"{m}_ratio": total[m] / dense[m] for m in METRICS}}
        return Plan(levels=levels, allocation=self.space.allocation_dict(levels), cost=cost,
                    predicted_error=predicted_error(self.errors, levels),
                    measured_fitness=self._measured.get(levels.tobytes()), source=source)

    def frontier(self, metric: str = "flops") -> dict[str, np.ndarray]:
        """The frontier of one metric (`flops`, `params` or `memory`): cost, ratio to dense, predicted
        error, and measured fitness (NaN where not measured), one row per budget bucket."""
        metric = KINDS.get(metric, metric)
        if metric not in METRICS:
            raise BudgetError(f"metric={metric!r} must be one of {', '.join(KINDS)}")
        errors, allocations = self._frontier[metric]
        column = METRICS.index(metric)
        cost = self._totals[metric][:, column]
        measured = np.array([self._measured.get(a.astype(np.int64).tobytes(), np.nan) for a in allocations])
        return {"cost": cost, "ratio": cost / self.costs.dense[metric], "predicted_error": errors,
                "measured_fitness": measured}

    def points(self, metric: str = "flops") -> dict[str, np.ndarray]:
        """Every allocation measured at full fidelity: its cost, ratio to dense and fitness."""
        metric = KINDS.get(metric, metric)
        _, fitness, fidelity, costs, _ = self._point_arrays()
        full = fidelity >= 1.0
        cost = costs[full, METRICS.index(metric)]
        return {"cost": cost, "ratio": cost / self.costs.dense[metric], "measured_fitness": fitness[full]}

    def uniform_curve(self, metric: str = "flops", points: int = 40) -> dict[str, np.ndarray]:
        """Uniform allocations across the reachable budgets of one metric, for comparison."""
        metric = KINDS.get(metric, metric)
        low, high = self.costs.minimum[metric], self.costs.dense[metric]
        rows = []
        for limit in np.linspace(low, high, points):
            levels = uniform_levels(Problem(self.space, self.costs, {metric: float(limit)}))
            rows.append((self.costs.total(levels)[metric], predicted_error(self.errors, levels),
                         self._measured.get(levels.tobytes(), np.nan)))
        cost, predicted, measured = (np.array(c) for c in zip(*rows))
        return {"cost": cost, "ratio": cost / high, "predicted_error": predicted, "measured_fitness": measured}

    def refine(self, budget: Budget | str, method: str = "dp", *, seed: int | None = None, session=None,
               **search_options) -> Result:
        """Search from the best known allocation within `budget`; the result's evaluations are added.

        `session` defaults to one rebuilt from the configuration the planner was made with.
        """
        session = session or Session(RunConfig.from_dict(self.config))
        if session.space.id != self.space.id:
            raise SpaceError("the session's search space differs from the planner's; pass the matching session")
        result = search(budget, method=method, seed=seed, session=session, init=self.query(budget).levels,
                        **search_options)
        self.add_result(result)
        return result

    # -- one file ----------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write everything to one `.npz` file, atomically."""
        path = Path(path)
        meta = {"format": FORMAT, "space": self.space.to_json(), "constant": self.costs.constant,
                "seq_len": self.costs.seq_len, "dtype_bytes": self.costs.dtype_bytes, "config": self.config,
                "resolution": self.resolution}
        levels, fitness, fidelity, _, _ = self._point_arrays()
        arrays = {"errors": self.errors, "levels": levels.astype(self._small),
                  "fitness": fitness, "fidelity": fidelity}
        for m in METRICS:
            arrays[f"table_{m}"] = self.costs.tables[m]
            arrays[f"frontier_errors_{m}"], arrays[f"frontier_allocations_{m}"] = self._frontier[m]
        _io.write_npz(path, meta, arrays, compress=True)

    @classmethod
    def load(cls, path: str | Path) -> Planner:
        path = Path(path)
        if path.is_dir():
            raise InputFileError(f"planner={str(path)!r} is a directory; name the planner file (.npz) in it")
        if not path.is_file():
            raise InputFileError(f"planner={str(path)!r}: no such file; make one with Planner.save "
                                 "(on the command line: `allocsearch search ... --planner FILE`)")
        try:
            meta, arrays = _io.read_npz(path)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, not {FORMAT}")
            costs = CostModel({m: arrays[f"table_{m}"] for m in METRICS}, meta["constant"], meta["seq_len"],
                              meta["dtype_bytes"])
            frontiers = {m: (arrays[f"frontier_errors_{m}"], arrays[f"frontier_allocations_{m}"]) for m in METRICS}
            planner = cls(SearchSpace.from_json(meta["space"]), costs, arrays["errors"], config=meta["config"],
                          resolution=meta["resolution"], frontiers=frontiers)
            for levels, fitness, fidelity in zip(arrays["levels"], arrays["fitness"], arrays["fidelity"]):
                planner.add(levels, float(fitness), float(fidelity))
        except (*READ_ERRORS, AttributeError, AllocSearchError) as exc:
            raise InputFileError(f"planner={str(path)!r} cannot be read as a planner file ({damage(exc)}); make it "
                                 "again with `allocsearch search ... --planner FILE`, or name another file") from None
        return planner
