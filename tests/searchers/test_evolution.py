from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocsearch import ConfigError, InProcessRunner, Problem, search
from allocsearch.searchers import Evolution, EvolutionOptions
from allocsearch.solvers.repair import predicted_error
from allocsearch.solvers.shaped import uniform_levels

from ..tiny import synthetic_problem, tiny_args, tiny_config

SMALL = {"generations": 6, "offspring": 12, "survivors": (4, 2, 1)}


def drive(searcher, fitness):
    """Run a searcher to the end on a synthetic fitness; returns every asked candidate."""
    asked = []
    while not searcher.done:
        batch = searcher.ask(1000)
        if not batch:
            break
        asked += batch
        searcher.tell(batch, [fitness(c) for c in batch])
    return asked


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), budget=st.floats(0.05, 0.95), two_limits=st.booleans())
def test_no_candidate_ever_exceeds_the_budget(seed, budget, two_limits):
    problem = synthetic_problem(seed, n_units=8, budget=budget)
    if two_limits:  # a second metric with other per-unit costs, tight at the uniform allocation
        bytes_limit = problem.costs.total(uniform_levels(problem))["bytes"]
        problem = Problem(problem.space, problem.costs, {**problem.limits, "bytes": bytes_limit},
                          errors=problem.errors)
    searcher = Evolution(problem, seed=seed % 1000, init="uniform", **SMALL)
    asked = drive(searcher, lambda c: predicted_error(problem.errors, c))  # tight budgets may allow no child
    for levels in asked:
        assert problem.feasible(levels)


def test_elitist_and_multi_step_selection():
    problem = synthetic_problem(3, n_units=10)
    searcher = Evolution(problem, seed=0, init="dp", **SMALL)
    asked = drive(searcher, lambda c: predicted_error(problem.errors, c))
    start = asked[0]
    assert searcher.best_fitness <= predicted_error(problem.errors, start)
    assert len(asked) == 1 + 6 * (12 + 4 + 2)  # start, then per generation 12 -> 4 -> 2 candidates
    keys = [c.tobytes() for c in asked[1:13]]
    assert len(set(keys)) == 12 and start.tobytes() not in keys  # no duplicate offspring, not the parent


def test_same_seed_same_sequence_and_options_are_checked():
    problem = synthetic_problem(4, n_units=10)
    runs = [drive(Evolution(problem, seed=11, init="uniform", **SMALL), lambda c: float(np.sum(c ** 2)))
            for _ in range(2)]
    assert [c.tolist() for c in runs[0]] == [c.tolist() for c in runs[1]]
    with pytest.raises(ConfigError, match="has no option generation"):
        Evolution(problem, seed=0, generation=3)
    with pytest.raises(ConfigError, match="survivors=.* must not increase and must end with 1"):
        EvolutionOptions(survivors=(2, 4, 1))


def test_search_on_a_model_improves_on_its_start(sessions):
    session = sessions("gpt2")
    result = search("flops=0.5", method="evolution", session=session, seed=0, progress=False,
                    method_options=SMALL)
    start = result.history[0]
    assert start["fidelity"] == 1.0 and result.fitness <= start["fitness"]
    assert {h["fidelity"] for h in result.history} == {1 / 16, 1 / 4, 1.0}
    assert result.cost["flops_ratio"] <= 0.5 and result.options == SMALL
    assert all(session.costs.total(np.array(h["levels"]))["flops"] <= 0.5 * session.costs.dense["flops"]
               for h in result.history)


def test_coarse_to_fine_ends_on_the_finer_grid(model_dirs, cache_dir, tmp_path):
    from allocsearch import Session, export, load_pruned

    session = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)
    result = search("flops=0.5", method="evolution", session=session, seed=1, progress=False,
                    method_options={**SMALL, "rounds": 3}, out=tmp_path / "r.json")
    assert result.space["grid"]["step"] == pytest.approx(1 / 64)
    assert len(result.space["rounds"]) == 3 and result.space["base_id"] == session.space.id
    assert max(h["round"] for h in result.history) == 2
    channels = result.allocation["transformer.h.0.channels"] * 64
    assert channels == pytest.approx(round(channels))  # whole channels
    model = load_pruned(export(tmp_path / "r.json", tmp_path / "pruned", progress=False))  # the refined grid exports
    assert model.transformer.h[0].mlp.c_fc.weight.shape[1] == 64 - round(channels)


class Interrupt(Exception):
    pass


def interrupting(after: int):
    """A runner factory whose runners die after `after` evaluations in all (a killed process)."""
    count = {"n": 0}

    def make(session):
        inner = InProcessRunner(session.evaluator)

        class Dying:
            def evaluate(self, allocations, fidelity=1.0):
                count["n"] += len(allocations)
                if count["n"] > after:
                    raise Interrupt
                return inner.evaluate(allocations, fidelity)

        return Dying()

    return make


@pytest.mark.parametrize("after", [40, 120])  # inside round 0, and inside round 1
def test_killed_and_resumed_search_reaches_the_identical_result(after, model_dirs, cache_dir, tmp_path):
    from allocsearch import Session

    options = {**SMALL, "rounds": 2}

    def run(**kwargs):
        session = Session(tiny_config(model_dirs["llama"], cache_dir), progress=False)
        return search("flops=0.55", method="evolution", session=session, seed=5, progress=False,
                      method_options=options, **kwargs)

    reference = run()
    checkpoint = tmp_path / "ckpt.npz"
    with pytest.raises(Interrupt):
        run(checkpoint=checkpoint, runner=interrupting(after))
    assert checkpoint.is_file()
    resumed = run(checkpoint=checkpoint, resume=True)
    assert resumed.levels == reference.levels and resumed.fitness == reference.fitness
    assert [h["levels"] for h in resumed.history] == [h["levels"] for h in reference.history]
    assert not checkpoint.exists()  # done: nothing left to resume


