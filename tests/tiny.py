"""Tiny random models of every supported family, built from configs (no network)."""

from __future__ import annotations

from pathlib import Path

import torch

from allocsearch.data import ByteTokenizer
from allocsearch.models import save_tokenizer

FAMILIES = ("gpt2", "opt", "llama", "qwen2", "bert")


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
    elif family == "llama":
        model = t.LlamaForCausalLM(t.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2, bos_token_id=10,
                                                 eos_token_id=10, **common))
    elif family == "qwen2":
        model = t.Qwen2ForCausalLM(t.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=4, bos_token_id=10,
                                                 eos_token_id=10, **common))
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
