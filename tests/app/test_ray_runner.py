"""Ray actors evaluate exactly what the in-process runner does, in order, through actor deaths."""

from __future__ import annotations

import logging

import pytest
import ray

from allocsearch import Session, search
from allocsearch.app.ray_runner import RayRunner

from ..tiny import tiny_config

pytestmark = pytest.mark.slow  # a Ray cluster of its own: skipped by -m 'not slow'

EVOLUTION = {"generations": 3, "offspring": 12, "survivors": (4, 2, 1)}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    yield
    ray.shutdown()


@pytest.fixture
def session_for(model_dirs, cache_dir):
    return lambda family="gpt2": Session(tiny_config(model_dirs[family], cache_dir), progress=False)


def same(a, b):
    assert a.levels == b.levels and a.fitness == b.fitness and a.heldout == b.heldout
    assert a.heldout_fitness == b.heldout_fitness
    assert [(h["levels"], h["fitness"], h["fidelity"]) for h in a.history] == \
        [(h["levels"], h["fitness"], h["fidelity"]) for h in b.history]


def test_evolution_is_identical_for_one_two_and_four_workers(session_for):
    """Four workers also restarts the local Ray that two started, with room for the extra actors."""
    one, two, four = [search("flops=0.5", method="evolution", session=session_for(), seed=2, progress=False,
                             method_options={**EVOLUTION, "rounds": 2}, workers=workers) for workers in (1, 2, 4)]
    same(one, two)
    same(one, four)


def test_optuna_is_identical_for_one_and_two_workers(session_for, tmp_path):
    results = []
    for workers in (1, 2):
        options = {"trials": 16, "batch": 8, "study": f"w{workers}", "storage": f"sqlite:///{tmp_path}/s.db"}
        results.append(search("flops=0.5", method="optuna", session=session_for(), seed=2, progress=False,
                              method_options=options, workers=workers))
    same(*results)


def test_a_killed_actor_is_restarted_and_the_result_unchanged(session_for):
    reference = search("flops=0.5", method="evolution", session=session_for("llama"), seed=4, progress=False,
                       method_options=EVOLUTION)
    killed = {}

    def factory(session):
        runner = RayRunner(session, workers=2)
        evaluate = runner.evaluate

        def evaluate_and_kill(allocations, fidelity=1.0):
            if len(killed) == 1:  # the second batch: kill an actor while it works
                pending = runner.actors[0].evaluate.remote(list(allocations[0]), fidelity)
                ray.kill(runner.actors[0], no_restart=False)
                killed["pid"] = runner.pids[0]
                del pending
            killed.setdefault("calls", 0)
            killed["calls"] += 1
            return evaluate(allocations, fidelity)

        runner.evaluate = evaluate_and_kill
        return runner

    result = search("flops=0.5", method="evolution", session=session_for("llama"), seed=4, progress=False,
                    method_options=EVOLUTION, runner=factory)
    assert "pid" in killed
    same(result, reference)


def test_tables_and_dp_are_identical_on_ray_workers(model_dirs, tmp_path):
    """Every table kind measured on two workers equals the in-process one, and so do dp's answers."""
    for kind in ("exact", "proxy"):
        local = Session(tiny_config(model_dirs["qwen2"], tmp_path / "local", table=kind), progress=False)
        remote = Session(tiny_config(model_dirs["qwen2"], tmp_path / "ray", table=kind), progress=False)
        one = search("flops=0.5", method="dp", session=local, seed=0, progress=False)
        two = search("flops=0.5", method="dp", session=remote, seed=0, progress=False, workers=2)
        assert (local.error_table() == remote.error_table()).all()
        same(one, two)


def test_local_workers_that_oversubscribe_the_cores_are_warned(caplog):
    from allocsearch.app.ray_runner import connect
    from allocsearch.model._torch import available_cores

    ray.shutdown()
    cores = available_cores()
    with caplog.at_level(logging.WARNING, logger="allocsearch.app.ray_runner"):
        connect(workers=2, threads=cores)
    assert "oversubscribe" in caplog.text and f"pass threads={max(1, cores // 2)}" in caplog.text
    caplog.clear()
    ray.shutdown()
    with caplog.at_level(logging.WARNING, logger="allocsearch.app.ray_runner"):
        connect(workers=1, threads=cores)
    assert "oversubscribe" not in caplog.text
