from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from allocsearch import ConfigError, Session
from allocsearch.core.problem import SIGNALS
from allocsearch.model._modules import get_module, linear_weight
from allocsearch.model._torch import weights_hash
from allocsearch.model.signals import (
    block_angles,
    direction,
    layer_inputs,
    modules_by_block,
    wanda_median,
    wifv,
    zeroth_order,
)

from ..tiny import tiny_config


def dense(session: Session) -> nn.Module:
    """The session's model at level 0 everywhere."""
    session.composer.apply(np.zeros(session.space.n_units, dtype=int))
    return session.model


def layer_inputs_by_hooks(session: Session) -> dict[str, np.ndarray]:
    """Every prunable layer's calibration inputs, from whole-model forwards.  # path -> (tokens, in)"""
    model, seen = dense(session), {}
    paths = [p for block in modules_by_block(session.space) for p in block]
    handles = [get_module(model, p).register_forward_pre_hook(
        lambda m, args, p=p: seen.setdefault(p, []).append(args[0].reshape(-1, args[0].shape[-1]).double()))
        for p in paths]
    with torch.no_grad():
        for batch in session.calib_tokens.split(session.config.batch_size):
            model(input_ids=batch)
    for h in handles:
        h.remove()
    return {p: torch.cat(xs).numpy() for p, xs in seen.items()}


def wanda(session: Session, inputs: dict[str, np.ndarray], paths: list[str]) -> np.ndarray:
    """|W_ij| * ||X_j|| of the layers `paths`, pooled.  # (weights,)"""
    return np.concatenate([(np.abs(linear_weight(get_module(session.model, p)).double().numpy())
                            * np.linalg.norm(inputs[p], axis=0)).ravel() for p in paths])


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_every_signal_has_its_shape(family, sessions):
    session = sessions(family)
    blocks = len(modules_by_block(session.space))
    groups = max(u.groups for u in session.space.units)
    shapes = {"outlier_ratios": (blocks,), "zeroth_order": (blocks,), "wifv": (session.space.n_units, groups),
              "block_angles": (blocks,), "wanda_median": (blocks,)}
    assert set(shapes) == set(SIGNALS)
    for name, shape in shapes.items():
        value = session.signal(name)
        assert value.shape == shape, name
        assert np.isfinite(value[~np.isnan(value)]).all() and (name == "wifv" or np.isfinite(value).all()), name
    assert (session.signal("block_angles") > 0).all() and (session.signal("zeroth_order") > 0).all()


def test_one_statistics_pass_gives_the_three_weight_signals(model_dirs, cache_dir):
    session = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)
    session.signal("wanda_median")
    assert {"outlier_ratios", "wanda_median", "wifv"} <= set(session.signals)
    assert "block_angles" not in session.signals


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_wanda_median_and_outlier_ratios_equal_a_direct_computation(family, sessions):
    session = sessions(family)
    inputs = layer_inputs_by_hooks(session)
    for b, paths in enumerate(modules_by_block(session.space)):
        scores = wanda(session, inputs, paths)
        assert session.signal("wanda_median")[b] == pytest.approx(np.median(scores), rel=1e-9)
        assert session.signal("outlier_ratios")[b] == pytest.approx(np.mean(scores > 5 * scores.mean()), abs=1e-9)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_wifv_is_flaps_standardised_score_per_group_and_nan_past_the_groups(family, sessions):
    session = sessions(family)
    inputs, value = layer_inputs_by_hooks(session), session.signal("wifv")
    assert len({u.groups for u in session.space.units}) > 1  # heads and channels: rows padded differently
    for u, unit in enumerate(session.space.units):
        columns = unit.consumer.indices(np.arange(unit.groups))
        x = inputs[unit.consumer.module][:, columns]  # (tokens, groups * width)
        weight = linear_weight(get_module(session.model, unit.consumer.module)).double().numpy()[:, columns]
        score = x.var(axis=0) * (weight**2).sum(0)  # (groups * width,)
        z = (score - score.mean()) / score.std()
        assert z.mean() == pytest.approx(0, abs=1e-12)
        np.testing.assert_allclose(value[u, : unit.groups], z.reshape(unit.groups, -1).mean(1), atol=1e-6)
        assert value[u, : unit.groups].mean() == pytest.approx(0, abs=1e-9)  # groups of equal width
        assert np.isnan(value[u, unit.groups :]).all() and not np.isnan(value[u, : unit.groups]).any()


