from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from allocsearch import BudgetError, ConfigError, CostModel, Problem, SearchSpace, Unit
from allocsearch.solvers import dp, milp
from allocsearch.solvers.dp import dp_allocate_constrained, dp_solve
from allocsearch.solvers.milp import milp_allocate, milp_solve

from ..tiny import synthetic_problem


def total(table, levels):
    return table[np.arange(len(levels)), levels].sum()


def grid_problem(seed: int, n_units: int = 12, n_levels: int = 9, flops: float = 0.5, params: float = 0.5) -> Problem:
    """Every unit on the same grid; FLOPs and params per unit in random ratios, so the limits pull apart."""
    rng = np.random.default_rng(seed)
    units = tuple(Unit(name=f"u{u}", kind="channels", block=u, groups=n_levels - 1, counts=tuple(range(n_levels)))
                  for u in range(n_units))
    kept = 1 - np.arange(n_levels) / (n_levels - 1)  # (levels,)
    size = rng.uniform(1, 100, n_units)  # (units,)
    tables = {"flops": (size * rng.uniform(0.5, 2, n_units))[:, None] * kept, "params": size[:, None] * kept}
    tables["bytes"] = 4 * tables["params"]
    costs = CostModel(tables, {"flops": 10.0, "params": 5.0, "bytes": 20.0}, 1, 4)
    steps = rng.exponential(1, (n_units, n_levels - 1)) * rng.uniform(0.1, 3, (n_units, 1))
    errors = np.cumsum(np.c_[np.zeros(n_units), steps], axis=1)  # (units, levels), 0 when dense
    limits = {"flops": flops * costs.dense["flops"], "params": params * costs.dense["params"]}
    return Problem(SearchSpace("synthetic", "causal_lm", "structured", units, {}), costs, limits, errors=errors)


def random_instance(rng, units, levels, integer):
    errors = np.sort(rng.exponential(1, (units, levels)), axis=1)
    errors[:, 0] = 0
    costs = np.sort(rng.uniform(0, 20, (units, levels)), axis=1)[:, ::-1]
    return errors, np.round(costs) if integer else costs


def brute_force(errors, costs, limits):
    """Least summed error over every allocation within every limit, and how many reach it."""
    units, levels = errors.shape
    found = []
    for combo in itertools.product(range(levels), repeat=units):
        c = np.array(combo)
        if all(total(costs[m], c) <= limit for m, limit in limits.items()):
            found.append(total(errors, c))
    if not found:
        return np.inf, 0
    best = min(found)
    return best, sum(e <= best + 1e-12 for e in found)


def test_single_limit_synthetic_problems_match_the_dp_within_its_rounding():
    for seed, budget in itertools.product(range(25), (0.2, 0.5, 0.8)):
        problem = synthetic_problem(seed, n_units=8, budget=budget)
        dp_levels, exact = dp_solve(problem).levels, milp_solve(problem)
        assert problem.feasible(exact.levels) and exact.status == "optimal"
        dp_objective = total(problem.errors, dp_levels)
        assert exact.objective <= dp_objective + 1e-9
        # The dp rounds each unit's cost up by less than one bucket: it does at least as well as the
        # exact optimum of a budget `units` buckets smaller.
        flops = problem.costs.tables["flops"]
        limit = problem.limits["flops"] - problem.costs.constant["flops"]
        slack = 8 * (limit - np.nanmin(np.where(np.isinf(flops), np.nan, flops), axis=1).sum()) / 10_000
        shrunk = milp_allocate(problem.errors, problem.costs.tables, {"flops": limit - slack})
        assert dp_objective <= shrunk.objective + 1e-9


def test_integer_costs_give_the_dps_objective_and_levels():
    rng = np.random.default_rng(0)
    unique = 0
    for _ in range(60):
        units, levels = int(rng.integers(1, 5)), int(rng.integers(2, 5))
        errors, costs = random_instance(rng, units, levels, integer=True)
        budget = float(rng.integers(int(costs.min(1).sum()), int(costs.max(1).sum()) + 1))
        dp_levels = dp.dp_allocate(errors, costs, budget)
        exact = milp_allocate(errors, {"flops": costs}, {"flops": budget})
        assert exact.objective == pytest.approx(total(errors, dp_levels), abs=1e-9)
        if brute_force(errors, {"flops": costs}, {"flops": budget})[1] == 1:
            assert exact.levels.tolist() == dp_levels.tolist()
            unique += 1
    assert unique >= 30


def test_two_limits_equal_brute_force():
    rng = np.random.default_rng(1)
    feasible = infeasible = 0
    for _ in range(80):
        units, levels = int(rng.integers(3, 5)), int(rng.integers(2, 5))
        errors, flops = random_instance(rng, units, levels, integer=False)
        params = rng.uniform(0, 20, (units, levels))  # unordered: cheap in flops is not cheap in params
        costs = {"flops": flops, "params": params}
        limits = {m: float(c.min(1).sum() + rng.uniform(0, 0.4) * (c.max(1).sum() - c.min(1).sum()))
                  for m, c in costs.items()}
        best, _ = brute_force(errors, costs, limits)
        if np.isinf(best):
            with pytest.raises(BudgetError, match="no allocation meets every limit together"):
                milp_allocate(errors, costs, limits)
            infeasible += 1
            continue
        exact = milp_allocate(errors, costs, limits)
        assert all(total(costs[m], exact.levels) <= limit for m, limit in limits.items())
        assert exact.objective == pytest.approx(best, abs=1e-9)
        feasible += 1
    assert feasible >= 40 and infeasible >= 1


