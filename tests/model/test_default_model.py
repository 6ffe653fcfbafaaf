from __future__ import annotations

import json

from allocsearch.model.default_model import TrainConfig, default_model_dir

SMALL = TrainConfig(n_layer=1, n_embd=32, n_head=2, n_inner=64, seq_len=32, batch=16, steps=300, lr=1e-2)


def test_small_recipe_learns_structure_and_is_deterministic(tmp_path):
    first = default_model_dir(tmp_path / "a", SMALL, progress=False)
    second = default_model_dir(tmp_path / "b", SMALL, progress=False)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    report = json.loads((first / "training.json").read_text())
    assert report["heldout_perplexity"] < 0.6 * report["unigram_perplexity"]  # far better than byte frequencies
    assert (first / "allocsearch_tokenizer.json").is_file()


def test_cached_after_first_run(tmp_path):
    path = default_model_dir(tmp_path, SMALL, progress=False)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert default_model_dir(tmp_path, SMALL, progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
