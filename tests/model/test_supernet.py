from __future__ import annotations

import json
import logging
import os
import subprocess

import numpy as np
import pytest
import torch

from allocsearch import Session, _io
from allocsearch.model._modules import get_module, linear_weight
from allocsearch.model.pruners import get_criterion, removal_levels
from allocsearch.model.supernet import verify

from ..tiny import tiny_config


def test_removal_levels_reproduce_every_per_level_mask():
    scores = torch.rand(5, 40, generator=torch.Generator().manual_seed(0))  # distinct scores per row
    counts = (0, 3, 7, 20, 39, 40)
    removal = removal_levels(scores, counts)
    assert removal.dtype == torch.uint8 and removal.shape == scores.shape  # one small integer per weight
    for k, count in enumerate(counts):
        direct = scores <= scores.kthvalue(count, dim=1, keepdim=True).values if count else torch.zeros_like(scores, dtype=torch.bool)
        assert torch.equal(removal <= k, direct), k  # removed at level k <=> among the `count` lowest


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_unstructured_magnitude_cache_matches_per_level_masks(family, sessions):
    session = sessions(family, "unstructured", criterion="magnitude")
    for u, unit in enumerate(session.space.units):
        weight = linear_weight(get_module(session.model, unit.module)).abs()  # (out, in)
        removal = session.supernet.removal(u)
        for k, count in enumerate(unit.counts):
            removed = removal <= k
            assert (removed.sum(1) == count).all()
            if count:  # the removed weights of each row are its `count` smallest
                threshold = weight.kthvalue(count, dim=1, keepdim=True).values
                assert torch.equal(removed, weight <= threshold)


@pytest.mark.parametrize("family", ["gpt2", "opt", "llama", "bert"])
@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "lsq"])
def test_structured_masks_are_nested_with_the_grid_counts(family, criterion, sessions):
    session = sessions(family, criterion=criterion)
    for u, unit in enumerate(session.space.units):
        removal = session.supernet.removal(u)
        assert removal.shape == (unit.groups,)
        assert [(removal <= k).sum().item() for k in range(unit.n_levels)] == list(unit.counts)
        has_variants = session.supernet.variant(u, 1) is not None
        assert has_variants == get_criterion(criterion, "structured").reconstructs


def test_lsq_refit_beats_plain_slicing(sessions):
    """The refit output projection reproduces the dense block output better than the sliced one."""
    lsq, magnitude = sessions("gpt2", criterion="lsq"), sessions("gpt2", criterion="wanda")
    levels = np.array([2, 8, 2, 8])
    assert lsq.evaluator.fitness(levels) < magnitude.evaluator.fitness(levels)


def test_build_is_deterministic(model_dirs, tmp_path):
    first = Session(tiny_config(model_dirs["llama"], tmp_path / "a"), progress=False).supernet
    second = Session(tiny_config(model_dirs["llama"], tmp_path / "b"), progress=False).supernet
    assert first.key == second.key
    assert first.manifest["files"] == second.manifest["files"]  # same bytes, same checksums


def _fresh(model_dirs, cache):
    return Session(tiny_config(model_dirs["gpt2"], cache), progress=False)


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "no_manifest", "bad_manifest"])
def test_corrupt_or_partial_cache_is_detected_and_rebuilt(damage, model_dirs, tmp_path, caplog):
    built = _fresh(model_dirs, tmp_path).supernet
    reference = [built.removal(u).clone() for u in range(built.space.n_units)]
    variant = built.variant(0, 1)[0].clone()
    path = built.path
    block = path / "block-0000.safetensors"
    del built
    if damage == "flip_byte":
        data = bytearray(block.read_bytes())
        data[-5] ^= 0xFF
        block.write_bytes(bytes(data))
    elif damage == "truncate":
        block.write_bytes(block.read_bytes()[:-100])
    elif damage == "no_manifest":
        (path / "manifest.json").unlink()
    else:
        (path / "manifest.json").write_text("{not json")
    assert verify(path) is None
    with caplog.at_level(logging.WARNING):
        rebuilt = _fresh(model_dirs, tmp_path).supernet
    assert "incomplete or corrupt; rebuilding" in caplog.text
    assert verify(path) is not None
    assert all(torch.equal(rebuilt.removal(u), r) for u, r in enumerate(reference))
    assert torch.equal(rebuilt.variant(0, 1)[0], variant)


