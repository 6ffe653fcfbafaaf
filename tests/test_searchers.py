"""The contract every searcher keeps, and the uniform baseline."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocsearch import SEARCHERS, ConfigError, CostModel, SearchSpace, Unit
from allocsearch.searchers import Problem, get_searcher, uniform_levels


def synthetic_problem(seed: int, n_units: int = 6, budget: float = 0.5) -> Problem:
    """Units with random level counts and random decreasing costs; no model needed."""
    rng = np.random.default_rng(seed)
    units, width = [], 0
    for u in range(n_units):
        groups = int(rng.integers(2, 20))
        counts = tuple(sorted(set(rng.integers(1, groups + 1, size=int(rng.integers(1, 6))).tolist()) | {0}))
        units.append(Unit(name=f"u{u}", kind="channels", block=u, groups=groups, counts=counts))
        width = max(width, len(counts))
    tables = {}
    for metric in ("flops", "params", "bytes"):
        table = np.full((n_units, width), np.inf)
        for u, unit in enumerate(units):
            dense = rng.uniform(1, 100)
            table[u, : unit.n_levels] = dense * (1 - np.asarray(unit.counts) / unit.groups) * rng.uniform(0.5, 1)
            table[u, 0] = dense
        tables[metric] = table
    costs = CostModel(tables, {"flops": rng.uniform(0, 50), "params": 0.0, "bytes": 0.0}, 1, 4)
    space = SearchSpace("synthetic", "causal_lm", "structured", tuple(units), {})
    limit = costs.minimum["flops"] + budget * (costs.dense["flops"] - costs.minimum["flops"])
    errors = np.full((n_units, width), np.inf)
    for u, unit in enumerate(units):  # increasing with the level, 0 when dense
        errors[u, : unit.n_levels] = np.cumsum(np.r_[0, rng.exponential(1, unit.n_levels - 1)]) * rng.uniform(0.1, 3)
    return Problem(space, costs, {"flops": limit}, errors=errors, outlier_ratios=rng.uniform(0, 0.1, n_units))


QUICK = {"evolution": {"generations": 8, "offspring": 16, "survivors": (4, 2, 1)},  # small runs for the contract
         "optuna": {"trials": 24, "batch": 6, "storage": ":memory:"}}


@pytest.mark.parametrize("method", sorted(SEARCHERS))
def test_contract_budget_valid_levels_determinism_picklable(method):
    for seed in range(5):
        problem = synthetic_problem(seed)
        runs = []
        for _ in range(2):
            searcher = get_searcher(method)(problem, seed=seed, **QUICK.get(method, {}))
            asked = []
            while not searcher.done:
                batch = searcher.ask(8)
                if not batch:
                    break
                for levels in batch:
                    problem.space.check(levels)
                    assert problem.feasible(levels)
                searcher.tell(batch, [float(np.sum(b)) for b in batch])
                asked += [b.tolist() for b in batch]
            runs.append(asked)
            pickle.loads(pickle.dumps(searcher))
        assert runs[0] == runs[1]  # same seed, same sequence


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), budget=st.floats(0.0, 1.0))
def test_uniform_never_exceeds_the_budget_and_fills_it(seed, budget):
    problem = synthetic_problem(seed, budget=budget)
    levels = uniform_levels(problem)
    assert problem.feasible(levels)
    for u in np.flatnonzero(levels > 0):  # no unit can step back a level within the budget
        less = levels.copy()
        less[u] -= 1
        assert not problem.feasible(less)


def test_uniform_is_near_uniform_on_a_real_space(sessions):
    session = sessions("gpt2")
    limits = {"flops": 0.5 * session.costs.dense["flops"]}
    levels = uniform_levels(Problem(session.space, session.costs, limits))
    fractions = session.space.fractions(levels)
    assert fractions.max() - fractions.min() <= 0.25 + 1e-9  # one head (of 4) apart at most
    assert session.costs.total(levels)["flops"] <= limits["flops"]


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="method='annealing' is unknown; choose one of uniform"):
        get_searcher("annealing")