def test_wifv_needs_a_structured_space(sessions):
    with pytest.raises(ConfigError, match="granularity='unstructured'.*use granularity='structured'"):
        sessions("gpt2", "unstructured").signal("wifv")


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_block_angles_equal_a_direct_computation_with_hooks(family, sessions):
    session = sessions(family)
    model, pairs = dense(session), []
    blocks = get_module(model, session.space.spec["blocks"])
    handles = [block.register_forward_hook(lambda m, args, out: pairs.append((args[0], out[0] if isinstance(out, tuple)
                                                                                else out))) for block in blocks]
    angles = np.zeros(len(blocks))
    with torch.no_grad():
        for batch in session.calib_tokens.split(session.config.batch_size):
            pairs.clear()
            model(input_ids=batch)
            for b, (x_in, x_out) in enumerate(pairs):
                cosine = torch.cosine_similarity(x_in.double(), x_out.double(), dim=-1).clamp(-1, 1)
                angles[b] += float(torch.arccos(cosine).sum()) / math.pi
    for h in handles:
        h.remove()
    tokens = session.calib_tokens.numel()
    np.testing.assert_allclose(session.signal("block_angles"), angles / tokens, rtol=1e-6)


def whole_model_zeroth_order(session: Session, batches: int, eps: float = 1e-3) -> np.ndarray:
    """The zeroth-order estimate the slow way: perturb a block's matrices, run the whole model, restore."""
    model, by_block = dense(session), modules_by_block(session.space)
    lm = session.space.task == "causal_lm"

    def loss(batch, reference):
        if lm:
            logp = torch.log_softmax(model(input_ids=batch, use_cache=False).logits.double(), -1)
            return float(-logp[:, :-1].gather(-1, batch[:, 1:, None]).mean())
        h = model(input_ids=batch).last_hidden_state.double()
        return float(((h * reference).sum(-1) / (reference**2).sum(-1)).mean())

    importance = np.zeros(len(by_block))
    with torch.no_grad():
        for i, batch in enumerate(session.calib_tokens.split(session.config.batch_size)[:batches]):
            reference = None if lm else model(input_ids=batch).last_hidden_state.double()
            m = 0
            for b, paths in enumerate(by_block):
                modules = [get_module(model, path) for path in paths]
                originals = [module.weight for module in modules]
                directions = [direction(w.shape, 0, m + j, i) for j, w in enumerate(originals)]
                losses = []
                for sign in (1, -1):
                    for module, w, z in zip(modules, originals, directions):
                        module.weight = nn.Parameter(w + sign * eps * z, requires_grad=False)
                    losses.append(loss(batch, reference))
                for module, w in zip(modules, originals):
                    module.weight = w
                importance[b] += abs(losses[0] - losses[1]) / (2 * eps)
                m += len(paths)
    return importance


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_zeroth_order_equals_whole_model_forwards(family, sessions):
    session = sessions(family)
    model = dense(session)
    fast = zeroth_order(model, session.space, session.calib_tokens, session.calib_pass, batches=2,
                        threads=session.config.threads)
    np.testing.assert_allclose(fast, whole_model_zeroth_order(session, batches=2), rtol=1e-4)


def test_signals_leave_the_model_unchanged_and_repeat_exactly(sessions):
    session = sessions("llama")
    model, space, tokens, threads = dense(session), session.space, session.calib_tokens, session.config.threads
    before = weights_hash(model)
    parameters = {name: p for name, p in model.named_parameters()}

    def measure():
        stats = layer_inputs(model, space, tokens, batch_size=4, threads=threads)
        return [wanda_median(model, space, stats), wifv(model, space, stats),
                block_angles(model, space, tokens, batch_size=4, threads=threads),
                zeroth_order(model, space, tokens, session.calib_pass, batches=2, threads=threads)]

    first, second = measure(), measure()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert weights_hash(model) == before
    assert all(p is parameters[name] for name, p in model.named_parameters())  # the same objects put back
