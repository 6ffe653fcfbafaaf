from __future__ import annotations

import numpy as np
import pytest
import torch

from allocsearch import ConfigError, InProcessRunner, Session
from allocsearch.model.dense import kl_to_reference

from ..tiny import FAMILIES, tiny_config


def full_forward_fitness(session: Session, levels: np.ndarray, batches: int | None = None) -> float:
    """The fitness of `levels` from whole-model forwards (logits or last hidden states), as a user computes it."""
    session.evaluator.compose(levels)
    total = weight = 0.0
    with torch.no_grad():
        for i, batch in enumerate(session.calib_tokens.split(session.config.batch_size)[:batches]):
            reference = session.calib_pass.reference(i)
            if session.space.task == "causal_lm":
                logits = session.model(input_ids=batch, use_cache=False).logits
                logq = torch.log_softmax(logits.float(), -1).reshape(-1, logits.shape[-1])
                total += float(kl_to_reference(reference, logq).double().sum())
                weight += logq.shape[0]
            else:
                out = session.model(input_ids=batch).last_hidden_state.float()
                total += float(((out - reference["hidden"]) ** 2).double().sum())
                weight += float((reference["hidden"].double() ** 2).sum())
    return total / weight


def block_calls(session: Session) -> list:
    """Counts forwards of each block (a list the caller reads), through hooks it leaves in place."""
    calls = [0]
    for block in session.evaluator.blockwise.blocks:
        block.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("granularity", ["structured", "unstructured"])
@pytest.mark.parametrize("family", FAMILIES)
def test_suffix_evaluation_equals_a_full_forward(family, granularity, sessions):
    """Candidates start at their first pruned block from the dense pass's input there; whole-model
    forwards of the same candidates give the same fitness (an encoder's NMSE, as computed here)."""
    session = sessions(family, granularity, **({"objective": "nmse"} if family == "bert" else {}))
    rng = np.random.default_rng(0)
    later = np.array([u.block > 0 for u in session.space.units])
    for i in range(6):
        levels = rng.integers(0, session.space.n_levels)
        if i % 2:  # the first block dense: the evaluation runs the second block only
            levels[~later] = 0
        assert session.evaluator.fitness(levels) == pytest.approx(full_forward_fitness(session, levels), rel=1e-5)


def test_a_candidate_pruned_only_late_runs_only_the_late_blocks(model_dirs, cache_dir):
    session = Session(tiny_config(model_dirs["llama"], cache_dir), progress=False)
    evaluator, calls = session.evaluator, block_calls(session)
    evaluator.fitness(np.array([0, 0, 1, 5]))
    assert calls[0] == evaluator.n_batches  # block 1 only, once per batch
    evaluator.fitness(np.array([1, 0, 1, 5]))
    assert calls[0] == evaluator.n_batches + 2 * evaluator.n_batches


def test_dense_scores(sessions):
    lm, encoder = sessions("gpt2"), sessions("bert")
    zeros = np.zeros(4, dtype=int)
    assert lm.evaluator.fitness(zeros) == pytest.approx(0, abs=1e-7)
    assert lm.evaluator.heldout(zeros).score == pytest.approx(lm.evaluator.dense_heldout, rel=1e-6)
    assert lm.evaluator.dense_heldout > 1  # a perplexity
    assert lm.evaluator.heldout(zeros).fitness == pytest.approx(0, abs=1e-7)
    assert encoder.evaluator.fitness(zeros) == pytest.approx(0, abs=1e-7)
    assert encoder.evaluator.heldout(zeros).score == pytest.approx(1.0, abs=1e-5)  # cosine to itself


def test_pruning_more_scores_worse_on_calibration_and_held_out(sessions):
    for family in ("gpt2", "bert"):
        evaluator = sessions(family).evaluator
        light, heavy = np.array([1, 2, 1, 2]), np.array([3, 12, 3, 12])
        assert 0 < evaluator.fitness(light) < evaluator.fitness(heavy)
        assert 0 < evaluator.heldout(light).fitness < evaluator.heldout(heavy).fitness
    assert sessions("bert").evaluator.heldout(np.array([3, 12, 3, 12])).score < 1


@pytest.mark.parametrize("family,granularity", [("gpt2", "structured"), ("llama", "structured"),
                                                ("opt", "unstructured")])
def test_every_shortcut_gives_the_fresh_evaluation(family, granularity, sessions, model_dirs, cache_dir):
    """Swapping only changed units, starting from the best candidate's block inputs, and reusing the
    batch scores of a lower fidelity give what a fresh evaluator gives, to the last bit."""
    session = sessions(family, granularity)
    rng = np.random.default_rng(0)
    parent = rng.integers(0, session.space.n_levels)
    session.evaluator.fitness(parent)  # full fidelity: its block inputs are kept
    children = []
    for _ in range(6):
        child = parent.copy()
        u = int(rng.integers(len(child)))
        child[u] = rng.integers(0, session.space.n_levels[u])
        children.append(child)
    values = [session.evaluator.fitness(c, 0.5) for c in children] + [session.evaluator.fitness(c) for c in children]
    fresh = Session(tiny_config(model_dirs[family], cache_dir, granularity=granularity), progress=False)
    expected = [Session(tiny_config(model_dirs[family], cache_dir, granularity=granularity), progress=False)
                .evaluator.fitness(c, f) for f in (0.5, 1.0) for c in children]
    assert values == expected
    assert fresh.evaluator.fitness(parent) == session.evaluator.fitness(parent)


