from __future__ import annotations

import numpy as np
import pytest
import torch

from allocsearch import ConfigError, Evaluator, EvaluatorConfig, InProcessRunner, Session

from .conftest import tiny_config


def test_dense_scores(sessions):
    lm, encoder = sessions("gpt2"), sessions("bert")
    zeros = np.zeros(4, dtype=int)
    assert lm.evaluator.fitness(zeros) == pytest.approx(0, abs=1e-7)
    assert lm.evaluator.heldout(zeros) == lm.evaluator.dense_heldout > 1  # a perplexity
    assert encoder.evaluator.fitness(zeros) == pytest.approx(0, abs=1e-7)
    assert encoder.evaluator.heldout(zeros) == pytest.approx(1.0, abs=1e-5)  # cosine to itself


def test_pruning_more_scores_worse(sessions):
    for family in ("gpt2", "bert"):
        evaluator = sessions(family).evaluator
        light, heavy = evaluator.fitness(np.array([1, 2, 1, 2])), evaluator.fitness(np.array([3, 12, 3, 12]))
        assert 0 < light < heavy
    encoder = sessions("bert").evaluator
    assert encoder.heldout(np.array([3, 12, 3, 12])) < 1


@pytest.mark.parametrize("family,granularity", [("gpt2", "structured"), ("llama", "structured"),
                                                ("opt", "unstructured")])
def test_swapping_only_changed_units_equals_fresh_composition(family, granularity, sessions, model_dirs, cache_dir):
    session = sessions(family, granularity)
    rng = np.random.default_rng(0)
    candidates = [rng.integers(0, session.space.n_levels) for _ in range(6)]
    incremental = [session.evaluator.fitness(c) for c in candidates]
    for c, value in zip(candidates, incremental):
        fresh = Session(tiny_config(model_dirs[family], cache_dir, granularity=granularity), progress=False)
        assert fresh.evaluator.fitness(c) == value


def test_composer_reports_only_changed_units(sessions):
    composer = sessions("gpt2").composer
    composer.apply(np.zeros(4, dtype=int))
    assert composer.apply(np.array([1, 0, 0, 3])) == [0, 3]
    assert composer.apply(np.array([1, 2, 0, 3])) == [1]
    assert composer.apply(np.array([1, 2, 0, 3])) == []


def test_fidelity_scores_the_first_share_of_calibration(sessions, model_dirs, cache_dir):
    session = sessions("gpt2")
    levels = np.array([2, 6, 1, 9])
    other = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)
    half = Evaluator(other.composer, session.calib_tokens[:4], task="causal_lm", config=EvaluatorConfig(batch_size=4))
    assert session.evaluator.fitness(levels, fidelity=0.5) == pytest.approx(half.fitness(levels), rel=1e-12)
    with pytest.raises(ConfigError, match="fidelity=0 must lie in"):
        session.evaluator.fitness(levels, fidelity=0)


def test_topk_reference_bounds_the_full_kl(sessions):
    session = sessions("gpt2")
    levels = np.array([2, 6, 1, 9])
    full = session.evaluator.fitness(levels)
    top = Evaluator(session.composer, session.calib_tokens, task="causal_lm",
                    config=EvaluatorConfig(batch_size=4, topk=16)).fitness(levels)
    assert 0 < top <= full  # merging the tail into one outcome can only lower the divergence


def test_thread_count_is_fixed_and_restored(sessions):
    evaluator = sessions("gpt2").evaluator
    seen = []
    handle = evaluator.model.register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        evaluator.fitness(np.array([1, 1, 1, 1]))
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        handle.remove()
        torch.set_num_threads(before)


def test_runner_keeps_candidate_order(sessions):
    session = sessions("gpt2")
    candidates = [np.array([0, 0, 0, k]) for k in (8, 1, 16, 4)]
    values = InProcessRunner(session.evaluator).evaluate(candidates)
    assert values == [session.evaluator.fitness(c) for c in candidates]


def test_error_table_is_single_unit_fitness_and_cached(sessions):
    session = sessions("llama")
    table = session.error_table()
    assert table.shape == (4, 17)
    assert (table[:, 0] == 0).all()
    assert np.isinf(table[0, 3:]).all() and np.isfinite(table[0, :3]).all()  # heads: 3 levels (2 kv groups)
    assert table[1, 5] == session.evaluator.fitness(np.array([0, 5, 0, 0]))
    count = session.evaluator.evaluations
    assert np.array_equal(session.error_table(), table)
    assert session.evaluator.evaluations == count  # read from the cache, nothing re-evaluated
