from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from allocsearch import ConfigError, Planner, Result, Session, search
from allocsearch.searchers.optuna import OptunaStudy, StudyOptions, open_storage
from allocsearch.solvers.shaped import uniform_levels

from ..tiny import free_port, synthetic_problem, tiny_config
from .test_evolution import Interrupt, bumpy, interrupting

QUICK = {"trials": 24, "batch": 6}


def run(session, study, storage, seed=0, **kwargs):
    options = {**QUICK, "study": study, "storage": storage, **kwargs.pop("method_options", {})}
    return search("flops=0.5", method="optuna", session=session, seed=seed, progress=False,
                  method_options=options, **kwargs)


def trials_of(study, storage):
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def params_of(study, storage):
    return [(t.state.name, t.params) for t in trials_of(study, storage)]


@pytest.fixture
def session(model_dirs, cache_dir):
    return Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)


def test_same_seed_same_trials_and_warm_start_first(session, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    a = run(session, "a", storage, seed=3)
    run(session, "b", storage, seed=3)
    assert params_of("a", storage) == params_of("b", storage)
    trials = trials_of("a", storage)
    assert len(trials) == 24 and all(t.state == TrialState.COMPLETE for t in trials)
    warm = [t.user_attrs.get("warm_start") for t in trials]
    assert warm[0] == "dp" and set(warm[1:3]) <= {"admm", None}  # admm's, unless it equals dp's
    assert all(w is None for w in warm[2:])
    assert a.fitness == min(t.values[0] for t in trials)
    run(session, "c", storage, seed=4)
    assert params_of("c", storage) != params_of("a", storage)


def test_no_evaluated_trial_exceeds_the_budget(session, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    result = run(session, "budget", storage, method_options={"sampler": "random"})
    limit = 0.5 * session.costs.dense["flops"]
    trials = trials_of("budget", storage)
    repaired = [t for t in trials if t.user_attrs["repaired"]]
    assert repaired, "random sampling should break the budget sometimes"
    for t in trials:
        assert session.costs.total(np.array(t.user_attrs["levels"]))["flops"] <= limit
        sampled = np.array([t.params[u.name] for u in session.space.units])
        excess = session.costs.total(sampled)["flops"] / limit - 1
        assert t.system_attrs["constraints:budget"] == pytest.approx(excess)
        assert (excess > 0) == t.user_attrs["repaired"]
    assert all(session.costs.total(np.array(h["levels"]))["flops"] <= limit for h in result.history)


def test_interrupt_and_resume_loses_and_repeats_nothing(session, model_dirs, cache_dir, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    whole = run(session, "whole", storage, seed=7)
    for after in (9, 20):  # inside a batch's evaluation; right at a batch's end
        name = f"killed-{after}"
        with pytest.raises(Interrupt):
            run(session, name, storage, seed=7, runner=interrupting(after))
        assert any(t.state == TrialState.RUNNING for t in trials_of(name, storage)) or after % 6 == 0
        fresh = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)
        resumed = run(fresh, name, storage, seed=7)
        assert resumed.evaluations == whole.evaluations == 24  # the killed run's measurements count too
        assert resumed.history == whole.history and resumed.levels == whole.levels
        trials = trials_of(name, storage)
        assert len(trials) == 24 and all(t.state == TrialState.COMPLETE for t in trials)
        assert [t.number for t in trials] == list(range(24))
        assert params_of(name, storage) == params_of("whole", storage)  # as if never interrupted
        assert [t.values for t in trials] == [t.values for t in trials_of("whole", storage)]


def test_rerunning_a_finished_study_adds_no_trials_and_other_settings_are_refused(session, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    first = run(session, "once", storage)
    again = run(session, "once", storage)
    assert len(trials_of("once", storage)) == 24 and again.fitness == first.fitness
    with pytest.raises(ConfigError, match=r"belongs to another search \(seed was \d+, now 99\)"):
        run(session, "once", storage, seed=99)


def test_pruning_on_few_tokens_first(session, tmp_path):
    storage = f"journal:///{tmp_path}/study.log"  # the journal file storage works too
    run(session, "pruned", storage, method_options={"prune": 0.25, "keep": 0.5})
    trials = trials_of("pruned", open_storage(storage))
    states = [t.state for t in trials]
    assert states.count(TrialState.PRUNED) == 12 and states.count(TrialState.COMPLETE) == 12  # half of each batch
    assert all(0 in t.intermediate_values for t in trials)


def test_nsga2_pareto_front_feeds_the_planner(session, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    run(session, "pareto", storage, method_options={"sampler": "nsga2", "trials": 30, "batch": 10})
    study = optuna.load_study(study_name="pareto", storage=storage)
    assert study.metric_names == ["fitness", "flops_ratio"]
    front = study.best_trials
    assert front
    planner = Planner.from_session(session, resolution=1000)
    assert planner.add_study("pareto", storage) == 30
    for trial in front:
        ratio = trial.values[1]
        plan = planner.query(flops=ratio + 1e-9)
        assert plan.cost["flops_ratio"] <= ratio + 1e-9
        known = plan.measured_fitness if plan.measured_fitness is not None else plan.predicted_error
        assert plan.source == "frontier" or known <= trial.values[0]


@pytest.fixture
def dashboard(session, tmp_path, monkeypatch):
    """optuna-dashboard started by `allocsearch dashboard` on a study the project wrote (default storage)."""
    monkeypatch.chdir(tmp_path)
    result = run(session, "tiny-gpt2-half-flops", None)
    assert (tmp_path / "studies" / "tiny-gpt2-half-flops.db").is_file()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "allocsearch.cli", "dashboard", "--study", "tiny-gpt2-half-flops",
                                "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/meta", timeout=2)
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError(process.stdout.read().decode())
            time.sleep(0.2)
    yield base, result
    process.terminate()
    process.wait(timeout=10)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow  # a dashboard server (and a browser)
def test_dashboard_serves_the_study_trials_and_attributes(dashboard):
    base, result = dashboard
    studies = get(f"{base}/api/studies")["study_summaries"]
    study = next(s for s in studies if s["study_name"] == "tiny-gpt2-half-flops")
    detail = get(f"{base}/api/studies/{study['study_id']}?after=0")
    assert len(detail["trials"]) == 24
    attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
    assert {"allocation", "costs", "levels", "repaired"} <= set(attrs)
    assert "transformer.h.0.heads" in attrs["allocation"]
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert "best_heldout" in study_attrs


@pytest.mark.slow  # a dashboard server (and a browser)
def test_dashboard_page_renders_the_study_in_a_browser(dashboard):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium for this test; it is missing")
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    base, _ = dashboard
    studies = get(f"{base}/api/studies")["study_summaries"]
    study_id = next(s["study_id"] for s in studies if s["study_name"] == "tiny-gpt2-half-flops")
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={os.getcwd()}/chromium-profile", "--virtual-time-budget=15000", "--dump-dom",
         f"{base}/dashboard/studies/{study_id}"], capture_output=True, text=True, timeout=120).stdout
    assert "tiny-gpt2-half-flops" in dom and "<div" in dom


def drive(study, fitness):
    asked = []
    while not study.done:
        batch = study.ask(1000)
        asked += [c.tolist() for c in batch]
        study.tell(batch, [fitness(c) for c in batch])
    return asked


def test_a_predictor_prunes_screened_trials_and_stays_deterministic(tmp_path, caplog):
    problem = synthetic_problem(1, n_units=10)
    fitness = bumpy(problem)
    options = {"trials": 16, "batch": 4, "predictor": "rbf", "screen": 3}
    storage = f"journal:///{tmp_path}/screened.log"  # a file: the rerun below reads it back
    with caplog.at_level(logging.INFO, logger="allocsearch.searchers.optuna"):
        study = OptunaStudy(problem, seed=0, storage=storage, **options)
        asked = drive(study, fitness)
    assert asked == drive(OptunaStudy(problem, seed=0, storage=":memory:", **options), fitness)
    trials = study.study.get_trials(deepcopy=False)
    screened = [t for t in trials if t.user_attrs.get("screened_out")]
    measured = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(asked) == len(measured) == 16  # only measured trials count toward `trials`
    assert len(screened) == 2 * 8 and all(t.state == TrialState.PRUNED for t in screened)  # batches 3, 4: 4 of 12 kept
    assert all("predicted_fitness" in t.user_attrs for t in screened + measured[8:])
    summary = study.summary()
    assert summary["screened_out"] == 16 and summary["pairs"] == 8 and 0 < summary["spearman"] <= 1
    assert any("predictor rbf" in r.getMessage() for r in caplog.records)
    again = OptunaStudy(problem, seed=0, storage=storage, **options)  # a rerun reads all of it from storage
    assert again.done and again.summary() == summary and again.best_fitness == study.best_fitness


def test_a_predictor_needs_one_objective():
    with pytest.raises(ConfigError, match="predictor='gp' predicts one objective"):
        StudyOptions(sampler="nsga2", predictor="gp")
    with pytest.raises(ConfigError, match="predictor='xgb' is unknown"):
        StudyOptions(predictor="xgb")


# -- a kill anywhere: the study resumes as if never killed --------------------------------------------

APPEND = JournalFileBackend.append_logs


class Killed(BaseException):
    """A SIGKILL in-process: no `except Exception` catches it, and the write it stops never happens."""


def killing(monkeypatch, at: int | None) -> dict:
    """Make journal file storages die before their write number `at` (from 0; None: never); count writes."""
    count = {"writes": 0}

    def append(backend, logs):
        if at is not None and count["writes"] >= at:
            raise Killed
        count["writes"] += 1
        APPEND(backend, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", append)
    return count


def measure(study, fitness) -> list[dict]:
    """The search loop's part (ask, score on the study's fidelity, tell) and its history entries."""
    history = []
    while not study.done:
        batch = study.ask(1000)
        fidelity = study.fidelity
        scores = [fitness(c) * (2 - fidelity) for c in batch]  # first scores differ from full ones
        study.tell(batch, scores)
        history += [{"levels": c.tolist(), "fidelity": fidelity, "fitness": f, "round": 0} for c, f in zip(batch, scores)]
    return history


def stored(study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.values, t.intermediate_values, t.user_attrs, t.system_attrs)
            for t in study.study.get_trials(deepcopy=False)]


KILLED = {"plain": {"trials": 8, "batch": 3, "warm_start": ("dp", "admm", "uniform")},
          "pruned": {"trials": 8, "batch": 4, "prune": 0.5, "keep": 0.5},
          "screened": {"trials": 12, "batch": 4, "predictor": "rbf", "screen": 2}}


@pytest.mark.parametrize("kind", KILLED)
def test_a_study_killed_before_any_write_resumes_as_if_never_killed(kind, tmp_path, monkeypatch):
    problem = synthetic_problem(1, n_units=8)
    fitness, options = bumpy(problem), {"study": "s", **KILLED[kind]}
    count = killing(monkeypatch, None)
    whole = OptunaStudy(problem, seed=0, storage=f"journal:///{tmp_path}/whole.log", **options)
    history = measure(whole, fitness)
    assert whole.history() == history  # the study's own record of its measurements is the loop's
    for at in range(count["writes"]):  # the kill comes before write `at`: in a batch's writing, scoring, telling
        storage = f"journal:///{tmp_path}/killed-{at}.log"
        killing(monkeypatch, at)
        with pytest.raises(Killed):
            measure(OptunaStudy(problem, seed=0, storage=storage, **options), fitness)
        killing(monkeypatch, None)
        again = OptunaStudy(problem, seed=0, storage=storage, **options)
        measure(again, fitness)
        assert stored(again) == stored(whole), f"killed before write {at}"
        assert again.history() == history and again.summary() == whole.summary()
        assert again.best_fitness == whole.best_fitness


def test_running_trials_a_killed_run_left_are_measured_first_and_nothing_else(tmp_path):
    problem = synthetic_problem(2, n_units=6)
    fitness, storage = bumpy(problem), f"journal:///{tmp_path}/s.log"
    study = OptunaStudy(problem, seed=3, storage=storage, study="s", trials=8, batch=4)
    study.tell(first := study.ask(100), [fitness(c) for c in first])
    second = study.ask(100)
    study.tell(second[:1], [fitness(second[0])])  # then the process dies, three trials RUNNING
    states = [t.state for t in study.study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE] * 5 + [TrialState.RUNNING] * 3
    again = OptunaStudy(problem, seed=3, storage=storage, study="s", trials=8, batch=4)
    assert not again.done
    assert [c.tolist() for c in again.ask(100)] == [c.tolist() for c in second[1:]]
    again.tell(second[1:], [fitness(c) for c in second[1:]])
    assert again.done and again.ask(100) == []
    assert [t.state for t in again.study.get_trials(deepcopy=False)] == [TrialState.COMPLETE] * 8
    assert [t.user_attrs["batch"] for t in again.study.get_trials(deepcopy=False)] == [0] * 4 + [1] * 4


def test_a_study_record_a_kill_cut_short_is_completed_but_one_with_trials_is_refused(tmp_path):
    problem = synthetic_problem(2, n_units=6)
    storage = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="cut", storage=storage).set_user_attr("space", problem.space.id)
    study = OptunaStudy(problem, seed=1, storage=storage, study="cut", trials=4, batch=4)
    assert study.study.user_attrs["seed"] == 1 and study.study.metric_names == ["fitness"]
    other = optuna.create_study(study_name="other", storage=storage)
    other.set_user_attr("space", problem.space.id)
    other.enqueue_trial({})
    with pytest.raises(ConfigError, match=r"study='other' .* belongs to another search \(limits was None"):
        OptunaStudy(problem, seed=1, storage=storage, study="other", trials=4, batch=4)


