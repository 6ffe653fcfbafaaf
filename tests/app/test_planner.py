from __future__ import annotations

import json

import numpy as np
import pytest

from allocsearch import Planner, Problem
from allocsearch.cli import main
from allocsearch.solvers.dp import dp_frontier
from allocsearch.solvers.repair import predicted_error
from allocsearch.solvers.shaped import uniform_levels

from ..tiny import tiny_args


@pytest.fixture(scope="module")
def planner(sessions):
    return Planner.from_session(sessions("gpt2"), resolution=2_000)


def test_query_meets_the_budget_and_matches_the_frontier(planner, sessions):
    costs = sessions("gpt2").costs
    for fraction in (0.35, 0.5, 0.8):
        plan = planner.query(flops=fraction)
        assert plan.cost["flops"] <= fraction * costs.dense["flops"]
        assert plan.cost["flops_ratio"] == pytest.approx(plan.cost["flops"] / costs.dense["flops"])
        assert plan.predicted_error == pytest.approx(predicted_error(planner.errors, plan.levels))
        frontier = dp_frontier(planner.errors, costs.tables["flops"], resolution=2_000)
        b = frontier.at(fraction * costs.dense["flops"] - costs.constant["flops"])
        # the bucket within the budget, or a later one whose real (unrounded) cost still fits
        assert plan.predicted_error <= frontier.errors[b] + 1e-12
        assert any(np.array_equal(plan.levels, a) for a in frontier.allocations[b:])


def test_several_kinds_in_one_query(planner, sessions):
    costs = sessions("gpt2").costs
    plan = planner.query(flops=0.9, memory=0.5 * costs.dense["bytes"])
    assert plan.cost["flops_ratio"] <= 0.9 and plan.cost["bytes"] <= 0.5 * costs.dense["bytes"]


def test_measured_allocations_are_known_and_win_when_better(sessions):
    session = sessions("gpt2")
    planner = Planner.from_session(session, resolution=2_000)
    frontier_plan = planner.query(flops=0.5)
    assert frontier_plan.source == "frontier" and frontier_plan.measured_fitness is None
    planner.add(frontier_plan.levels, 0.5)
    assert planner.query(flops=0.5).measured_fitness == 0.5  # the same allocation, now measured
    other = uniform_levels(Problem(session.space, session.costs, {"flops": 0.5 * session.costs.dense["flops"]}))
    planner.add(other, 1e-9)  # something measured better than anything predicted
    plan = planner.query(flops=0.5)
    assert plan.source == "evaluated" and np.array_equal(plan.levels, other) and plan.measured_fitness == 1e-9
    planner.add(session.space.nearest_levels(0.1), 0.0, fidelity=0.25)  # low fidelity never counts
    assert planner.query(flops=0.95).measured_fitness != 0.0


def test_save_and_load_give_the_same_answers(planner, sessions, tmp_path):
    planner.add(sessions("gpt2").space.nearest_levels(0.6), 0.01)
    planner.save(tmp_path / "plan.npz")
    loaded = Planner.load(tmp_path / "plan.npz")
    for fraction in (0.35, 0.55, 0.9):
        a, b = planner.query(flops=fraction), loaded.query(flops=fraction)
        assert np.array_equal(a.levels, b.levels) and a.source == b.source
    assert loaded.n_points == planner.n_points and loaded.space.id == planner.space.id
    rows = loaded.frontier("flops")
    assert set(rows) == {"cost", "ratio", "predicted_error", "measured_fitness"}
    assert (np.diff(rows["cost"]) >= 0).all() and (np.diff(rows["predicted_error"]) <= 1e-12).all()


def test_refine_starts_from_the_best_known_point_and_is_never_worse(sessions):
    session = sessions("gpt2")
    planner = Planner.from_session(session, resolution=2_000)
    start = planner.query(flops=0.6)
    result = planner.refine("flops=0.6", method="uniform", session=session, seed=0, progress=False)
    assert result.history[0]["levels"] == start.levels.tolist()  # evaluated first
    assert result.fitness <= result.history[0]["fitness"]
    assert planner.n_points == len(result.history)


def test_cli_search_query_frontier_and_compare(model_dirs, cache_dir, tmp_path, capsys):
    plan = tmp_path / "plan.npz"
    args = tiny_args(model_dirs, cache_dir)
    assert main(["-q", "search", "--method", "dp", "--budget", "flops=0.5", "--planner", str(plan),
                 "--out", str(tmp_path / "r.json"), *args]) == 0
    capsys.readouterr()
    assert main(["-q", "query", "--planner", str(plan), "--budget", "flops=0.5", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["cost"]["flops_ratio"] <= 0.5 and answer["source"] in ("frontier", "evaluated")
    out = tmp_path / "frontier.png"
    assert main(["-q", "frontier", "--planner", str(plan), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["-q", "compare", "--budget", "flops=0.5", "--out-dir", str(tmp_path / "cmp"), *args]) == 0
    printed = capsys.readouterr().out
    for method in ("uniform", "dp", "admm", "owl"):  # the quick methods, by default
        assert method in printed and (tmp_path / "cmp" / f"{method}.json").is_file()
    assert sorted(p.stem for p in (tmp_path / "cmp").iterdir()) == ["admm", "dp", "owl", "uniform"]


def test_single_limit_binary_search_equals_a_full_scan(planner):
    totals = planner._totals["flops"][:, 0]
    for limit in np.linspace(planner.costs.minimum["flops"], planner.costs.dense["flops"], 97):
        within = np.flatnonzero(totals <= limit)
        plan = planner.query(flops=float(limit))
        assert np.array_equal(plan.levels, planner._frontier["flops"][1][within[-1]].astype(np.int64)) or \
            plan.source == "evaluated"
