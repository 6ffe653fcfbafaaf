"""Moving an allocation onto the budget, one level at a time, guided by the error table.

`repair` prunes more (raises levels) until every limit holds, each step taking the unit whose next
cheaper level adds the least error per unit of cost saved on the limits still broken (the next level
may cost the same: sparse storage only beats dense past some sparsity). `fill` then spends
what the budget leaves, each step lowering the level of the unit that removes the most error per
unit of cost added, while every limit still holds. Costs are measured as fractions of each limit.
"""

from __future__ import annotations

import numpy as np

from ..core.problem import Problem
from ..errors import BudgetError


def predicted_error(errors: np.ndarray, levels: np.ndarray) -> float:
    """The additive model's error of an allocation: sum over units of E[u, level_u]."""
    return float(errors[np.arange(len(levels)), levels].sum())


def _step_costs(problem: Problem, levels: np.ndarray, step: int, metrics: list[str]) -> np.ndarray:
    """Cost change of moving each unit one level by `step`, summed over metrics as shares of their limits.  # (units,)"""
    idx = np.arange(len(levels))
    target = np.clip(levels + step, 0, problem.space.n_levels - 1)
    change = np.zeros(len(levels))
    for m in metrics:
        table = problem.costs.tables[m]
        change += (table[idx, target] - table[idx, levels]) / problem.limits[m]
    return change


def repair(problem: Problem, levels: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """Raise levels until every limit holds (no-op for a feasible allocation)."""
    levels = np.array(levels, dtype=np.int64)
    idx, width = np.arange(len(levels)), problem.costs.tables["flops"].shape[1]
    while True:
        total = problem.costs.total(levels)
        broken = [m for m, limit in problem.limits.items() if total[m] > limit]
        if not broken:
            return levels
        shares = sum(problem.costs.tables[m] / problem.limits[m] for m in broken)  # (units, levels), inf past
        deeper = np.arange(width)[None, :] > levels[:, None]  # (units, levels)
        cheaper = deeper & (shares < shares[idx, levels][:, None])  # (units, levels)
        movable = cheaper.any(axis=1)  # (units,)
        if not movable.any():
            raise BudgetError(f"no allocation meets {', '.join(broken)}; raise the budget")
        target = np.argmax(cheaper, axis=1)  # (units,) each unit's next cheaper level
        saved = shares[idx, levels] - np.where(movable, shares[idx, target], 0.0)
        added = errors[idx, target] - errors[idx, levels]
        score = np.where(movable, added / np.where(movable, saved, 1), np.inf)
        u = int(np.argmin(score))
        levels[u] = target[u]


def fill(problem: Problem, levels: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """Lower levels while every limit holds, best error reduction per cost first."""
    levels = np.array(levels, dtype=np.int64)
    idx, metrics = np.arange(len(levels)), list(problem.limits)
    blocked = np.zeros(len(levels), dtype=bool)
    while True:
        added = _step_costs(problem, levels, -1, metrics)  # (units,)
        gain = errors[idx, levels] - errors[idx, np.maximum(levels - 1, 0)]
        candidates = (levels > 0) & ~blocked
        if not candidates.any():
            return levels
        score = np.where(candidates, gain / np.maximum(added, 1e-300), -np.inf)
        u = int(np.argmax(score))
        levels[u] -= 1
        if problem.feasible(levels):
            blocked[:] = False  # the budget moved: everyone may try again
        else:
            levels[u] += 1
            blocked[u] = True