def test_the_start_allocation_competes_and_the_result_counts_every_run_of_the_study(tmp_path):
    problem = synthetic_problem(4, n_units=6)
    fitness, storage = bumpy(problem), f"journal:///{tmp_path}/s.log"
    options = {"study": "s", "trials": 8, "batch": 4}
    first = OptunaStudy(problem, seed=0, storage=storage, **options)
    first.tell(batch := first.ask(100), [fitness(c) for c in batch])  # a run stopped after one batch
    second = OptunaStudy(problem, seed=0, storage=storage, **options)
    start = uniform_levels(problem)
    second.tell([start], [0.0])  # the loop measures its start allocation before any batch
    assert second.best_fitness == 0.0 and np.array_equal(second.best_levels, start)
    rest = measure(second, lambda c: fitness(c) / 2)  # (2 - fidelity) / 2: the fitness itself
    entry = {"levels": start.tolist(), "fidelity": 1.0, "fitness": 0.0, "round": 0}
    result = Result(method="optuna", budget={}, allocation={}, levels={}, cost={}, fitness=0.0, heldout=None,
                    dense_heldout=None, seed=0, evaluations=1 + len(rest), config={}, space={},
                    history=[entry, *rest])
    second.finish(result)
    assert result.evaluations == 9 and result.history[0] == entry
    assert [h["levels"] for h in result.history[1:5]] == [c.tolist() for c in batch]  # the first run's
    assert result.history[5:] == rest and second.study.user_attrs["best_fitness"] == 0.0


def test_the_cmaes_sampler_without_its_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"sampler='cmaes' needs the cmaes package.*allocsearch\[cmaes\]"):
        StudyOptions(sampler="cmaes")
    StudyOptions(sampler="tpe")  # the others need nothing more
