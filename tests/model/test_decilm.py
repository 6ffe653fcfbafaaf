"""The DeciLM / Nemotron-NAS export: the restricted grid, the written config and tensors against the
format's definition (vLLM's nemotron_nas.py), and a reference forward of that definition."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from allocsearch import (
    Budget,
    ConfigError,
    InputFileError,
    RunConfig,
    Session,
    SpaceError,
    load_pruned,
    search,
)
from allocsearch.core.space import LevelGrid
from allocsearch.model.build import space_from_model
from allocsearch.model.data import ByteTokenizer
from allocsearch.model.decilm import CONFIG_FILE, CONFIG_MODULE, decilm_checkpoint
from allocsearch.model.loading import save_tokenizer

from ..tiny import tiny_config, tiny_model

HIDDEN, WIDTH, BLOCKS, HEADS, KV = 64, 1024, 4, 4, 2
HEAD_DIM = HIDDEN // HEADS


def find_multiple(n: int, k: int) -> int:
    """DeciLM's `_find_multiple`: n rounded up to a multiple of k."""
    return n if n % k == 0 else n + k - n % k


def decilm_width(ffn_mult: float) -> int:
    return find_multiple(int(2 * ffn_mult * HIDDEN / 3), 256)


def decilm_model(**overrides) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    options = {"hidden_size": HIDDEN, "intermediate_size": WIDTH, "num_hidden_layers": BLOCKS,
               "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": 256,
               "max_position_embeddings": 64, "bos_token_id": 10, "eos_token_id": 10, "rope_theta": 500000.0}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**options, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[-1] ** -0.5)
            else:  # norms that are not all ones, so a dropped or misplaced norm shows
                p.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def session(tmp_path_factory, cache_dir):
    directory = tmp_path_factory.mktemp("decilm_model")
    decilm_model().save_pretrained(directory)
    save_tokenizer(ByteTokenizer(), directory)
    return Session(tiny_config(directory, cache_dir, fit="decilm", build_sequences=128), progress=False)


def by_kind(space, levels):
    """Kept heads and kept channels per block."""
    kept = {(u.block, u.kind): u.groups - u.counts[k] for u, k in zip(space.units, levels)}
    return [kept[b, "heads"] for b in range(BLOCKS)], [kept[b, "channels"] for b in range(BLOCKS)]


def mixed_levels(space) -> np.ndarray:
    """Block 0 loses its attention and keeps 512 channels, block 1 loses its MLP, block 2 both, block 3 stays dense."""
    wanted = {(0, "heads"): KV, (0, "channels"): 512, (1, "channels"): WIDTH, (2, "heads"): KV, (2, "channels"): WIDTH}
    return np.array([u.counts.index(wanted.get((u.block, u.kind), 0)) for u in space.units])


def test_the_fitted_grid_keeps_attention_whole_and_widths_on_256(session):
    space = session.space
    assert space.grid.fit == "decilm"
    for unit in space.units:
        if unit.kind == "heads":
            assert unit.counts == (0, KV)
        else:
            kept = [unit.groups - c for c in unit.counts]
            assert kept == [1024, 768, 512, 256, 0]
    plain = space_from_model(session.model, grid=LevelGrid())
    assert plain.units[0].counts == (0, 1, 2) and len(plain.units[1].counts) == 17
    assert plain.id != space.id


def test_the_fit_is_kept_by_refined_grids_and_saved_grids(session):
    refined = session.space.refined(session.space.nearest_levels(0.5), step=1 / 64)
    assert refined.grid.fit == "decilm"
    for unit in refined.units:
        assert unit.counts == (0, KV) if unit.kind == "heads" else all(c % 256 == 0 for c in unit.counts)
    assert LevelGrid(**session.space.to_dict()["grid"]) == session.space.grid


def test_a_search_in_the_fitted_space_stays_within_budget_and_fits(session):
    budget = Budget.parse("flops=0.5")
    result = search(budget, session=session, method="dp", seed=0, progress=False)
    levels = session.space.levels_from_dict(result.levels)
    assert result.cost["flops_ratio"] <= 0.5 and result.config["fit"] == "decilm"
    heads, widths = by_kind(session.space, levels)
    assert all(h in (0, KV) for h in heads) and all(w % 256 == 0 for w in widths)
    assert sum(widths) < BLOCKS * WIDTH
    session.composer.apply(levels)
    config, _ = decilm_checkpoint(session.model.config, session.space, levels, session.model.state_dict())
    assert [decilm_width(b["ffn"]["ffn_mult"]) if not b["ffn"]["no_op"] else 0 for b in config["block_configs"]] == widths