def test_leftover_temporary_build_is_ignored_and_cleaned(model_dirs, tmp_path):
    session = _fresh(model_dirs, tmp_path)
    key = session.supernet.key
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that has exited: its pid names a killed build
    stale = session.supernet.path.parent / f".{key}.{dead.pid}@{_io._HOST}.abc123.tmp"
    stale.mkdir()
    live = session.supernet.path.parent / f".{key}.{os.getpid()}@{_io._HOST}.abc123.tmp"
    live.mkdir()  # a build in progress in a live process
    (session.supernet.path / "manifest.json").unlink()  # the finished cache is gone, a crashed build remains
    _fresh(model_dirs, tmp_path).supernet
    assert not stale.exists() and live.exists()


def test_evaluations_never_write_the_cache(sessions):
    session = sessions("gpt2")
    rng = np.random.default_rng(0)
    for _ in range(10):
        session.evaluator.fitness(rng.integers(0, session.space.n_levels))
    assert verify(session.supernet.path) is not None


def test_cache_key_changes_with_what_shapes_the_cache(model_dirs, tmp_path):
    keys = {
        Session(tiny_config(model_dirs["gpt2"], tmp_path, **options), progress=False).supernet.key
        for options in ({}, {"criterion": "wanda"}, {"grid_step": 0.125}, {"build_sequences": 4},
                        {"calib_from": 0.5})
    }
    assert len(keys) == 5


def test_manifest_records_its_inputs(sessions):
    manifest = json.loads((sessions("gpt2").supernet.path / "manifest.json").read_text())
    assert set(manifest["key_parts"]) >= {"weights", "space", "criterion", "calib", "calib_from"}
    assert manifest["units"][0] == "transformer.h.0.heads"


def test_unstructured_wanda_cache_matches_per_level_masks(sessions):
    """Scores recomputed here from the layers' calibration inputs: |W_ij| * ||X_j||, per row."""
    session = sessions("gpt2", "unstructured", criterion="wanda")
    model, space = session.model, session.space
    session.composer.apply(np.zeros(space.n_units, dtype=int))
    norms, handles = {}, []
    for unit in space.units:
        module = get_module(model, unit.module)
        norms[unit.module] = 0
        handles.append(module.register_forward_pre_hook(
            lambda m, args, name=unit.module: norms.__setitem__(
                name, norms[name] + (args[0].reshape(-1, args[0].shape[-1]).double() ** 2).sum(0))))
    with torch.no_grad():
        for batch in session.calib_tokens.split(4):
            model(input_ids=batch, use_cache=False)
    for h in handles:
        h.remove()
    for u, unit in enumerate(space.units):
        scores = linear_weight(get_module(model, unit.module)).double().abs() * norms[unit.module].sqrt()
        removal = session.supernet.removal(u)
        for k, count in enumerate(unit.counts[1:], start=1):
            threshold = scores.kthvalue(count, dim=1, keepdim=True).values
            assert torch.equal(removal <= k, scores <= threshold), (unit.name, k)


def test_calibration_from_a_pruned_reference(model_dirs, cache_dir):
    dense = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False).supernet
    pruned = Session(tiny_config(model_dirs["gpt2"], cache_dir, calib_from=0.5), progress=False).supernet
    assert dense.key != pruned.key
    # block 0 sees the same inputs either way; block 1 sees those of a pruned block 0
    assert torch.equal(dense.variant(0, 2)[0], pruned.variant(0, 2)[0])
    assert torch.equal(dense.variant(1, 8)[0], pruned.variant(1, 8)[0])
    assert not torch.equal(dense.variant(2, 2)[0], pruned.variant(2, 2)[0])
    assert not torch.equal(dense.variant(3, 8)[0], pruned.variant(3, 8)[0])
