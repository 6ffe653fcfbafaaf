from __future__ import annotations

import json

import numpy as np
import pytest

from allocsearch import ConfigError, Problem
from allocsearch.searchers import SPDY, SPDYOptions
from allocsearch.searchers.spdy import coefficient_levels, error_profiles
from allocsearch.solvers.dp import dp_solve
from allocsearch.solvers.repair import predicted_error
from allocsearch.solvers.shaped import uniform_levels

from ..tiny import synthetic_problem


def bumpy(problem):
    """A fitness the dp does not know: the summed errors times a wave in the total removed fraction."""
    return lambda c: float(predicted_error(problem.errors, c) * (1 + 0.3 * np.sin(problem.space.fractions(c).sum())))


def test_profiles_are_normalised_to_the_deepest_level():
    problem = synthetic_problem(2, n_units=8)
    profiles, n_levels = error_profiles(problem), problem.space.n_levels
    for u, n in enumerate(n_levels):
        assert profiles[u, n - 1] == pytest.approx(1.0)
        assert np.isinf(profiles[u, n:]).all() and np.all(np.diff(profiles[u, :n]) >= 0)


@pytest.mark.parametrize("seed", range(4))
def test_constant_coefficients_give_the_plain_dp_on_the_normalised_table(seed):
    problem = synthetic_problem(seed, n_units=8)
    profiles = error_profiles(problem)
    plain = dp_solve(Problem(problem.space, problem.costs, problem.limits, errors=profiles)).levels
    for c in (0.3, 1.0):
        levels = coefficient_levels(problem, profiles, np.full(problem.space.n_units, c))
        assert levels.tolist() == plain.tolist() and problem.feasible(levels)


def test_every_allocation_meets_two_limits():
    base = synthetic_problem(6, n_units=8)
    bytes_limit = base.costs.total(uniform_levels(base))["bytes"]
    problem = Problem(base.space, base.costs, {**base.limits, "bytes": bytes_limit}, errors=base.errors)
    searcher = SPDY(problem, seed=0, starts=6, steps=6)
    while not searcher.done:
        batch = searcher.ask(4)
        assert all(problem.feasible(c) for c in batch)
        searcher.tell(batch, [bumpy(problem)(c) for c in batch])
    assert searcher.best_levels is not None


def test_local_search_keeps_only_improvements_and_never_remeasures():
    problem = synthetic_problem(5, n_units=12)
    fitness = bumpy(problem)
    searcher = SPDY(problem, seed=3, starts=10, steps=40)
    asked, accepted = [], 0
    while not searcher.done:
        before, current, local = searcher.coefficients, searcher.current, searcher.starts_left == 0
        batch = searcher.ask(4)
        if not batch:
            break
        searcher.tell(batch, [fitness(c) for c in batch])
        asked += [c.tobytes() for c in batch]
        assert searcher.current <= current  # never worse
        if local:
            assert len(batch) == 1  # each step waits for the last one's fitness
        if local and fitness(batch[0]) >= current:
            assert searcher.coefficients is before  # a step that is not strictly better is dropped
        elif local:
            changed = np.flatnonzero(searcher.coefficients != before)
            assert len(changed) == 1 and searcher.current == fitness(batch[0])  # 10% of 12 units: one redrawn
            accepted += 1
    assert accepted >= 1 and searcher.current == searcher.best_fitness
    assert len(set(asked)) == len(asked)  # a repeated allocation is answered from memory
    summary = searcher.summary()
    assert summary["starts"] == 10 and summary["steps"] == 40
    assert summary["measured"] + summary["repeats"] == 50 and summary["measured"] == len(asked)


def test_resumes_from_its_state_exactly():
    problem = synthetic_problem(1, n_units=10)
    fitness = bumpy(problem)

    def run(searcher, limit=None):
        asked = []
        while not searcher.done and (limit is None or len(asked) < limit):
            batch = searcher.ask(3)
            if not batch:
                break
            searcher.tell(batch, [fitness(c) for c in batch])
            asked += [c.tolist() for c in batch]
        return asked

    whole = run(SPDY(problem, seed=0, starts=12, steps=20))
    first = SPDY(problem, seed=0, starts=12, steps=20)
    head = run(first, limit=15)
    state = first.state()
    plain = json.loads(json.dumps({k: v for k, v in state.items() if k != "seen"}))  # as a checkpoint keeps it
    resumed = SPDY(problem, seed=0, starts=12, steps=20)
    resumed.load_state({**plain, "seen": state["seen"]})
    assert head + run(resumed) == whole and resumed.best_fitness == min(fitness(np.array(c)) for c in whole)


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"resample=0 must lie in \(0, 1\]"):
        SPDYOptions(resample=0)
    with pytest.raises(ConfigError, match="starts=0 must be at least 1"):
        SPDYOptions(starts=0)
    with pytest.raises(ConfigError, match="steps=-1 must be a non-negative integer"):
        SPDYOptions(steps=-1)


@pytest.mark.parametrize("seed", range(5))
def test_the_first_start_is_the_plain_dp_so_spdy_never_ends_worse(seed):
    problem = synthetic_problem(seed, n_units=16)
    fitness = bumpy(problem)
    plain = dp_solve(problem).levels
    searcher = SPDY(problem, seed=seed, starts=20, steps=20)
    first = searcher.ask(1)
    assert first[0].tolist() == plain.tolist()
    searcher.tell(first, [fitness(first[0])])
    while not searcher.done:
        batch = searcher.ask(4)
        searcher.tell(batch, [fitness(c) for c in batch])
    assert searcher.best_fitness <= fitness(plain)
