"""The contract every searcher keeps, and the uniform baseline."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocsearch import SEARCHERS, ConfigError, Problem
from allocsearch.searchers import get_searcher
from allocsearch.solvers.shaped import uniform_levels

from ..tiny import synthetic_problem

QUICK = {"evolution": {"generations": 8, "offspring": 16, "survivors": (4, 2, 1)},  # small runs for the contract
         "optuna": {"trials": 24, "batch": 6, "storage": ":memory:"},
         "spdy": {"starts": 8, "steps": 8}}


@pytest.mark.parametrize("method", sorted(SEARCHERS))
def test_contract_budget_valid_levels_determinism_picklable(method):
    """Every registered searcher (a new one is found here by its registration alone): asks at most
    `n`, only feasible allocations, the same sequence for the same seed however often `done` is
    read, and pickles."""
    for seed in range(5):
        problem = synthetic_problem(seed)
        runs = []
        for reads_of_done in (1, 3):
            searcher = get_searcher(method)(problem, seed=seed, **QUICK.get(method, {}))
            asked = []
            while not all([searcher.done for _ in range(reads_of_done)]):
                batch = searcher.ask(3)
                assert len(batch) <= 3
                if not batch:
                    break
                for levels in batch:
                    problem.space.check(levels)
                    assert problem.feasible(levels)
                searcher.tell(batch, [float(np.sum(b)) for b in batch])
                asked += [b.tolist() for b in batch]
            runs.append(asked)
            assert asked and searcher.best_levels is not None
            pickle.loads(pickle.dumps(searcher))
        assert runs[0] == runs[1]  # same seed, same sequence


def test_a_table_is_made_only_when_a_searcher_reads_it():
    made = []
    base = synthetic_problem(0)

    def errors():
        made.append(1)
        return base.errors

    for method, reads in (("uniform", False), ("random", False), ("dp", True)):
        problem = Problem(base.space, base.costs, base.limits, errors=errors, signals={"outlier_ratios": lambda: 1 / 0})
        made.clear()
        get_searcher(method)(problem, seed=0)
        assert bool(made) == reads, method


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
