"""What the tests share: tiny random models of every family (built from configs, no network), their
run configuration and CLI flags, a synthetic problem with no model, a free port."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch

from allocsearch import CostModel, Problem, RunConfig, SearchSpace, Unit
from allocsearch.model.data import ByteTokenizer
from allocsearch.model.loading import save_tokenizer

FAMILIES = ("gpt2", "opt", "llama", "qwen2", "bert")
EXPORT_FAMILIES = (*FAMILIES, "mistral", "roberta")  # every model type of searchspaces/, for the exports
DECODERS = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}  # the Llama layout's model types


def tiny_model(family: str) -> torch.nn.Module:
    """A two-block model with 4 heads and 64 MLP channels; Llama with grouped-query attention."""
    import transformers as t

    torch.manual_seed(0)
    common = dict(vocab_size=256, max_position_embeddings=64)
    if family == "gpt2":
        model = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                n_inner=64, bos_token_id=10, eos_token_id=10))
    elif family == "opt":  # word_embed_proj_dim != hidden_size: project_in/out are constant cost
        model = t.OPTForCausalLM(t.OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                                             word_embed_proj_dim=16, bos_token_id=10, eos_token_id=10,
                                             pad_token_id=1, **common))
    elif family in DECODERS:  # Llama and Mistral with grouped-query attention, Qwen2 without
        name = DECODERS[family]
        config = getattr(t, f"{name}Config")(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=4 if family == "qwen2" else 2,
                                             bos_token_id=10, eos_token_id=10, **common)
        model = getattr(t, f"{name}ForCausalLM")(config)
    elif family == "roberta":
        model = t.RobertaModel(t.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=64, vocab_size=256, max_position_embeddings=66,
                                               pad_token_id=1))
    elif family == "bert":
        model = t.BertModel(t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, **common))
    else:
        raise ValueError(family)
    with torch.no_grad():  # larger weights than the default init, so pruning visibly matters
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[-1] ** -0.5)
    return model.eval()


def save_tiny(family: str, directory: Path) -> Path:
    model = tiny_model(family)
    model.save_pretrained(directory)
    save_tokenizer(ByteTokenizer(), directory)
    return directory


def tiny_config(model_dir, cache_dir, **overrides) -> RunConfig:
    options = dict(model=str(model_dir), seq_len=16, calib_sequences=8, heldout_sequences=8, batch_size=4,
                   cache_dir=str(cache_dir), device="cpu")
    return RunConfig(**{**options, **overrides})


def tiny_args(model_dirs, cache_dir, family="gpt2"):
    return ["--model", str(model_dirs[family]), "--seq-len", "16", "--calib-sequences", "8",
            "--heldout-sequences", "8", "--cache", str(cache_dir), "--device", "cpu"]


def synthetic_problem(seed: int, n_units: int = 6, budget: float = 0.5) -> Problem:
    """Units with random level counts and random decreasing costs, and every signal; no model needed."""
    rng = np.random.default_rng(seed)
    units, width = [], 0
    for u in range(n_units):
        groups = int(rng.integers(2, 20))
        counts = tuple(sorted(set(rng.integers(1, groups + 1, size=int(rng.integers(1, 6))).tolist()) | {0}))
        units.append(Unit(name=f"u{u}", kind="channels", block=u, groups=groups, counts=counts))
        width = max(width, len(counts))
    tables = {}
    for metric in ("flops", "params", "bytes"):
        table = np.full((n_units, width), np.inf)
        for u, unit in enumerate(units):
            dense = rng.uniform(1, 100)
            table[u, : unit.n_levels] = dense * (1 - np.asarray(unit.counts) / unit.groups) * rng.uniform(0.5, 1)
            table[u, 0] = dense
        tables[metric] = table
    costs = CostModel(tables, {"flops": rng.uniform(0, 50), "params": 0.0, "bytes": 0.0}, 1, 4)
    space = SearchSpace("synthetic", "causal_lm", "structured", tuple(units), {})
    limit = costs.minimum["flops"] + budget * (costs.dense["flops"] - costs.minimum["flops"])
    errors = np.full((n_units, width), np.inf)
    for u, unit in enumerate(units):  # increasing with the level, 0 when dense
        errors[u, : unit.n_levels] = np.cumsum(np.r_[0, rng.exponential(1, unit.n_levels - 1)]) * rng.uniform(0.1, 3)
    signals = {"outlier_ratios": rng.uniform(0, 0.1, n_units),  # per block: each unit is its own block
               "zeroth_order": rng.uniform(0.1, 2, n_units), "block_angles": rng.uniform(0.05, 0.5, n_units),
               "wanda_median": rng.uniform(0.01, 1, n_units),
               "wifv": np.full((n_units, max(u.groups for u in units)), np.nan)}  # NaN past a unit's groups
    for u, unit in enumerate(units):  # standardised within the unit, as FLAP's scores
        z = rng.standard_normal(unit.groups)
        signals["wifv"][u, : unit.groups] = (z - z.mean()) / z.std()
    return Problem(space, costs, {"flops": limit}, errors=errors, signals=signals)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
