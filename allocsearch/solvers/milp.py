"""Exact allocation under every limit at once: a 0-1 integer program solved by HiGHS.

One binary x[u, k] per unit u and valid level k (finite error and finite cost in every limited metric):

    minimise    sum_{u,k} E[u, k] x[u, k]
    subject to  sum_k x[u, k] = 1                          every unit takes one level
                sum_{u,k} C_m[u, k] / B_m x[u, k] <= 1     every limit m, as a share of its limit B_m
                x[u, k] in {0, 1}

Dividing each limit's row by its limit, and the objective by the largest error, keeps every
coefficient near 1 whatever the metric's unit (FLOPs run to 1e12); a limit near 0 (the tightest
budget where whole units can go) is divided by a millionth of the metric's largest cost instead.
HiGHS's branch and bound is deterministic (a fixed random seed, the same answer on every run) and
stops at a relative gap of `MIP_REL_GAP`. It accepts rows violated by up to its feasibility tolerance
(1e-6 of a limit), so the chosen levels are checked in real costs and, if one tips over, the row is
tightened by the excess and that tolerance, and the program solved again. Where HiGHS's presolve
fails on a program ("Solve error"), it is solved again without presolve.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array, vstack

from ..core.problem import Problem
from ..errors import BudgetError, ConfigError

MIP_REL_GAP = 1e-6
FEASIBILITY_TOLERANCE = 1e-6  # HiGHS's mip_feasibility_tolerance: how far over a row (a share) it accepts
_STATUS = {0: "optimal", 1: "time limit", 2: "infeasible", 3: "unbounded", 4: "failed"}


@dataclass(frozen=True)
class MilpSolution:
    """The MILP's allocation.

    `objective` is the summed error of `levels`; `status` HiGHS's verdict ("optimal", or "time limit"
    when it stopped with an allocation not proven best); `gap` the relative gap HiGHS reported between
    that allocation and its lower bound; `seconds` the wall time of every solve.
    """

    levels: np.ndarray  # (units,)
    objective: float
    status: str
    gap: float
    seconds: float


def _check_limits(costs: dict[str, np.ndarray], limits: dict[str, float], valid: np.ndarray) -> None:
    """Each limit alone must be reachable; raise BudgetError naming the first that is not."""
    for m, limit in limits.items():
        smallest = float(np.where(valid, costs[m], np.inf).min(axis=1).sum())
        if limit < smallest:
            raise BudgetError(f"budget {m} {limit:.6g} is below the smallest reachable cost {smallest:.6g}; "
                              "raise the budget or allow deeper levels")


def _solve(objective: np.ndarray, rows: csr_array, units: int, rhs: np.ndarray, time_limit: float):
    """One HiGHS call: unit rows `= 1` on top of `rows @ x <= rhs`.  # x: (variables,)"""
    lower = np.r_[np.ones(units), np.full(len(rhs), -np.inf)]
    upper = np.r_[np.ones(units), rhs]
    options = {"time_limit": time_limit, "disp": False, "mip_rel_gap": MIP_REL_GAP,
               "mip_abs_gap": 1e-12, "random_seed": 0}
    with warnings.catch_warnings():  # mip_abs_gap and random_seed go to HiGHS verbatim, with a warning
        warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
        result = milp(objective, integrality=np.ones(len(objective)), bounds=Bounds(0, 1),
                      constraints=LinearConstraint(rows, lower, upper), options=options)
        if result.status == 4:  # SciPy's HiGHS fails in presolve on some tiny programs (cf. scipy#24141)
            result = milp(objective, integrality=np.ones(len(objective)), bounds=Bounds(0, 1),
                          constraints=LinearConstraint(rows, lower, upper), options={**options, "presolve": False})
    return result


