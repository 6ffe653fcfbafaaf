"""Dynamic programming over per-unit error tables: a multiple-choice knapsack.

Each unit u takes one level k, paying `costs[u, k]` and adding `errors[u, k]`; the total cost may
not exceed the budget. Costs above each unit's cheapest level are bucketed, `resolution` buckets
spanning what the budget leaves above the cheapest allocation, and rounded UP, so a returned
allocation never exceeds the budget in its real cost. With integer costs and `resolution` at least
the budget, a bucket is one cost unit and the answer is exact.

    DP[u][b] = min_k DP[u-1][b - c(u, k)] + E[u, k]        (best error of units 0..u within b buckets)

One pass over the units gives the optimum for EVERY budget up to the largest: the frontier. The
choices `argmin_k` are kept as small integers, (units, buckets), for backtracking.

Several constraints: DP on one, a Lagrangian price on the others (their costs added to the errors,
scaled by prices found by bisection). The result meets every limit; it is optimal for the priced
problem, and its distance to the true optimum is at most `gap = sum_i price_i * slack_i`, the prices
times the unused part of each priced limit (zero when a priced limit is met exactly or its price is 0).
`dp_solve` therefore also solves the exact MILP (`milp.py`) under several limits and keeps the better.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from ..core.problem import Problem
from ..errors import BudgetError, ConfigError
from .bisection import smallest_feasible
from .milp import milp_allocate

log = logging.getLogger(__name__)


def _validate(errors: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    errors, costs = np.asarray(errors, dtype=np.float64), np.asarray(costs, dtype=np.float64)
    if errors.ndim != 2 or errors.shape != costs.shape:
        raise BudgetError(f"errors {errors.shape} and costs {costs.shape} must both be (units, levels)")
    valid = np.isfinite(costs) & np.isfinite(errors)
    if not valid.any(axis=1).all():
        raise BudgetError("every unit needs at least one level with a finite error and cost")
    if np.isnan(errors).any():
        raise BudgetError("errors contain NaN; fix the error table")
    return errors, np.where(valid, costs, np.inf)


@dataclass(frozen=True)
class Frontier:
    """The best error for every budget bucket, and the allocation behind it.

    `budgets[b]` is the real-cost limit of bucket b; `errors[b]` the least summed error of an
    allocation whose real cost is at most `budgets[b]`; `allocations[b]` that allocation.
    """

    budgets: np.ndarray  # (buckets,)
    errors: np.ndarray  # (buckets,), non-increasing
    allocations: np.ndarray  # (buckets, units), level indices
    costs: np.ndarray  # (buckets,), real cost of each allocation

    def at(self, budget: float) -> int:
        """Index of the largest bucket within `budget`, or -1."""
        return int(np.searchsorted(self.budgets, budget * (1 + 1e-12), side="right")) - 1


def _buckets(costs: np.ndarray, top: float, resolution: int) -> tuple[np.ndarray, float, float, int]:
    """Bucketed costs above each unit's cheapest level, rounded up.  # (units, levels) int64"""
    floor = costs.min(axis=1)  # (units,)
    base = float(floor.sum())
    extra = costs - floor[:, None]
    room = top - base
    integer = np.all((costs[np.isfinite(costs)] % 1) == 0) and float(top).is_integer()
    if room <= 0:
        step, n = 1.0, 0  # only every unit's cheapest level fits
    elif integer and room <= resolution:
        step, n = 1.0, int(room)  # exact: one bucket per cost unit
    else:
        step, n = room / resolution, resolution
    with np.errstate(invalid="ignore"):
        scaled = np.where(np.isfinite(extra), np.minimum(np.ceil(extra / step), 2.0**62), 2.0**62)  # 2**62: never fits
    return scaled.astype(np.int64), base, step, n


