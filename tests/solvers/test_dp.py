from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocsearch import BudgetError
from allocsearch.solvers.dp import dp_allocate, dp_allocate_constrained, dp_frontier


def random_instance(rng, units, levels, integer):
    errors = np.sort(rng.exponential(1, (units, levels)), axis=1)
    errors[:, 0] = 0
    costs = np.sort(rng.uniform(0, 20, (units, levels)), axis=1)[:, ::-1]
    if integer:
        costs = np.round(costs)
    return errors, costs


def brute_force(errors, costs, budget):
    """Least error over all allocations within the budget, or inf."""
    units = errors.shape[0]
    best = np.inf
    for levels in itertools.product(*[range(errors.shape[1])] * units):
        idx = np.array(levels)
        if costs[np.arange(units), idx].sum() <= budget:
            best = min(best, errors[np.arange(units), idx].sum())
    return best


def total(table, levels):
    return table[np.arange(len(levels)), levels].sum()


def test_exact_with_integer_costs():
    rng = np.random.default_rng(0)
    for _ in range(60):
        errors, costs = random_instance(rng, int(rng.integers(1, 5)), int(rng.integers(2, 5)), integer=True)
        budget = float(rng.integers(int(costs.min(1).sum()), int(costs.max(1).sum()) + 1))
        levels = dp_allocate(errors, costs, budget, resolution=10_000)
        assert total(costs, levels) <= budget
        assert total(errors, levels) == pytest.approx(brute_force(errors, costs, budget))


def test_float_costs_within_the_rounding_bound():
    """Rounding up loses less than one bucket per unit: the answer is at least as good as the best
    allocation of a budget `units` buckets smaller."""
    rng = np.random.default_rng(1)
    for _ in range(60):
        units = int(rng.integers(1, 5))
        errors, costs = random_instance(rng, units, int(rng.integers(2, 5)), integer=False)
        low, high = costs.min(1).sum(), costs.max(1).sum()
        budget = rng.uniform(low, high)
        resolution = 50
        levels = dp_allocate(errors, costs, budget, resolution=resolution)
        assert total(costs, levels) <= budget
        optimum = brute_force(errors, costs, budget)
        assert total(errors, levels) >= optimum - 1e-12
        step = (budget - low) / resolution
        assert total(errors, levels) <= brute_force(errors, costs, budget - units * step) + 1e-12


@settings(max_examples=2000, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), units=st.integers(1, 12), levels=st.integers(1, 9),
       share=st.floats(0, 1), resolution=st.integers(1, 300))
def test_never_exceeds_the_budget(seed, units, levels, share, resolution):
    rng = np.random.default_rng(seed)
    errors = rng.exponential(1, (units, levels))
    costs = rng.uniform(0, 1e3, (units, levels)) * rng.choice([1e-6, 1, 1e6])
    missing = rng.random((units, levels)) < 0.2  # padding, as units with fewer levels have
    missing[:, 0] = False
    errors[missing] = np.inf
    costs[missing] = np.inf
    low = np.where(missing, np.inf, costs).min(1).sum()
    high = np.where(missing, -np.inf, costs).max(1).sum()
    budget = low + share * (high - low)
    chosen = dp_allocate(errors, costs, budget, resolution=resolution)
    assert np.isfinite(total(costs, chosen)) and total(costs, chosen) <= budget


def test_frontier_agrees_with_dp_allocate_at_every_budget():
    rng = np.random.default_rng(2)
    errors, costs = random_instance(rng, 6, 5, integer=True)
    frontier = dp_frontier(errors, costs, resolution=10_000)
    low, high = int(costs.min(1).sum()), int(costs.max(1).sum())
    assert len(frontier.budgets) == high - low + 1  # one bucket per cost unit: exact
    for budget in range(low, high + 1):
        b = frontier.at(budget)
        levels = dp_allocate(errors, costs, budget)
        assert frontier.errors[b] == pytest.approx(total(errors, levels))
        assert total(errors, frontier.allocations[b]) == pytest.approx(frontier.errors[b])
        assert frontier.costs[b] <= budget
    assert (np.diff(frontier.errors) <= 1e-12).all()


def test_frontier_allocations_equal_dp_allocate_on_the_same_buckets():
    rng = np.random.default_rng(3)
    errors, costs = random_instance(rng, 8, 6, integer=False)
    low = costs.min(1).sum()
    frontier = dp_frontier(errors, costs, resolution=200)
    for j in (1, 17, 100, 199, 200):  # dp_allocate at bucket j's budget with j buckets: the same grid
        budget = frontier.budgets[j] if j < len(frontier.budgets) else frontier.budgets[-1]
        levels = dp_allocate(errors, costs, budget, resolution=j)
        assert total(errors, levels) == pytest.approx(frontier.errors[j])
        assert budget == pytest.approx(low + j * (costs.max(1).sum() - low) / 200)


def test_infeasible_budget_states_the_smallest_reachable_cost():
    errors, costs = np.zeros((2, 2)), np.array([[4.0, 1.0], [4.0, 2.0]])
    with pytest.raises(BudgetError, match="below the smallest reachable cost 3"):
        dp_allocate(errors, costs, 2.5)


def test_several_constraints_meet_every_limit_and_bound_the_gap():
    rng = np.random.default_rng(4)
    checked = 0
    for _ in range(40):
        units, levels = 4, 4
        errors, flops = random_instance(rng, units, levels, integer=True)
        memory = np.sort(rng.uniform(0, 20, (units, levels)), axis=1)[:, ::-1]
        limits = {"flops": float(np.round(flops.sum(1).mean() * 0.5 * units / levels + flops.min(1).sum())),
                  "bytes": float(memory.min(1).sum() + rng.uniform(0.2, 0.6) * (memory.max(1).sum() - memory.min(1).sum()))}
        try:
            solution = dp_allocate_constrained(errors, {"flops": flops, "bytes": memory}, limits)
        except BudgetError:
            continue
        assert total(flops, solution.levels) <= limits["flops"] and total(memory, solution.levels) <= limits["bytes"]
        best = np.inf
        for combo in itertools.product(range(levels), repeat=units):
            c = np.array(combo)
            if total(flops, c) <= limits["flops"] and total(memory, c) <= limits["bytes"]:
                best = min(best, total(errors, c))
        found = total(errors, solution.levels)
        assert best - 1e-9 <= found <= best + solution.gap + 1e-6
        checked += 1
    assert checked >= 20