def test_children_of_the_best_candidate_start_where_they_differ(model_dirs, cache_dir):
    session = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)
    evaluator = session.evaluator
    parent = np.array([2, 5, 1, 3])
    evaluator.fitness(parent, fidelity=0.5)  # its first batch scored, and remembered
    evaluator.fitness(parent)  # the best at full fidelity: its first batch runs again for its block inputs
    calls = block_calls(session)
    evaluator.fitness(np.array([2, 5, 1, 4]), fidelity=0.5)  # differs in block 1 only
    assert calls[0] == 1  # one batch, one block: the parent's input of block 1 was kept


def test_raising_the_fidelity_scores_only_the_new_batches(model_dirs, cache_dir):
    session = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)
    evaluator = session.evaluator
    evaluator.fitness(np.array([0, 1, 0, 1]))  # a better candidate, kept as the best
    levels = np.array([1, 3, 2, 7])
    low = evaluator.fitness(levels, fidelity=0.5)
    calls = block_calls(session)
    evaluator.fitness(levels)
    assert calls[0] == 2 * (evaluator.n_batches - 1)  # two blocks for each batch not scored yet
    assert low == Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False).evaluator.fitness(levels, 0.5)


def test_composer_reports_only_changed_units(sessions):
    composer = sessions("gpt2").composer
    composer.apply(np.zeros(4, dtype=int))
    assert composer.apply(np.array([1, 0, 0, 3])) == [0, 3]
    assert composer.apply(np.array([1, 2, 0, 3])) == [1]
    assert composer.apply(np.array([1, 2, 0, 3])) == []


def test_fidelity_rounds_up_to_whole_batches(sessions):
    evaluator = sessions("gpt2").evaluator  # 8 sequences in batches of 4
    assert [evaluator.batches_at(f) for f in (0.1, 0.5, 0.51, 1.0)] == [1, 1, 2, 2]
    levels = np.array([2, 6, 1, 9])
    assert evaluator.fitness(levels, fidelity=0.3) == pytest.approx(full_forward_fitness(sessions("gpt2"), levels, 1),
                                                                    rel=1e-5)
    with pytest.raises(ConfigError, match="fidelity=0 must lie in"):
        evaluator.fitness(levels, fidelity=0)


def test_topk_reference_bounds_the_full_kl(sessions):
    levels = np.array([2, 6, 1, 9])
    full = sessions("gpt2").evaluator.fitness(levels)
    top = sessions("gpt2", topk=16).evaluator.fitness(levels)
    assert 0 < top <= full  # merging the tail into one outcome can only lower the divergence


def test_thread_count_is_fixed_and_restored(model_dirs, cache_dir):
    session = Session(tiny_config(model_dirs["gpt2"], cache_dir, threads=1), progress=False)
    evaluator = session.evaluator
    seen = []
    handle = evaluator.blockwise.blocks[1].register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        evaluator.fitness(np.array([1, 1, 1, 1]))
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        handle.remove()
        torch.set_num_threads(before)


def test_threads_default_to_the_machines_cores_and_are_recorded(model_dirs, cache_dir):
    from allocsearch.model._torch import available_cores

    session = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)
    assert session.config.threads == available_cores() >= 1


def test_runner_keeps_candidate_order(sessions):
    session = sessions("gpt2")
    candidates = [np.array([0, 0, 0, k]) for k in (8, 1, 16, 4)]
    values = InProcessRunner(session.evaluator).evaluate(candidates)
    assert values == [session.evaluator.fitness(c) for c in candidates]


def test_the_dense_pass_is_computed_once_and_read_back(model_dirs, tmp_path):
    first = Session(tiny_config(model_dirs["opt"], tmp_path), progress=False)
    levels = np.array([0, 0, 2, 9])
    value = first.evaluator.fitness(levels)
    second = Session(tiny_config(model_dirs["opt"], tmp_path), progress=False)
    assert second.calib_pass.path == first.calib_pass.path
    assert second.evaluator.fitness(levels) == value
    assert second.calib_pass.has_states() and not second.heldout_pass.has_states()


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_a_damaged_dense_pass_is_computed_again(damage, model_dirs, tmp_path):
    session = Session(tiny_config(model_dirs["llama"], tmp_path), progress=False)
    value = session.evaluator.fitness(np.array([0, 0, 1, 7]))
    block = session.calib_pass.path / "block-0001"
    data = block.read_bytes()
    block.write_bytes(data[:-8] if damage == "truncate" else data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    again = Session(tiny_config(model_dirs["llama"], tmp_path), progress=False)
    assert again.evaluator.fitness(np.array([0, 0, 1, 7])) == value
    assert block.read_bytes() == data