def _forward(errors: np.ndarray, bucketed: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The DP table's last row and the argmin choices.  # (n+1,), (units, n+1) small ints"""
    units, levels = errors.shape
    choice = np.zeros((units, n + 1), dtype=np.uint8 if levels <= 256 else np.uint16)
    best = np.zeros(n + 1)  # with no unit placed, every budget costs nothing
    for u in range(units):
        row = np.full(n + 1, np.inf)
        for k in range(levels):
            c = bucketed[u, k]
            if c > n:
                continue
            candidate = best[: n + 1 - c] + errors[u, k]  # budget b takes level k from DP[u-1][b - c]
            target = row[c:]
            better = candidate < target
            target[better] = candidate[better]
            choice[u, c:][better] = k
        best = row
    return best, choice


def _backtrack(choice: np.ndarray, bucketed: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Allocations ending at each bucket in `ends`, all at once.  # (len(ends), units)"""
    units = choice.shape[0]
    b = ends.astype(np.int64).copy()
    out = np.zeros((len(ends), units), dtype=np.int64)
    for u in range(units - 1, -1, -1):
        k = choice[u, b].astype(np.int64)
        out[:, u] = k
        b -= bucketed[u, k]
    return out


def dp_frontier(errors: np.ndarray, costs: np.ndarray, *, resolution: int = 10_000,
                max_budget: float | None = None) -> Frontier:
    """The whole budget frontier from one pass.

    Args:
        errors: (units, levels) error of each unit at each level; inf (or inf cost) marks a missing level.
        costs: (units, levels) cost in any unit.
        resolution: buckets between the cheapest allocation and `max_budget`.
        max_budget: the largest budget of interest; None: the dense cost (every unit at its dearest level).

    Example:
        >>> frontier = dp_frontier(np.array([[0, 1, 5], [0, 2, 3]]), np.array([[4, 2, 0], [4, 2, 0]]))
        >>> frontier.allocations[frontier.at(5)].tolist(), float(frontier.errors[frontier.at(5)])
        ([1, 1], 3.0)
    """
    errors, costs = _validate(errors, costs)
    top = float(np.where(np.isfinite(costs), costs, -np.inf).max(axis=1).sum()) if max_budget is None else max_budget
    if top < costs.min(axis=1).sum():
        raise BudgetError(f"max_budget {top:.6g} is below the smallest reachable cost {costs.min(axis=1).sum():.6g}")
    bucketed, base, step, n = _buckets(costs, top, resolution)
    best, choice = _forward(errors, bucketed, n)
    reachable = np.flatnonzero(np.isfinite(best))
    allocations = _backtrack(choice, bucketed, reachable)
    real = costs[np.arange(costs.shape[0]), allocations].sum(axis=1)
    budgets = base + reachable * step
    return Frontier(budgets=np.minimum(budgets, top), errors=best[reachable], allocations=allocations, costs=real)


def dp_allocate(errors: np.ndarray, costs: np.ndarray, budget: float, *, resolution: int = 10_000) -> np.ndarray:
    """One level index per unit minimising the summed error with summed cost <= budget.

    Raises `BudgetError` stating the smallest reachable cost when no allocation fits.

    Example:
        >>> dp_allocate(np.array([[0, 1, 5], [0, 2, 3]]), np.array([[4, 2, 0], [4, 2, 0]]), 5).tolist()
        [1, 1]
    """
    errors, costs = _validate(errors, costs)
    smallest = float(costs.min(axis=1).sum())
    if budget < smallest:
        raise BudgetError(f"budget {budget:.6g} is below the smallest reachable cost {smallest:.6g}; "
                          "raise the budget or allow deeper levels")
    bucketed, _, _, n = _buckets(costs, float(budget), resolution)
    _, choice = _forward(errors, bucketed, n)
    # Rounding up keeps bucket n within the budget; floating-point residue could still tip a sum over
    # by an ulp, so the first of the top buckets whose real cost fits is taken.
    ends = np.arange(n, max(-1, n - 64), -1)
    allocations = _backtrack(choice, bucketed, ends)
    real = costs[np.arange(costs.shape[0]), allocations].sum(axis=1)
    return allocations[int(np.argmax(real <= budget))]


@dataclass(frozen=True)
class PricedSolution:
    """A DP allocation under several limits: the prices used and the bound on its optimality gap.

    From `dp_solve` under several limits, also both answers' summed errors: `lagrangian_objective`
    of the priced DP's, `exact_objective` of the MILP's (None where not solved); `levels` is the MILP's
    when it is lower, and `method` says which ("lagrangian" or "milp").
    """

    levels: np.ndarray
    prices: dict[str, float]
    gap: float
    lagrangian_objective: float | None = None
    exact_objective: float | None = None
    method: str = "lagrangian"


def dp_allocate_constrained(errors: np.ndarray, costs: dict[str, np.ndarray], limits: dict[str, float], *,
                            primary: str | None = None, resolution: int = 10_000, rounds: int = 4,
                            iterations: int = 40) -> PricedSolution:
    """DP on the `primary` limit, Lagrangian prices (bisection) on the others.

    Each priced metric's costs are divided by its limit, so prices are dimensionless. Prices are
    bisected one metric at a time, `rounds` times over, to the smallest price meeting its limit.
    """
    primary = primary or next(iter(limits))
    others = [m for m in limits if m != primary]
    prices = {m: 0.0 for m in others}
    idx = np.arange(errors.shape[0])

    def solve(**changed: float) -> np.ndarray:
        at = {**prices, **changed}
        priced = errors + sum(at[m] * np.nan_to_num(costs[m] / limits[m], posinf=0.0) for m in others)
        return dp_allocate(priced, costs[primary], limits[primary], resolution=resolution)

    def meets(levels: np.ndarray, m: str) -> bool:
        return costs[m][idx, levels].sum() <= limits[m]

    levels = solve()
    for _ in range(rounds):
        if all(meets(levels, m) for m in others):
            break
        for m in others:
            if meets(levels, m):
                continue
            price = smallest_feasible(lambda p: meets(solve(**{m: p}), m), prices[m], max(1.0, 2 * prices[m]),
                                      iterations=iterations, grow=4, ceiling=1e12)
            if not meets(solve(**{m: price}), m):
                raise BudgetError(f"no allocation meets {m} <= {limits[m]:.6g} together with {primary}; "
                                  "raise one of the budgets")
            prices[m] = price
            levels = solve()
    if not all(meets(levels, m) for m in others):
        raise BudgetError(f"no allocation found within every limit ({', '.join(limits)}); raise a budget")
    gap = sum(prices[m] * (1 - costs[m][idx, levels].sum() / limits[m]) for m in others)
    return PricedSolution(levels, prices, float(gap))


def _shares(costs: dict[str, np.ndarray], limits: dict[str, float], levels: np.ndarray) -> str:
    """Each limit's use by an allocation, for the log: "flops 99.8%, params 87.0%"."""
    idx = np.arange(len(levels))
    return ", ".join(f"{m} {costs[m][idx, levels].sum() / limit:.1%}" for m, limit in limits.items())


def dp_solve(problem: Problem, *, resolution: int = 10_000, time_limit: float = 60.0) -> PricedSolution:
    """The DP allocation of a problem: its error table within its limits (the constant part of each
    cost, outside the units, comes off each limit).

    Under several limits, the exact MILP too (`milp_allocate`, up to `time_limit` seconds): both
    answers are logged at INFO and the MILP's levels returned when its summed error is lower (with
    `gap` then the error HiGHS left unproven). With one limit, the DP alone: it is exact up to its
    cost buckets.
    """
    limits = problem.unit_limits
    errors, tables, idx = problem.errors, problem.costs.tables, np.arange(problem.space.n_units)
    if len(limits) == 1:
        return dp_allocate_constrained(errors, tables, limits, primary=problem.primary, resolution=resolution)
    try:
        priced = dp_allocate_constrained(errors, tables, limits, primary=problem.primary, resolution=resolution)
    except BudgetError as error:  # the prices found no allocation; the MILP settles whether one exists
        log.info("Lagrangian dp: %s; solving the MILP alone", error)
        exact = milp_allocate(errors, tables, limits, time_limit=time_limit)
        return PricedSolution(exact.levels, {}, exact.gap * abs(exact.objective), None, exact.objective, "milp")
    lagrangian = float(errors[idx, priced.levels].sum())
    priced = replace(priced, lagrangian_objective=lagrangian)
    try:
        exact = milp_allocate(errors, tables, limits, time_limit=time_limit)
    except ConfigError as error:  # HiGHS ran out of time before finding any allocation
        log.warning("MILP: %s; keeping the Lagrangian dp's allocation", error)
        return priced
    lower = (lagrangian - exact.objective) / abs(exact.objective) if exact.objective else float(lagrangian > 0)
    log.info("Lagrangian dp: error %.6g (%s; price bound %.3g). Exact MILP: error %.6g (%s; HiGHS %s, gap %.2g, "
             "%.2f s). The Lagrangian's error is %.2f%% above the MILP's.", lagrangian,
             _shares(tables, limits, priced.levels), priced.gap, exact.objective, _shares(tables, limits, exact.levels),
             exact.status, exact.gap, exact.seconds, 100 * lower)
    priced = replace(priced, exact_objective=exact.objective)
    if exact.objective < lagrangian:
        return replace(priced, levels=exact.levels, gap=exact.gap * abs(exact.objective), method="milp")
    return priced