def test_two_limits_meet_both_and_beat_the_lagrangian_dp():
    rng = np.random.default_rng(2)
    lower = 0
    for seed in range(10):
        problem = grid_problem(seed, flops=rng.uniform(0.3, 0.7), params=rng.uniform(0.3, 0.7))
        limits = {m: limit - problem.costs.constant[m] for m, limit in problem.limits.items()}
        priced = dp_allocate_constrained(problem.errors, problem.costs.tables, limits, primary="flops")
        exact = milp_solve(problem)
        assert problem.feasible(exact.levels)
        lagrangian = total(problem.errors, priced.levels)
        assert exact.objective <= lagrangian + 1e-9
        lower += exact.objective < lagrangian * (1 - 1e-3)
    assert lower >= 3  # the prices leave budget unused on the priced limit


def test_dp_solve_returns_the_milps_levels_when_lower_and_logs_both(caplog):
    problem = grid_problem(0, flops=0.6, params=0.4)
    with caplog.at_level(logging.INFO, logger="allocsearch.solvers.dp"):
        solution = dp_solve(problem)
    assert solution.method == "milp" and problem.feasible(solution.levels)
    assert solution.exact_objective < solution.lagrangian_objective
    assert total(problem.errors, solution.levels) == pytest.approx(solution.exact_objective)
    message = caplog.records[-1].getMessage()
    assert "Exact MILP: error" in message and "params" in message and "above the MILP's" in message
    tied = dp_solve(grid_problem(4))  # the prices happen to reach the optimum: the dp's answer stays
    assert tied.method == "lagrangian" and tied.exact_objective == pytest.approx(tied.lagrangian_objective)


def test_dp_solve_with_one_limit_never_calls_the_milp(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the MILP was called under one limit")

    monkeypatch.setattr(dp, "milp_allocate", fail)
    solution = dp_solve(synthetic_problem(0))
    assert solution.exact_objective is None and solution.method == "lagrangian"


def test_dp_solve_falls_back_to_the_milp_when_the_prices_find_nothing(monkeypatch):
    def fail(*args, **kwargs):
        raise BudgetError("no allocation meets params")

    monkeypatch.setattr(dp, "dp_allocate_constrained", fail)
    problem = grid_problem(3)
    solution = dp_solve(problem)
    assert solution.method == "milp" and problem.feasible(solution.levels)


def test_infeasible_budgets_name_the_limit():
    errors, costs = np.zeros((2, 2)), np.array([[4.0, 1.0], [4.0, 2.0]])
    with pytest.raises(BudgetError, match="budget flops 2.5 is below the smallest reachable cost 3"):
        milp_allocate(errors, {"flops": costs}, {"flops": 2.5})
    flops, params = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])  # each limit alone is reachable
    with pytest.raises(BudgetError, match=r"every limit together \(flops <= 0, params <= 0\); raise one"):
        milp_allocate(np.zeros((1, 2)), {"flops": flops, "params": params}, {"flops": 0.0, "params": 0.0})


def test_missing_levels_are_never_chosen_and_bad_time_limit_is_refused():
    errors = np.array([[0.0, 1.0, np.inf], [0.0, 5.0, 9.0]])
    costs = np.array([[4.0, 2.0, np.inf], [4.0, 2.0, 0.0]])
    exact = milp_allocate(errors, {"flops": costs}, {"flops": 2.0})
    assert exact.levels.tolist() == [1, 2]
    with pytest.raises(ConfigError, match="time_limit=0"):
        milp_allocate(errors, {"flops": costs}, {"flops": 2.0}, time_limit=0)


def test_same_problem_same_answer_on_a_large_grid():
    problem = grid_problem(5, n_units=64, n_levels=21)
    first, second = milp_solve(problem), milp_solve(problem)
    assert problem.feasible(first.levels) and first.status == "optimal"
    assert first.levels.tolist() == second.levels.tolist() and first.objective == second.objective


def test_an_answer_over_a_limit_by_the_tolerance_is_solved_again_tighter(monkeypatch):
    """Both units dense cost 6, 1e-7 of the limit over it: within HiGHS's tolerance, so it answers that first."""
    errors = np.array([[0.0, 1.0], [0.0, 1.0]])
    costs = np.array([[3.0, 1.0], [3.0, 1.0]])
    calls, real = [], milp.milp

    def recorded(c, **kwargs):
        calls.append(kwargs["constraints"].ub[-1])
        return real(c, **kwargs)

    monkeypatch.setattr(milp, "milp", recorded)
    exact = milp_allocate(errors, {"flops": costs}, {"flops": 6.0 * (1 - 1e-7)})
    assert exact.levels.tolist() in ([0, 1], [1, 0]) and exact.objective == 1.0
    assert len(calls) == 2 and calls[1] < 1 - 1e-6 < calls[0]  # the flops row tightened once