def milp_allocate(errors: np.ndarray, costs: dict[str, np.ndarray], limits: dict[str, float], *,
                  time_limit: float = 60.0) -> MilpSolution:
    """The allocation of least summed error meeting every limit, by HiGHS.

    Args:
        errors: (units, levels) error of each unit at each level; inf marks a missing level.
        costs: metric -> (units, levels) cost; inf marks a missing level. Only limited metrics are read.
        limits: metric -> the most the summed costs may reach.
        time_limit: seconds HiGHS may search; past it, the best allocation found so far.

    Raises BudgetError when no allocation meets every limit, ConfigError when `time_limit` passed
    before HiGHS found any.

    Example:
        >>> errors = np.array([[0, 1, 5], [0, 2, 3]])
        >>> flops, params = np.array([[4, 2, 0], [4, 2, 0]]), np.array([[4, 1, 0], [4, 3, 0]])
        >>> milp_allocate(errors, {"flops": flops, "params": params}, {"flops": 5, "params": 3}).levels.tolist()
        [1, 2]
    """
    if not time_limit > 0:
        raise ConfigError(f"time_limit={time_limit} must be positive seconds; pass e.g. time_limit=60")
    errors = np.asarray(errors, dtype=np.float64)  # (units, levels)
    tables = {m: np.asarray(costs[m], dtype=np.float64) for m in limits}  # metric -> (units, levels)
    valid = np.isfinite(errors) & np.all([np.isfinite(t) for t in tables.values()], axis=0)  # (units, levels)
    if not valid.any(axis=1).all():
        raise BudgetError("every unit needs at least one level with a finite error and cost")
    _check_limits(tables, limits, valid)
    units = errors.shape[0]
    unit, level = np.nonzero(valid)  # (variables,) each: the unit and level of x[j]
    scale = float(np.abs(errors[unit, level]).max()) or 1.0
    objective = errors[unit, level] / scale  # (variables,)
    one_per_unit = csr_array((np.ones(len(unit)), (unit, np.arange(len(unit)))), shape=(units, len(unit)))
    # (metrics, variables): each cost as a share of its limit, or of a millionth of its largest cost
    scales = [max(abs(limit), 1e-6 * float(np.abs(tables[m][unit, level]).max())) or 1.0 for m, limit in limits.items()]
    shares = np.stack([tables[m][unit, level] / s for m, s in zip(limits, scales)])
    rows = vstack([one_per_unit, csr_array(shares)]).tocsr()  # (units + metrics, variables)
    rhs = np.array([limit / s for limit, s in zip(limits.values(), scales)])  # (metrics,)
    start = time.perf_counter()
    for _ in range(5):
        result = _solve(objective, rows, units, rhs, time_limit)
        if result.x is None:
            break
        chosen = np.zeros(units, dtype=np.int64)
        picked = result.x > 0.5  # (variables,)
        chosen[unit[picked]] = level[picked]
        used = shares[:, picked].sum(axis=1)  # (metrics,), in shares of each limit
        real = np.array([tables[m][np.arange(units), chosen].sum() for m in limits])  # (metrics,)
        over = real > np.array(list(limits.values()))
        if not over.any():
            return MilpSolution(chosen, float(errors[np.arange(units), chosen].sum()), _STATUS[result.status],
                                float(result.mip_gap or 0.0), time.perf_counter() - start)
        rhs = np.where(over, rhs - np.maximum(used - rhs, 0.0) - FEASIBILITY_TOLERANCE, rhs)  # tipped over
    if result.status == 1 and result.x is None:
        raise ConfigError(f"time_limit={time_limit} s passed before HiGHS found an allocation; raise time_limit")
    if result.status in (0, 2):  # proven infeasible, or every answer tips over a limit in real cost
        wanted = ", ".join(f"{m} <= {limit:.6g}" for m, limit in limits.items())
        raise BudgetError(f"no allocation meets every limit together ({wanted}); raise one of the budgets")
    raise RuntimeError(f"HiGHS failed on the allocation program: {result.message}")


def milp_solve(problem: Problem, *, time_limit: float = 60.0) -> MilpSolution:
    """The exact allocation of a problem: its error table within every limit (the constant part of
    each cost, outside the units, comes off each limit)."""
    return milp_allocate(problem.errors, problem.costs.tables, problem.unit_limits, time_limit=time_limit)
