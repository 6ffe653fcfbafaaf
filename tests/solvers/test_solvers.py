"""admm, owl and repair on synthetic problems (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from allocsearch import CostModel, Problem, SearchSpace, Unit
from allocsearch.searchers import OWL
from allocsearch.solvers.price import (
    admm_allocation,
    price_allocation,
    price_levels,
    softmax_allocation,
)
from allocsearch.solvers.repair import fill, predicted_error, repair
from allocsearch.solvers.shaped import uniform_levels

from ..tiny import synthetic_problem


def identical_units(n_units=6, sensitivity=None, budget=0.5) -> Problem:
    """Units alike in cost (17 levels of 16 channels); errors grow with the level at per-unit rates."""
    units = tuple(Unit(name=f"u{u}", kind="channels", block=u, groups=16, counts=tuple(range(17)))
                  for u in range(n_units))
    fractions = np.arange(17) / 16
    table = np.tile(100 * (1 - fractions), (n_units, 1))
    costs = CostModel({"flops": table, "params": table.copy(), "bytes": 4 * table}, {"flops": 0.0, "params": 0.0,
                      "bytes": 0.0}, 1, 4)
    rates = np.ones(n_units) if sensitivity is None else np.asarray(sensitivity, dtype=float)
    errors = rates[:, None] * fractions[None, :] ** 2
    space = SearchSpace("synthetic", "causal_lm", "structured", units, {})
    return Problem(space, costs, {"flops": budget * 100 * n_units}, errors=errors,
                   signals={"outlier_ratios": np.linspace(0.01, 0.06, n_units)})


def test_price_allocation_is_optimal_on_convex_curves():
    problem = identical_units(sensitivity=[1, 2, 4, 8, 16, 32])
    levels = price_allocation(problem, problem.errors)
    assert problem.feasible(levels)
    fractions = problem.space.fractions(levels)
    assert (np.diff(fractions) <= 0).all()  # more sensitive units are pruned less
    # nothing better exists one move away (convex, separable: local optimality is global)
    for a in range(6):
        for b in range(6):
            moved = levels.copy()
            moved[a] -= 1
            moved[b] += 1
            if a != b and moved.min() >= 0 and moved.max() <= 16 and problem.feasible(moved):
                assert predicted_error(problem.errors, moved) >= predicted_error(problem.errors, levels) - 1e-12


def test_price_levels_trade_error_for_cost():
    problem = identical_units()
    assert (price_levels(problem, problem.errors, 0.0) == 0).all()  # free cost: keep everything
    assert (price_levels(problem, problem.errors, 1e9) == 16).all()  # dear cost: remove everything


def test_softmax_is_uniform_at_high_temperature_and_sharp_at_low():
    problem = identical_units(sensitivity=[1, 2, 4, 8, 16, 32])
    hot = softmax_allocation(problem, problem.errors, 1e6)
    assert np.ptp(problem.space.fractions(hot)) <= 1 / 16 + 1e-9  # uniform up to one grid step (fill)
    cold = softmax_allocation(problem, problem.errors, 0.05)
    assert np.ptp(problem.space.fractions(cold)) > 0.3
    assert problem.feasible(hot) and problem.feasible(cold)


def test_admm_meets_several_limits():
    problem = synthetic_problem(7)
    limits = {"flops": problem.limits["flops"], "bytes": 0.7 * problem.costs.dense["bytes"]}
    priced = Problem(problem.space, problem.costs, limits, errors=problem.errors)
    levels = admm_allocation(priced, priced.errors)
    assert priced.feasible(levels)


def test_repair_and_fill():
    problem = identical_units(sensitivity=[1, 1, 1, 1, 1, 10])
    levels = repair(problem, np.zeros(6, dtype=int), problem.errors)
    assert problem.feasible(levels) and levels[5] < levels[0]  # the sensitive unit is spared
    emptied = np.full(6, 16)
    filled = fill(problem, emptied, problem.errors)
    assert problem.feasible(filled)
    for u in range(6):  # no unit can take back a level within the budget
        more = filled.copy()
        more[u] -= 1
        assert filled[u] == 0 or not problem.feasible(more)


def test_owl_prunes_blocks_with_more_outliers_less():
    problem = identical_units()
    levels = OWL(problem, seed=0).ask(1)[0]
    fractions = problem.space.fractions(levels)
    assert problem.feasible(levels)
    assert fractions[0] > fractions[-1]  # block 0 has the fewest outliers
    assert np.ptp(fractions) <= 2 * 0.08 + 2 / 16  # within target +- lambda, up to the grid and the fill
    uniform = uniform_levels(problem)
    assert np.ptp(problem.space.fractions(uniform)) <= 1 / 16 + 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_admm_searcher_refines_the_temperature(seed):
    from allocsearch.searchers import ADMM

    problem = synthetic_problem(seed)
    searcher = ADMM(problem, seed=0)
    first = searcher.ask(100)
    searcher.tell(first, [predicted_error(problem.errors, c) for c in first])
    second = searcher.ask(100)
    searcher.tell(second, [predicted_error(problem.errors, c) for c in second])
    assert searcher.done
    asked = {c.tobytes() for c in first + second}
    assert len(asked) == len(first) + len(second)  # nothing evaluated twice
