"""Price, softmax and ADMM allocations from the error table, in closed form (after StructPrune).

What follows StructPrune and what is ours: StructPrune derives a closed-form, softmax-shaped
allocation from an ADMM decomposition of "minimise the summed layer losses subject to a global
budget"; its exact formula is not public in our sources. Everything below is our own derivation
from that problem statement:

- Price decomposition. Given a price mu, units are independent: each takes
  argmin_k E[u, k] + mu * C[u, k]. Bisecting mu meets the budget, exactly on the convex hull of
  each unit's (cost, error) curve; the budget the hull leaves is then filled greedily.
- Softmax form. With E linear in the removed fraction s_u (slope a_u, fitted through the origin on
  the unit's levels up to 0.75) the problem is a linear program; adding an entropy term
  T * KL(p || q) on the shares p_u of removed cost, with the prior q_u proportional to each unit's
  removable cost (uniform pruning), gives s_u ∝ exp(-e_u / T) with e_u = a_u / C_u the error per
  removed cost. The DESIGN note writes s_u ∝ exp(-E_u / T) / C_u, which is the same derivation
  with a flat prior over units; we keep the cost-proportional prior because it makes T -> inf the
  uniform allocation. Slopes are standardised, s is rescaled with clipping at each unit's top
  (water-filling) to meet the budget, snapped to the grid, repaired and filled. T is chosen by a
  1-D search on measured fitness: a log grid first, then the midpoints around the best.
- ADMM for several limits: copies z_m,u of each unit's cost per metric with z in the budget set;
  x-step per unit in closed form (enumerate its levels), z-step the projection onto
  {sum_u z_m,u <= B_m}, dual ascent on y; stopped on primal and dual residuals. The levels are
  discrete, so this is a heuristic (no convergence guarantee); its result is repaired and filled.
"""

from __future__ import annotations

import numpy as np

from ..core.problem import Problem
from .bisection import smallest_feasible
from .repair import fill, repair


def _priced_costs(problem: Problem) -> np.ndarray:
    """Each unit's cost per level as the sum over limited metrics of its share of the limit.  # (units, levels)"""
    return sum(np.where(np.isfinite(problem.costs.tables[m]), problem.costs.tables[m], np.inf) / limit
               for m, limit in problem.limits.items())


def price_levels(problem: Problem, errors: np.ndarray, mu: float) -> np.ndarray:
    """argmin_k E[u, k] + mu * C[u, k] per unit.  # (units,)"""
    return np.argmin(np.where(np.isfinite(errors), errors, np.inf) + mu * _priced_costs(problem), axis=1)


def price_allocation(problem: Problem, errors: np.ndarray) -> np.ndarray:
    """Bisect the price to the smallest that meets every limit, then repair and fill."""
    mu = smallest_feasible(lambda mu: problem.feasible(price_levels(problem, errors, mu)), 0.0, 1.0,
                           iterations=100, grow=4, ceiling=1e15)
    return fill(problem, repair(problem, price_levels(problem, errors, mu), errors), errors)


def error_slopes(problem: Problem, errors: np.ndarray) -> np.ndarray:
    """Error per removed share of each unit's removable cost (least squares through the origin).  # (units,)"""
    space, slopes = problem.space, []
    table = problem.costs.tables[problem.primary]
    for u, unit in enumerate(space.units):
        f = unit.fractions
        use = (f > 0) & (f <= 0.75) if ((f > 0) & (f <= 0.75)).any() else f > 0
        if not use.any():  # a unit with one level removes nothing: its slope is moot, but NaN would spread
            slopes.append(0.0)
            continue
        a = float((f[use] * errors[u, : unit.n_levels][use]).sum() / (f[use] ** 2).sum())
        removable = table[u, 0] - table[u, unit.n_levels - 1]
        slopes.append(a / max(removable / problem.limits[problem.primary], 1e-12))
    return np.array(slopes)


def softmax_allocation(problem: Problem, errors: np.ndarray, temperature: float) -> np.ndarray:
    """s_u ∝ exp(-e_u / T), water-filled to the budget, snapped, repaired and filled."""
    space = problem.space
    e = error_slopes(problem, errors)
    z = (e - e.mean()) / (e.std() or 1.0)
    weights = np.exp(-(z - z.min()) / temperature)  # (units,), largest for the least sensitive unit
    tops = np.array([u.fractions[-1] for u in space.units])

    def snapped(scale: float) -> np.ndarray:
        s = np.minimum(scale * weights, tops)
        return np.array([int(np.argmin(np.abs(u.fractions - t))) for u, t in zip(space.units, s)])

    scale = smallest_feasible(lambda scale: problem.feasible(snapped(scale)), 0.0, 1.0, iterations=60, grow=2,
                              ceiling=1e12)
    return fill(problem, repair(problem, snapped(scale), errors), errors)


def admm_allocation(problem: Problem, errors: np.ndarray, *, rho: float = 1.0, iterations: int = 200,
                    tolerance: float = 1e-4) -> np.ndarray:
    """ADMM over per-metric cost copies (see the module notes); repaired and filled."""
    metrics = list(problem.limits)
    units = problem.space.n_units
    valid = np.isfinite(errors) & np.all([np.isfinite(problem.costs.tables[m]) for m in metrics], axis=0)
    costs = {m: np.where(valid, problem.costs.tables[m], 0.0) / problem.limits[m] for m in metrics}  # shares
    budgets = {m: 1.0 - problem.costs.constant[m] / problem.limits[m] for m in metrics}
    scale = np.nanmax(np.where(valid, errors, np.nan)) or 1.0
    err = np.where(valid, errors / scale, np.inf)
    idx = np.arange(units)
    x = np.zeros(units, dtype=np.int64)
    z = {m: costs[m][idx, x] for m in metrics}
    y = {m: np.zeros(units) for m in metrics}
    for _ in range(iterations):
        objective = np.where(valid, 0.0, np.inf) + np.where(valid, err, 0.0)  # x-step: each unit alone
        for m in metrics:
            objective += y[m][:, None] * costs[m] + rho / 2 * (costs[m] - z[m][:, None]) ** 2
        x = np.argmin(objective, axis=1)
        primal = dual = 0.0
        for m in metrics:
            cx = costs[m][idx, x]
            v = cx + y[m] / rho
            excess = v.sum() - budgets[m]
            z_new = v - max(excess, 0.0) / units  # projection onto {sum z <= budget}
            dual += float(np.linalg.norm(rho * (z_new - z[m])))
            z[m] = z_new
            y[m] += rho * (cx - z[m])
            primal += float(np.linalg.norm(cx - z[m]))
        if primal < tolerance and dual < tolerance:
            break
    return fill(problem, repair(problem, x, errors), errors)
