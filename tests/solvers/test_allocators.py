"""The shaped allocations (uniform, OWL) and the model-informed allocators ecoflap, flap, cfsp, dlp."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocsearch import ConfigError, CostModel, Problem, SearchSpace, Unit
from allocsearch.searchers import get_searcher
from allocsearch.solvers.cfsp import cfsp_keep, cfsp_levels
from allocsearch.solvers.dlp import dlp_keep, dlp_levels
from allocsearch.solvers.ecoflap import ecoflap_keep, ecoflap_levels
from allocsearch.solvers.flap import flap_counts, flap_levels
from allocsearch.solvers.shaped import (
    owl_offsets,
    shaped_levels,
    shifted,
    uniform_levels,
)

from ..tiny import synthetic_problem

ALLOCATORS = {"ecoflap": ecoflap_levels, "flap": flap_levels, "cfsp": cfsp_levels, "dlp": dlp_levels}

# (seed, budget) -> levels of uniform, OWL and OWL with lam = 0.3 on synthetic_problem(seed, 8, budget),
# as shaped_levels made them with additive offsets, before it took a target function
BEFORE = {
    (0, 0.2): ([0, 1, 1, 2, 4, 2, 0, 1], [1, 1, 2, 2, 3, 2, 1, 1], [0, 1, 3, 2, 2, 2, 1, 1]),
    (0, 0.8): ([0, 1, 0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 1, 0, 0]),
    (1, 0.2): ([2, 2, 2, 1, 2, 1, 5, 1], [2, 1, 2, 2, 1, 1, 3, 1], [2, 1, 1, 2, 2, 1, 3, 1]),
    (1, 0.8): ([0, 1, 1, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 1, 0, 0]),
    (2, 0.5): ([2, 2, 3, 1, 0, 0, 3, 1], [2, 2, 3, 1, 0, 0, 3, 1], [1, 0, 4, 0, 1, 0, 4, 1]),
    (2, 0.8): ([1, 1, 1, 1, 0, 0, 1, 0], [1, 0, 1, 1, 0, 0, 2, 0], [0, 0, 2, 1, 0, 0, 3, 0]),
    (3, 0.8): ([1, 0, 1, 0, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 1, 2, 0, 0, 0, 0]),
    (4, 0.2): ([1, 2, 2, 2, 2, 1, 4, 2], [0, 2, 2, 1, 3, 1, 4, 2], [0, 2, 2, 1, 3, 1, 4, 2]),
    (5, 0.2): ([0, 4, 1, 0, 0, 2, 1, 2], [0, 4, 1, 0, 0, 2, 1, 2], [2, 3, 1, 0, 1, 2, 2, 2]),
    (5, 0.8): ([0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0, 1]),
}


def alike_units(signals: dict, groups: int = 16, budget: float = 0.5, granularity: str = "structured") -> Problem:
    """Three blocks of one unit each, alike in cost (a group costs 10): only the signals differ."""
    units = tuple(Unit(name=f"u{u}", kind="channels", block=u, groups=groups, counts=tuple(range(groups + 1)))
                  for u in range(3))
    table = np.tile(10.0 * (groups - np.arange(groups + 1)), (3, 1))  # (units, levels)
    costs = CostModel({"flops": table, "params": table.copy(), "bytes": table.copy()},
                      {"flops": 0.0, "params": 0.0, "bytes": 0.0}, 1, 4)
    space = SearchSpace("synthetic", "causal_lm", granularity, units, {})
    return Problem(space, costs, {"flops": budget * 30 * groups}, signals=signals)


@pytest.mark.parametrize("key", sorted(BEFORE))
def test_uniform_and_owl_are_what_they_were_with_offsets(key):
    problem = synthetic_problem(key[0], n_units=8, budget=key[1])
    ratios = problem.signal("outlier_ratios")
    uniform, owl, wide = BEFORE[key]
    assert uniform_levels(problem).tolist() == uniform
    assert shaped_levels(problem, *shifted(owl_offsets(problem.space, ratios))).tolist() == owl
    assert shaped_levels(problem, *shifted(owl_offsets(problem.space, ratios, lam=0.3))).tolist() == wide


def test_ecoflap_shares_the_rest_by_score_and_redistributes_past_the_caps():
    # t = 0.5: s_max = 0.6, floors 40 each, rest 150 - 120 = 30 shared 1:2:3 -> 45, 50, 55
    assert np.allclose(ecoflap_keep([1, 2, 3], [100, 100, 100], 0.5), [0.45, 0.50, 0.55])
    # t = 0.05: floors 85 each, rest 285 - 255 = 30 by 1:1:8 -> 3, 3, 24; block 2 caps at 15 more and
    # the 15 it frees go 1:1 to the others -> 92.5, 92.5, 100
    assert np.allclose(ecoflap_keep([1, 1, 8], [100, 100, 100], 0.05), [0.925, 0.925, 1.0])
    # sizes 50, 100, 150 at t = 0.5: floors 20, 40, 60, rest 150 - 120 = 30 -> 10 each -> 30, 50, 70
    assert np.allclose(ecoflap_keep([1, 1, 1], [50, 100, 150], 0.5), [0.6, 0.5, 70 / 150])


def test_flap_counts_groups_below_the_threshold_and_snaps_down_to_a_level():
    wifv = np.array([[-1.0, 0.0, 1.0, np.nan], [0.5, -0.5, np.nan, np.nan]])
    assert flap_counts(wifv, 0.2).tolist() == [2, 1]
    # unit 0 removes groups in pairs (levels 0, 2, 4), unit 1 one at a time; a group costs 10 flops
    units = (Unit(name="u0", kind="channels", block=0, groups=4, counts=(0, 2, 4)),
             Unit(name="u1", kind="channels", block=1, groups=4, counts=(0, 1, 2, 3, 4)))
    table = np.array([[40.0, 20.0, 0.0, np.inf, np.inf], [40.0, 30.0, 20.0, 10.0, 0.0]])
    costs = CostModel({m: table for m in ("flops", "params", "bytes")}, dict.fromkeys(("flops", "params", "bytes"),
                      0.0), 1, 4)
    wifv = np.array([[-1.5, -0.5, 0.5, 1.5], [-1.2, -1.1, 1.0, 1.3]])
    space = SearchSpace("synthetic", "causal_lm", "structured", units, {})
    # flops <= 40: the cut past -0.5 removes 2 + 2 groups
    assert flap_levels(Problem(space, costs, {"flops": 40.0}, signals={"wifv": wifv})).tolist() == [1, 2]
    # flops <= 50: past -1.1 unit 0's one group snaps to none (60 > 50), so the cut is past -0.5 again;
    # the fill then gives unit 1 a group back
    assert flap_levels(Problem(space, costs, {"flops": 50.0}, signals={"wifv": wifv})).tolist() == [1, 1]


def test_flap_needs_a_structured_space():
    problem = alike_units({"wifv": np.zeros((3, 16))}, granularity="unstructured")
    with pytest.raises(ConfigError, match="method='flap'.*granularity='structured'"):
        get_searcher("flap")(problem, seed=0)


def test_cfsp_keeps_by_the_squashed_angles_and_shrinks_the_deviations_below_one():
    # sigmoid([-0.1, 0, 0.1]) / 0.5 = [0.950042, 1, 1.049958]
    assert np.allclose(cfsp_keep([0.1, 0.2, 0.3], 0.5), [0.475021, 0.5, 0.524979], atol=1e-6)
    # at p = 0.02 block 2 would keep 1.029: lam shrinks so that it keeps exactly 1
    assert np.allclose(cfsp_keep([0.1, 0.2, 0.3], 0.02), [0.96, 0.98, 1.0])


def test_dlp_keeps_blocks_with_a_smaller_median_wanda_score_more():
    # U = 1, 2, 7: I = 0.9, 0.8, 0.3, scaled to [0, 0.3]: 0.3, 0.25, 0 (mean 0.18333)
    assert np.allclose(dlp_keep([1, 2, 7], 0.5), [0.616667, 0.566667, 0.316667], atol=1e-6)
    assert np.allclose(dlp_keep([1, 2, 7], 0.5, alpha=0.0), 0.5)


@pytest.mark.parametrize("method, signals", [
    ("ecoflap", {"zeroth_order": np.array([3.0, 2.0, 1.0])}),
    ("cfsp", {"block_angles": np.array([0.6, 0.3, 0.1])}),
    ("dlp", {"wanda_median": np.array([1.0, 2.0, 7.0])}),
    ("flap", {"wifv": np.array([np.linspace(0, 3, 16), np.linspace(-1, 2, 16), np.linspace(-2, 1, 16)])}),
])
def test_the_block_each_signal_calls_important_is_pruned_least(method, signals):
    problem = alike_units(signals)
    levels = get_searcher(method)(problem, seed=0).ask(1)[0]
    assert problem.feasible(levels)
    assert levels[0] < levels[2]


def test_options_are_checked_and_used():
    problem = synthetic_problem(3)
    with pytest.raises(ConfigError, match="block_score='mean' must be one of total, per_weight"):
        get_searcher("ecoflap")(problem, seed=0, block_score="mean")
    with pytest.raises(ConfigError, match=r"alpha=0.9 must lie in \[0, 0.5\]"):
        get_searcher("dlp")(problem, seed=0, alpha=0.9)
    per_weight = get_searcher("ecoflap")(problem, seed=0, block_score="per_weight").ask(1)[0]
    assert per_weight.tolist() == ecoflap_levels(problem, per_weight=True).tolist()
    flat = get_searcher("dlp")(problem, seed=0, alpha=0.0).ask(1)[0]
    assert flat.tolist() == uniform_levels(problem).tolist()  # no spread: the uniform shape


@pytest.mark.parametrize("method", sorted(ALLOCATORS))
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), budget=st.floats(0.0, 1.0))
def test_allocators_never_exceed_the_budget_and_fill_it(method, seed, budget):
    problem = synthetic_problem(seed, budget=budget)
    levels = ALLOCATORS[method](problem)
    problem.space.check(levels)
    assert problem.feasible(levels)
    for u in np.flatnonzero(levels > 0):  # no unit can step back a level within the budget
        less = levels.copy()
        less[u] -= 1
        assert not problem.feasible(less)
