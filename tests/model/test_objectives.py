from __future__ import annotations

import numpy as np
import pytest
import torch

from allocsearch import ConfigError, RunConfig, Session
from allocsearch.model.dense import kl_to_reference
from allocsearch.model.evaluator import (
    DEFAULT_OBJECTIVE,
    OBJECTIVES,
    Evaluator,
    EvaluatorConfig,
)

from ..tiny import tiny_config

CASES = [("gpt2", "kl", None), ("gpt2", "topk_kl", None), ("llama", "topk_kl", 16), ("bert", "nmse", None),
         ("bert", "pooled", None), ("bert", "cls", None)]
PRUNED = np.array([2, 9, 1, 6])
OTHER = np.array([1, 5, 2, 3])


def session_of(sessions, family: str, objective: str, topk: int | None = None) -> Session:
    return sessions(family, objective=objective, **({"topk": topk} if topk else {}))


def lm_logp(session: Session, levels: np.ndarray, batch: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities of the model at `levels` from a whole-model forward.  # (tokens, vocab)"""
    session.evaluator.compose(levels)
    with torch.no_grad():
        logits = session.model(input_ids=batch, use_cache=False).logits.float()
    return torch.log_softmax(logits, -1).reshape(-1, logits.shape[-1])


def final_states(session: Session, levels: np.ndarray, batch: torch.Tensor) -> torch.Tensor:
    """An encoder's last hidden states at `levels` from a whole-model forward.  # (batch, seq, width)"""
    session.evaluator.compose(levels)
    with torch.no_grad():
        return session.model(input_ids=batch).last_hidden_state.float()


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@pytest.mark.parametrize("family,objective,topk", CASES)
def test_dense_scores_zero_and_a_pruned_allocation_more(family, objective, topk, sessions):
    evaluator = session_of(sessions, family, objective, topk).evaluator
    dense = np.zeros(4, dtype=int)
    assert evaluator.objective == objective
    assert evaluator.fitness(dense) == pytest.approx(0, abs=1e-6)
    assert evaluator.heldout(dense).fitness == pytest.approx(0, abs=1e-6)
    assert evaluator.fitness(PRUNED) > 1e-4
    assert evaluator.heldout(PRUNED).fitness > 1e-4


@pytest.mark.parametrize("k", [16, 64])
def test_topk_kl_is_the_renormalised_kl_over_the_dense_top_k(k, sessions):
    """From whole-model logits: KL over the dense top-k, both renormalised; the same whether the reference
    keeps its own top-k or the whole distribution. By the chain rule, p(top-k) * topk_kl <= kl per token."""
    kept = sessions("gpt2", objective="topk_kl", topk=k)  # a top-k reference
    whole = sessions("gpt2", objective="kl")  # the whole distribution (a vocabulary of 256)
    total = bound = kl = 0.0
    for batch in kept.calib_tokens.split(kept.config.batch_size):
        logp, logq = lm_logp(kept, np.zeros(4, dtype=int), batch), lm_logp(kept, PRUNED, batch)
        index = logp.topk(k, -1).indices  # (tokens, k)
        p, q = logp.gather(-1, index).double(), logq.gather(-1, index).double()
        mass = p.exp().sum(-1)  # (tokens,)
        p, q = p - p.logsumexp(-1, keepdim=True), q - q.logsumexp(-1, keepdim=True)
        per_token = (p.exp() * (p - q)).sum(-1)
        full = kl_to_reference({"logp": logp}, logq).double()
        total, bound, kl = total + float(per_token.sum()), bound + float((mass * per_token).sum()), kl + float(full.sum())
        assert bool((mass * per_token <= full + 1e-5).all())
    tokens = kept.calib_tokens.numel()
    assert kept.evaluator.fitness(PRUNED) == pytest.approx(total / tokens, rel=1e-4)
    from_whole = Evaluator(whole.composer, whole.calib_pass, whole.calib_tokens,
                           config=EvaluatorConfig(objective="topk_kl", topk=k))
    assert from_whole.fitness(PRUNED) == pytest.approx(total / tokens, rel=1e-4)
    assert whole.evaluator.fitness(PRUNED) == pytest.approx(kl / tokens, rel=1e-4)
    assert bound <= kl


@pytest.mark.parametrize("objective", ["pooled", "cls"])
def test_cosine_objectives_match_a_direct_computation(objective, sessions):
    session = sessions("bert", objective=objective)
    dense = np.zeros(4, dtype=int)
    values = []
    for batch in session.calib_tokens.split(session.config.batch_size):
        h, ref = final_states(session, PRUNED, batch), final_states(session, dense, batch)
        a, b = (h.mean(1), ref.mean(1)) if objective == "pooled" else (h[:, 0], ref[:, 0])
        values.append(cosine_loss(a, b))
    assert session.evaluator.fitness(PRUNED) == pytest.approx(float(torch.cat(values).mean()), rel=1e-4)
    pooled = [cosine_loss(final_states(session, PRUNED, b).mean(1), final_states(session, dense, b).mean(1))
              for b in session.heldout_tokens.split(session.config.batch_size)]
    assert session.evaluator.heldout(PRUNED).score == pytest.approx(1 - float(torch.cat(pooled).mean()), rel=1e-5)


@pytest.mark.parametrize("family,objective,topk", CASES)
def test_batches_add_up(family, objective, topk, sessions):
    """The held-out objective is its batches' values weighted by tokens (KL), sequences (cosines) or the
    dense states' squared norm (nmse); raising a fidelity reuses remembered batches and gives a fresh
    evaluator's value."""
    session = session_of(sessions, family, objective, topk)
    held = session.evaluator.heldout(PRUNED)
    batches = session.heldout_tokens.split(session.config.batch_size)
    if objective == "nmse":
        weights = [float((session.heldout_pass.reference(i)["hidden"].double() ** 2).sum()) for i in range(len(batches))]
    else:
        weights = [b.numel() if family != "bert" else len(b) for b in batches]
    assert len(held.batches) == len(batches) > 1
    assert held.fitness == pytest.approx(np.dot(held.batches, weights) / sum(weights), rel=1e-9)
    assert np.ptp(held.batches) > 0  # batches differ, so the weighting is what is tested
    evaluator = session.evaluator
    evaluator.fitness(OTHER, fidelity=0.5)
    fresh = Evaluator(session.composer, session.calib_pass, session.calib_tokens, config=evaluator.config)
    assert evaluator.fitness(OTHER) == fresh.fitness(OTHER)


def test_an_objective_of_the_other_task_is_a_config_error(model_dirs, cache_dir):
    with pytest.raises(ConfigError, match=r"^objective='mse' is not an objective of any model; choose one of kl, "):
        RunConfig(objective="mse")
    encoder = Session(tiny_config(model_dirs["bert"], cache_dir, objective="kl"), progress=False)
    with pytest.raises(ConfigError, match=r"^objective='kl' is not an objective of an encoder; choose one of "
                                          r"nmse, pooled, cls"):
        _ = encoder.evaluator
    lm = Session(tiny_config(model_dirs["gpt2"], cache_dir, objective="cls"), progress=False)
    with pytest.raises(ConfigError, match=r"^objective='cls' is not an objective of a language model"):
        lm.table_key()


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_the_error_table_key_depends_on_the_objective(family, sessions):
    task = "encoder" if family == "bert" else "causal_lm"
    keys = {objective: sessions(family, objective=objective).table_key() for objective in OBJECTIVES[task]}
    assert len(set(keys.values())) == len(keys)
    assert sessions(family).table_key() == keys[DEFAULT_OBJECTIVE[task]]
