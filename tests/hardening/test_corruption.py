"""Flipped bytes and truncation of every kind of cache and state file.

A cache file (supernet blocks and manifest, dense-pass arrays and manifest, error tables, the default
model's files) that does not verify is rebuilt, never used: the search ends exactly as on an intact
cache. A state file (checkpoint, planner, result) cannot be rebuilt: it is refused with one clear line
and exit 2, and left as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

from allocsearch import Planner, Session, _io, search
from allocsearch.app import checkpoint
from allocsearch.model.default_model import TrainConfig, default_model_dir

from ..tiny import tiny_args, tiny_config
from .conftest import cli

DAMAGE = ("flip", "truncate")


def damage(path, how: str) -> None:
    """Flip 16 bytes in the middle of the file, or cut off its second half."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if how == "flip":
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    else:
        del data[middle:]
    path.write_bytes(bytes(data))


def _search(model, cache):
    return search("flops=0.6", method="dp", seed=0, config=tiny_config(model, cache, table="exact"), progress=False)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, _search(model, cache)


def _only(pattern, cache):
    found = [p for p in cache.glob(pattern) if not p.name.startswith(".")]
    assert found, pattern
    return max(found, key=lambda p: p.stat().st_size)


CACHE_FILES = {  # the largest file of each kind
    "supernet block": "supernet/*/block-*.safetensors",
    "supernet manifest": "supernet/*/manifest.json",
    "dense-pass array": "dense/*/[!m]*",
    "dense-pass manifest": "dense/*/manifest.json",
    "error table": "tables/*.npz",
}


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("kind", CACHE_FILES)
def test_a_damaged_cache_file_is_rebuilt_and_the_search_unchanged(model, reference, tmp_path, kind, how, caplog):
    cache, want = reference
    shutil.copytree(cache, tmp_path / "cache")
    target = _only(CACHE_FILES[kind], tmp_path / "cache")
    intact = target.read_bytes()
    damage(target, how)
    with caplog.at_level(logging.WARNING, logger="allocsearch"):
        got = _search(model, tmp_path / "cache")
    assert "corrupt" in caplog.text
    assert (got.levels, got.fitness, got.heldout) == (want.levels, want.fitness, want.heldout)
    if target.name == "manifest.json":  # rebuilt (with this build's timings) and verified
        assert _io.verify_manifest(target.parent, json.loads(target.read_text())["format"]) is not None
    else:
        assert target.read_bytes() == intact  # rebuilt bit for bit


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "training.json"])
def test_a_damaged_default_model_is_trained_again(tmp_path, name, how, caplog):
    recipe = TrainConfig(n_layer=1, n_embd=16, n_head=2, n_inner=32, seq_len=16, batch=2, steps=2)
    path = default_model_dir(tmp_path, recipe, progress=False)
    intact = (path / name).read_bytes()
    damage(path / name, how)
    with caplog.at_level(logging.WARNING, logger="allocsearch"):
        assert default_model_dir(tmp_path, recipe, progress=False) == path
    assert "corrupt" in caplog.text
    assert (path / name).read_bytes() == intact if name != "training.json" else _io.verify_manifest(path, 1)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(run, flag: str) -> None:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1 and lines[0].startswith("allocsearch: error:") and flag in lines[0], run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_checkpoint_is_refused(model, reference, tmp_path, how):
    path = tmp_path / "search.checkpoint.npz"
    history = [{"levels": [0, 1, 0, 1], "fidelity": 1.0, "fitness": 0.5, "round": 0}]
    checkpoint.save(path, "identity", 0, checkpoint.Saved({"seen": np.zeros((3, 4), dtype=np.int16)}, history, [],
                                                         {}, 0.0))
    damage(path, how)
    before = _digest(path)
    run = cli("search", *tiny_args({"gpt2": model}, reference[0]), "--budget", "flops=0.6", "--method", "evolution",
              "--seed", "0", "--resume", "--checkpoint", str(path), "--out", str(tmp_path / "r.json"))
    _refused(run, "--checkpoint")
    assert _digest(path) == before and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_planner_is_refused(model, reference, tmp_path, how):
    path = tmp_path / "planner.npz"
    Planner.from_session(Session(tiny_config(model, reference[0], table="exact"), progress=False)).save(path)
    damage(path, how)
    before = _digest(path)
    _refused(cli("query", "--planner", str(path), "--budget", "flops=0.5"), "--planner")
    assert _digest(path) == before


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_result_is_refused(reference, tmp_path, how):
    path = tmp_path / "result.json"
    reference[1].save(path)
    damage(path, how)
    before = _digest(path)
    _refused(cli("export", "--result", str(path), "--out", str(tmp_path / "pruned")), "--result")
    assert _digest(path) == before and not (tmp_path / "pruned").exists()


def test_read_npz_turns_any_damage_into_value_error(tmp_path):
    """Every single-byte flip of a small `.npz` reads back intact (a flip in a field nobody reads) or
    raises ValueError; never another exception, never other values."""
    path = tmp_path / "x.npz"
    table = np.arange(12.0).reshape(3, 4)
    _io.write_npz(path, {"a": 1}, {"table": table})
    intact = path.read_bytes()
    refused = 0
    for offset in range(len(intact)):
        data = bytearray(intact)
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            meta, arrays = _io.read_npz(path)
        except ValueError:
            refused += 1
            continue
        assert meta == {"a": 1} and np.array_equal(arrays["table"], table), offset
    assert refused > len(intact) // 2
