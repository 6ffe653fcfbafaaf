from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from allocsearch import load_pruned

FAMILIES = ["gpt2", "opt", "llama", "qwen2", "bert"]


def allocations(space, seed=0):
    """Dense, everything removed, and random allocations."""
    rng = np.random.default_rng(seed)
    yield np.zeros(space.n_units, dtype=int)
    yield space.n_levels - 1
    for _ in range(3):
        yield rng.integers(0, space.n_levels)


def counted_flops_per_token(model, seq_len: int) -> float:
    tokens = torch.randint(0, 256, (2, seq_len))
    kwargs = {"use_cache": False} if hasattr(model, "lm_head") else {}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=tokens, **kwargs)
    return counter.get_total_flops() / tokens.numel()


@pytest.mark.parametrize("family", FAMILIES)
def test_flops_match_flop_counter_on_exported_models(family, sessions, tmp_path):
    session = sessions(family)
    for i, levels in enumerate(allocations(session.space)):
        out = session.export(levels, tmp_path / f"{i}")
        model = load_pruned(out, attn_implementation="eager")  # CPU SDPA counts as 0 FLOPs
        predicted = session.costs.total(levels)["flops"]
        assert counted_flops_per_token(model, session.costs.seq_len) == pytest.approx(predicted, rel=0.01)


@pytest.mark.parametrize("family", FAMILIES)
def test_params_match_exported_models_exactly(family, sessions, tmp_path):
    session = sessions(family)
    for i, levels in enumerate(allocations(session.space, seed=1)):
        model = load_pruned(session.export(levels, tmp_path / f"{i}"))
        count = sum(p.numel() for p in model.parameters())  # tied weights appear once
        assert count == session.costs.total(levels)["params"]
        assert session.costs.total(levels)["bytes"] == 4 * count  # float32


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_unstructured_costs_count_nonzeros(family, sessions, tmp_path):
    session = sessions(family, "unstructured")
    costs, space = session.costs, session.space
    levels = np.random.default_rng(2).integers(0, space.n_levels)
    model = load_pruned(session.export(levels, tmp_path / "x"))
    nonzero = sum(int((model.get_submodule(u.module).weight != 0).sum()) for u in space.units)
    unit_params = costs.unit_costs(levels)["params"].sum()
    assert nonzero == unit_params
    assert costs.unit_costs(levels)["flops"].sum() == 2 * nonzero


def test_unstructured_bytes_take_the_cheapest_format(sessions):
    costs = sessions("gpt2", "unstructured").costs
    table = costs.tables["bytes"][0]  # c_attn: 96 x 32 weights, float32
    dense = 96 * 32 * 4
    assert table[0] == dense  # dense is cheapest when nothing is removed
    nnz = 96 * (32 - 30)  # level 15 removes 30 of 32 per row
    bitmask, csr = 96 * 32 // 8 + nnz * 4, nnz * 8 + 97 * 4
    assert table[15] == min(dense, bitmask, csr) == bitmask
    assert (np.diff(table[np.isfinite(table)]) <= 0).all()


def test_costs_are_monotone_in_level(sessions):
    costs = sessions("llama").costs
    for metric, table in costs.tables.items():
        for row in table:
            finite = row[np.isfinite(row)]
            assert (np.diff(finite) < 0).all(), metric
