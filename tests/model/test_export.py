from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from allocsearch import (
    ConfigError,
    InputFileError,
    SpaceError,
    export,
    load_pruned,
    search,
)
from allocsearch.model._modules import RemovedSublayer

CASES = [(f, "structured") for f in ("gpt2", "opt", "llama", "qwen2", "bert")] + \
        [(f, "unstructured") for f in ("gpt2", "opt", "llama", "bert")]


def outputs(model, tokens):
    out = model(input_ids=tokens, **({"use_cache": False} if hasattr(model, "lm_head") else {}))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("family,granularity", CASES)
def test_export_equals_composed_candidate(family, granularity, sessions, tmp_path):
    session = sessions(family, granularity)
    tokens = session.heldout_tokens[:4]
    rng = np.random.default_rng(3)
    for i, levels in enumerate([rng.integers(0, session.space.n_levels) for _ in range(2)] + [session.space.n_levels - 1]):
        with torch.no_grad():
            composed = outputs(session.evaluator.compose(levels), tokens).clone()
            pruned = load_pruned(session.export(levels, tmp_path / str(i)))
            assert (outputs(pruned, tokens) - composed).abs().max() <= 1e-4
        meta = json.loads((tmp_path / str(i) / "allocation.json").read_text())
        assert meta["levels"] == session.space.levels_dict(levels)


def test_structured_export_is_physically_smaller(sessions, tmp_path):
    session = sessions("gpt2")
    levels = np.array([2, 8, 4, 16])  # block 1 loses its whole attention and MLP
    model = load_pruned(session.export(levels, tmp_path / "x"))
    block0, block1 = model.transformer.h
    assert block0.attn.c_attn.weight.shape == (32, 3 * 16)  # 2 of 4 heads of width 8, q|k|v
    assert block0.attn.split_size == 16
    assert block0.mlp.c_fc.weight.shape == (32, 32)
    assert isinstance(block1.attn, RemovedSublayer) and isinstance(block1.mlp, RemovedSublayer)
    assert not any("h.1.attn.c_attn" in name for name, _ in model.named_parameters())


def test_llama_export_keeps_grouped_query_attention_valid(sessions, tmp_path):
    session = sessions("llama")
    model = load_pruned(session.export(np.array([1, 0, 0, 0]), tmp_path / "x"))
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (16, 32) and attn.k_proj.weight.shape == (8, 32)
    assert attn.num_key_value_groups == 2
    generated = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)  # the KV cache works with per-layer head counts


def test_export_from_a_result_file(model_dirs, cache_dir, tmp_path):
    from ..tiny import tiny_config

    result = search("flops=0.6", config=tiny_config(model_dirs["opt"], cache_dir), seed=0, progress=False,
                    out=tmp_path / "result.json")
    out = export(tmp_path / "result.json", tmp_path / "pruned", progress=False)
    assert json.loads((out / "result.json").read_text())["levels"] == result.levels
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["allocation.json", "config.json", "model.safetensors", "modeling_pruned.py", "recipes", "result.json",
         "space.yaml", "allocsearch_tokenizer.json"])
    assert sorted(p.name for p in (out / "recipes").iterdir()) == ["nni_config_list.json", "torch_pruning_ratios.json"]
    nni = export(tmp_path / "result.json", tmp_path / "nni.json", export_format="nni", model="/nowhere")  # no model read
    assert nni == tmp_path / "nni.json" and nni.read_text() == (out / "recipes" / "nni_config_list.json").read_text()
    with pytest.raises(ConfigError, match="export_format='onnx' is not a format; choose one of hf, compressed"):
        export(tmp_path / "result.json", tmp_path / "x", export_format="onnx")
    with pytest.raises(ConfigError, match="export_format='compressed' writes unstructured allocations"):
        export(tmp_path / "result.json", tmp_path / "x", export_format="compressed", model="/nowhere")  # no model read
    with pytest.raises(SpaceError, match="pass the model the search used as model=PATH"):
        export(tmp_path / "result.json", tmp_path / "other", model=str(model_dirs["gpt2"]), progress=False)


def test_load_pruned_names_a_wrong_directory(tmp_path):
    with pytest.raises(InputFileError, match="holds no allocation.json"):
        load_pruned(tmp_path)


def test_export_never_replaces_a_foreign_directory(sessions, tmp_path):
    session = sessions("gpt2")
    precious = tmp_path / "models"
    precious.mkdir()
    (precious / "weights.bin").write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not an allocsearch export"):
        session.export(np.zeros(4, dtype=int), precious)
    assert (precious / "weights.bin").read_text() == "keep me"
    session.export(np.zeros(4, dtype=int), tmp_path / "new")
    session.export(np.ones(4, dtype=int), tmp_path / "new")  # an earlier export is replaced
    assert json.loads((tmp_path / "new" / "allocation.json").read_text())["levels"]["transformer.h.0.heads"] == 1