def test_a_checkpoint_of_another_search_is_refused(model_dirs, cache_dir, tmp_path):
    from allocsearch import Session

    checkpoint = tmp_path / "ckpt.npz"
    session = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)
    with pytest.raises(Interrupt):
        search("flops=0.5", method="evolution", session=session, seed=1, progress=False, method_options=SMALL,
               checkpoint=checkpoint, runner=interrupting(30))
    with pytest.raises(ConfigError, match="written by a different search"):
        search("flops=0.5", method="evolution", session=session, seed=2, progress=False, method_options=SMALL,
               checkpoint=checkpoint, resume=True)


def run_cli(*args):
    env = {**os.environ, "ALLOCSEARCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "allocsearch.cli", "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # a crash test: SIGKILL of a real process
def test_same_seed_and_kill_resume_in_real_processes(model_dirs, cache_dir, tmp_path):
    """Fresh processes: same seed, same result; SIGKILL mid-search, then --resume: the same result."""
    common = ["search", "--method", "evolution", "--budget", "flops=0.5", "--seed", "9", "--generations", "60",
              "--offspring", "12", *tiny_args(model_dirs, cache_dir, "opt")]
    results = []
    for name in ("a", "b"):
        done = run_cli(*common, "--out", str(tmp_path / f"{name}.json"))
        assert done.wait(timeout=300) == 0, done.stderr.read()
        results.append(json.loads((tmp_path / f"{name}.json").read_text()))
    out, checkpoint = tmp_path / "killed.json", tmp_path / "killed.json.checkpoint.npz"
    victim = run_cli(*common, "--out", str(out))
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert checkpoint.exists() and not out.exists()  # killed mid-search, after a checkpoint
    resumed = run_cli(*common, "--out", str(out), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    results.append(json.loads(out.read_text()))
    for r in results:
        r.pop("seconds")
        r.pop("stages")  # wall times and memory peaks
    assert results[0] == results[1] == results[2]


def bumpy(problem):
    """A fitness the dp does not know: the summed errors times a wave in the total removed fraction."""
    return lambda c: float(predicted_error(problem.errors, c) * (1 + 0.3 * np.sin(problem.space.fractions(c).sum())))


def test_without_a_predictor_the_sequence_is_as_before():
    """Pinned before predictors existed: predictor='none' must not change one asked allocation."""
    base = synthetic_problem(3, n_units=10)
    start = np.array([0, 1, 1, 0, 1, 1, 0, 1, 1, 0])
    problem = Problem(base.space, base.costs, base.limits, errors=base.errors, init=start)
    searcher = Evolution(problem, seed=7, generations=4, offspring=8, survivors=(3, 2, 1), predictor="none")
    asked = []
    while not searcher.done:
        batch = searcher.ask(5)
        asked += batch
        searcher.tell(batch, [predicted_error(problem.errors, c) for c in batch])
    digest = hashlib.sha256(np.stack(asked).astype(np.int64).tobytes()).hexdigest()[:16]
    assert len(asked) == 53 and digest == "38af67e143be42b9"
    assert searcher.best_levels.tolist() == [0, 1, 1, 1, 0, 2, 0, 0, 0, 1]


SCREENED = {"generations": 15, "offspring": 8, "fidelities": (1.0,), "survivors": (1,), "init": "uniform"}


@pytest.mark.parametrize("kind", ["rbf", "gp"])
def test_a_screened_evolution_measures_offspring_only_and_does_at_least_as_well(kind, caplog):
    for seed in range(4):
        problem = synthetic_problem(seed, n_units=12)
        fitness = bumpy(problem)
        plain = Evolution(problem, seed=seed, **SCREENED)
        screened = Evolution(problem, seed=seed, predictor=kind, screen=4, **SCREENED)
        with caplog.at_level(logging.INFO, logger="allocsearch.searchers.evolution"):
            runs = [drive(s, fitness) for s in (plain, screened)]
        assert len(runs[0]) == len(runs[1]) == 1 + 15 * 8  # the start, then `offspring` per generation
        assert screened.best_fitness <= plain.best_fitness  # equal evaluations: the screen chose better
        summary = screened.summary()
        assert summary["screened_out"] == 14 * 3 * 8  # screening from generation 2 (9 points), 24 of 32 dropped
        assert summary["pairs"] == 14 * 8 and -1 <= summary["kendall"] <= 1 and 0 < summary["spearman"] <= 1
    logged = [r.getMessage() for r in caplog.records if f"predictor {kind}" in r.getMessage()]
    assert len(logged) == 4 * 15 and "'spearman'" in logged[-1]


def test_a_screened_evolution_resumes_from_its_state_exactly():
    problem = synthetic_problem(2, n_units=10)
    fitness = bumpy(problem)
    options = {**SMALL, "generations": 8, "predictor": "rbf"}
    whole = drive(Evolution(problem, seed=1, init="uniform", **options), fitness)
    first = Evolution(problem, seed=1, init="uniform", **options)
    head = []
    while first.generations_done < 5:
        batch = first.ask(7)
        head += batch
        first.tell(batch, [fitness(c) for c in batch])
    state = first.state()
    assert state["surrogate"]["screened_out"] > 0
    resumed = Evolution(problem, seed=1, init="uniform", **options)
    resumed.load_state({**json.loads(json.dumps({k: v for k, v in state.items() if k != "seen"})), "seen": state["seen"]})
    tail = drive(resumed, fitness)
    assert [c.tolist() for c in head + tail] == [c.tolist() for c in whole]
    with pytest.raises(ConfigError, match="screen=0 must be a positive integer"):
        EvolutionOptions(predictor="gp", screen=0)