def test_config_and_tensors_follow_the_format(session):
    space = session.space
    levels = mixed_levels(space)
    session.composer.apply(levels)
    config, tensors = decilm_checkpoint(session.model.config, space, levels, session.model.state_dict())
    assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
    assert config["auto_map"] == {"AutoConfig": "configuration_decilm.DeciLMConfig"}
    assert config["rope_theta"] == 500000.0 and config["rope_scaling"] is None and "rope_parameters" not in config
    assert config["intermediate_size"] is None and config["num_key_value_heads"] is None
    assert config["torch_dtype"] == "float32" and config["tie_word_embeddings"] is False
    assert config["num_attention_heads"] == HEADS and config["hidden_size"] == HIDDEN and config["vocab_size"] == 256
    blocks = config["block_configs"]
    assert len(blocks) == config["num_hidden_layers"] == BLOCKS
    heads, widths = by_kind(space, levels)
    assert heads == [0, KV, 0, KV] and widths == [512, 0, 0, WIDTH]
    expected = {"model.embed_tokens.weight": (256, HIDDEN), "model.norm.weight": (HIDDEN,), "lm_head.weight": (256, HIDDEN)}
    for b, block in enumerate(blocks):
        at, attention, ffn = f"model.layers.{b}", block["attention"], block["ffn"]
        assert set(attention) == {"no_op", "replace_with_linear", "n_heads_in_group"}
        assert set(ffn) == {"no_op", "replace_with_linear", "ffn_mult"}
        assert attention["no_op"] == (heads[b] == 0) and ffn["no_op"] == (widths[b] == 0)
        if not attention["no_op"]:
            kv = HEADS // attention["n_heads_in_group"]
            expected |= {f"{at}.input_layernorm.weight": (HIDDEN,),
                         f"{at}.self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
                         f"{at}.self_attn.k_proj.weight": (kv * HEAD_DIM, HIDDEN),
                         f"{at}.self_attn.v_proj.weight": (kv * HEAD_DIM, HIDDEN),
                         f"{at}.self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM)}
        else:
            assert attention["n_heads_in_group"] is None
        if not ffn["no_op"]:
            width = decilm_width(ffn["ffn_mult"])
            assert width == widths[b]
            expected |= {f"{at}.post_attention_layernorm.weight": (HIDDEN,),
                         f"{at}.mlp.gate_proj.weight": (width, HIDDEN), f"{at}.mlp.up_proj.weight": (width, HIDDEN),
                         f"{at}.mlp.down_proj.weight": (HIDDEN, width)}
        else:
            assert ffn["ffn_mult"] is None
    assert {name: tuple(t.shape) for name, t in tensors.items()} == expected
    assert all(t.is_contiguous() for t in tensors.values())


def test_the_shipped_config_class_reads_blocks_as_vllm_does(session, tmp_path):
    levels = mixed_levels(session.space)
    session.composer.apply(levels)
    config, _ = decilm_checkpoint(session.model.config, session.space, levels, session.model.state_dict())
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(CONFIG_MODULE, tmp_path / CONFIG_FILE)
    loaded = transformers.AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert loaded.model_type == "nemotron-nas" and len(loaded.block_configs) == BLOCKS
    block0, block3 = loaded.block_configs[0], loaded.block_configs[3]
    assert block0.attention.no_op and not block0.ffn.no_op and decilm_width(block0.ffn.ffn_mult) == 512
    assert HEADS // block3.attention.n_heads_in_group == KV  # vLLM's num_kv_heads
    assert loaded.to_dict()["block_configs"][1]["ffn"]["no_op"] is True
    assert loaded.to_dict()["intermediate_size"] is None


def reference_forward(config: dict, tensors: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """DeciLM from its definition: RMSNorm, rotary (neox halves), GQA attention, SwiGLU, no_op sublayers skipped."""
    def norm(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config["rms_norm_eps"]))

    def rotate(x, cos, sin):  # (batch, heads, seq, head_dim)
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    hidden, n_heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // n_heads
    batch, seq = ids.shape
    inv_freq = 1.0 / config["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).float() for f in (torch.cos, torch.sin))  # (seq, head_dim)
    causal = torch.full((seq, seq), float("-inf")).triu(1)
    x = tensors["model.embed_tokens.weight"][ids]  # (batch, seq, hidden)
    for b, block in enumerate(config["block_configs"]):
        w = {name[len(f"model.layers.{b}."):]: t for name, t in tensors.items() if name.startswith(f"model.layers.{b}.")}
        if not block["attention"]["no_op"]:
            group = block["attention"]["n_heads_in_group"]
            h = norm(x, w["input_layernorm.weight"])
            q = (h @ w["self_attn.q_proj.weight"].T).view(batch, seq, n_heads, head_dim).transpose(1, 2)
            k, v = ((h @ w[f"self_attn.{p}_proj.weight"].T).view(batch, seq, n_heads // group, head_dim).transpose(1, 2)
                    for p in ("k", "v"))
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            scores = (q @ k.transpose(-1, -2)) / head_dim ** 0.5 + causal
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, n_heads * head_dim)
            x = x + out @ w["self_attn.o_proj.weight"].T
        if not block["ffn"]["no_op"]:
            h = norm(x, w["post_attention_layernorm.weight"])
            gate, up = (h @ w[f"mlp.{p}_proj.weight"].T for p in ("gate", "up"))
            x = x + (torch.nn.functional.silu(gate) * up) @ w["mlp.down_proj.weight"].T
    head = tensors["model.embed_tokens.weight" if config["tie_word_embeddings"] else "lm_head.weight"]
    return norm(x, tensors["model.norm.weight"]) @ head.T


def test_reference_decilm_forward_equals_the_normal_export(session, tmp_path):
    levels = mixed_levels(session.space)
    tokens = session.heldout_tokens[:2]
    out = session.export(levels, tmp_path / "decilm", export_format="decilm")
    assert {"config.json", "model.safetensors", CONFIG_FILE, "allocation.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "allocation.json").read_text())["layout"] == "decilm"
    config = json.loads((out / "config.json").read_text())
    tensors = load_file(out / "model.safetensors")
    with pytest.raises(InputFileError, match="holds a decilm export; serve it with vLLM"):
        load_pruned(out)
    pruned = load_pruned(session.export(levels, tmp_path / "normal"))
    with torch.no_grad():
        expected = pruned(input_ids=tokens, use_cache=False).logits
        dense = session.evaluator.compose(np.zeros(session.space.n_units, dtype=int))(input_ids=tokens).logits
        ours = reference_forward(config, tensors, tokens)
    assert (ours - expected).abs().max() <= 1e-5
    assert (dense - expected).abs().max() > 1e-2  # the allocation changed the model


def test_the_source_settings_are_kept():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
    model = decilm_model(tie_word_embeddings=True, rope_scaling=dict(scaling), rms_norm_eps=1e-5)  # (it adds to the dict)
    model = model.to(torch.bfloat16)
    space = space_from_model(model, grid=LevelGrid(fit="decilm"))
    config, tensors = decilm_checkpoint(model.config, space, np.zeros(space.n_units, dtype=int), model.state_dict())
    assert config["tie_word_embeddings"] is True and "lm_head.weight" not in tensors
    assert config["rope_theta"] == 500000.0 and config["rope_scaling"] == scaling and config["rms_norm_eps"] == 1e-5
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert all(b["ffn"]["ffn_mult"] == 24.0 for b in config["block_configs"])  # 1024 = 2 * 24 * 64 / 3


def test_allocations_outside_the_format_are_refused():
    model = decilm_model()
    plain = space_from_model(model, grid=LevelGrid())
    state = model.state_dict()
    levels = np.zeros(plain.n_units, dtype=int)
    levels[0] = 1  # one of two key/value heads
    with pytest.raises(ConfigError, match=r"model.layers.0.heads keeps 1 of 2 key/value heads.*fit='decilm'"):
        decilm_checkpoint(model.config, plain, levels, state)
    levels[0], levels[1] = 0, 1  # 1024 - 64 channels
    with pytest.raises(ConfigError, match=r"model.layers.0.channels keeps 960 of 1024 MLP channels.*fit='decilm'"):
        decilm_checkpoint(model.config, plain, levels, state)
    fitted = space_from_model(model, grid=LevelGrid(fit="decilm"))
    levels = np.zeros(fitted.n_units, dtype=int)
    levels[0] = 1  # attention removed, but (with attention_bias) its output projection's bias stays
    biased = {**state, "model.layers.0.self_attn.out_bias": torch.zeros(HIDDEN)}
    with pytest.raises(ConfigError, match="model.layers.0.self_attn is removed but adds a constant bias"):
        decilm_checkpoint(model.config, fitted, levels, biased)
    sparse = space_from_model(model, granularity="unstructured")
    with pytest.raises(ConfigError, match="needs granularity='structured'.*'unstructured'"):
        decilm_checkpoint(model.config, sparse, np.zeros(sparse.n_units, dtype=int), state)
    gpt2 = tiny_model("gpt2")
    gpt2_space = space_from_model(gpt2)
    with pytest.raises(ConfigError, match="needs a Llama or Mistral model.*model_type 'gpt2'"):
        decilm_checkpoint(gpt2.config, gpt2_space, np.zeros(gpt2_space.n_units, dtype=int), gpt2.state_dict())


def test_spaces_the_format_cannot_hold_are_refused_when_built():
    with pytest.raises(ConfigError, match="fit='decilm' needs a Llama or Mistral model.*'gpt2'.*drop fit="):
        space_from_model(tiny_model("gpt2"), grid=LevelGrid(fit="decilm"))
    with pytest.raises(ConfigError, match="model_type 'qwen2'"):
        space_from_model(tiny_model("qwen2"), grid=LevelGrid(fit="decilm"))
    with pytest.raises(ConfigError, match="fit='decilm' needs granularity='structured'"):
        space_from_model(decilm_model(), granularity="unstructured", grid=LevelGrid(fit="decilm"))
    with pytest.raises(SpaceError, match="model.layers.0.channels has 64 MLP channels, not a multiple of 256"):
        space_from_model(tiny_model("llama"), grid=LevelGrid(fit="decilm"))
    with pytest.raises(ConfigError, match="fit='nas' is not a known export format; use one of decilm"):
        RunConfig(fit="nas")
    assert RunConfig(fit="decilm").grid().channel_step == 256
