"""NVIDIA's DeciLM / Nemotron-NAS checkpoint format (`model_type: nemotron-nas`), which vLLM loads natively.

A DeciLM model is a Llama whose blocks differ. Per block, `config.json`'s `block_configs` holds
`{"attention": {"no_op", "replace_with_linear", "n_heads_in_group"}, "ffn": {"no_op",
"replace_with_linear", "ffn_mult"}}`: attention has every query head (`num_attention_heads`) and
`num_attention_heads // n_heads_in_group` key/value heads, or is skipped (`no_op`: no
`input_layernorm`, no `self_attn.*`); the MLP is `intermediate_size(ffn_mult, hidden_size)` wide, or
is skipped (no `post_attention_layernorm`, no `mlp.*`). Tensor names are Llama's.

A structured allocation fits when each block keeps all its heads or none (query heads are global,
so a key/value head cannot go with its query heads) and each MLP a multiple of 256 channels, or
none: `LevelGrid(fit="decilm")` searches only those (see `check_space`).

vLLM reads the block configs as attributes (`block.attention.no_op`), which a config class makes of
the dicts: an export ships its own as `configuration_decilm.py` (`CONFIG_MODULE`), named in
`auto_map`; load it with `trust_remote_code=True`. Read from vLLM's
`vllm/model_executor/models/nemotron_nas.py` and NVIDIA's `configuration_decilm.py`,
`block_config.py` and `modeling_decilm.py` (nvidia/Llama-3_1-Nemotron-51B-Instruct).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.space import FITS, SearchSpace
from ..errors import ConfigError, SpaceError

MULTIPLE = FITS["decilm"]  # MLP widths are rounded up to a multiple of this
MODEL_TYPES = ("llama", "mistral")  # same tensors as DeciLM's blocks (Qwen2's q/k/v biases are not)
CONFIG_FILE = "configuration_decilm.py"  # the name `auto_map` gives the config class's file
CONFIG_MODULE = Path(__file__).with_name("_decilm_config.py")  # its text, copied to CONFIG_FILE
AUTO_MAP = {"AutoConfig": "configuration_decilm.DeciLMConfig"}
FIX = "search with fit='decilm', which keeps only the levels this format expresses"


def intermediate_size(ffn_mult: float, hidden: int) -> int:
    """The MLP width DeciLM gives `ffn_mult`: `int(2 * ffn_mult * hidden / 3)` rounded up to a multiple of 256.

    For example::

        intermediate_size(5.25, 8192)  # 28672
    """
    width = int(2 * ffn_mult * hidden / 3)
    return -(-width // MULTIPLE) * MULTIPLE


def ffn_mult(width: int, hidden: int) -> float | None:
    """The `ffn_mult` (6 decimals, as NVIDIA's `FFNConfig` rounds it) whose width is `width`, or None.

    For example::

        ffn_mult(28672, 8192)  # 5.25
    """
    for target in (width, width - MULTIPLE / 2):  # the exact ratio, else the middle of its 256 interval
        mult = round(3 * target / (2 * hidden), 6)
        if width > 0 and intermediate_size(mult, hidden) == width:
            return mult
    return None


def check_space(config, space: SearchSpace) -> None:
    """Raise unless every level of `space` (on a model with `config`) has a DeciLM shape.

    For example::

        check_space(model.config, space_from_model(model, grid=LevelGrid(fit="decilm")))
    """
    _check_source(config, space, "fit='decilm'", "drop fit= or use a Llama or Mistral model")
    hidden = int(config.hidden_size)
    for unit in space.units:
        if unit.kind != "channels":
            continue
        if unit.groups % MULTIPLE:
            raise SpaceError(f"fit='decilm': {unit.name} has {unit.groups} MLP channels, not a multiple of "
                             f"{MULTIPLE}, so even the dense model has no DeciLM shape; drop fit=")
        for count in unit.counts:
            width = unit.groups - count
            if width and ffn_mult(width, hidden) is None:
                raise SpaceError(f"fit='decilm': no ffn_mult gives {unit.name} its width {width} at hidden "
                                 f"size {hidden}; drop fit=")


def decilm_checkpoint(config, space: SearchSpace, levels: np.ndarray,
                      state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """The DeciLM `config.json` and tensors of `levels`, from the composed model's `state_dict()`.

    `config` is the source model's config: its vocabulary, norms, rope and tied embeddings are
    kept; `torch_dtype` is the tensors'. Write the dict as `config.json`, the tensors as `model.safetensors` and
    `CONFIG_MODULE` as `configuration_decilm.py`.

    For example::

        composer.apply(levels)
        config, tensors = decilm_checkpoint(model.config, space, levels, model.state_dict())
        safetensors.torch.save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    """
    _check_source(config, space, "the DeciLM export", "export it in the normal format")
    space.check(levels)
    blocks = [{"attention": {"no_op": False, "replace_with_linear": False,
                             "n_heads_in_group": int(config.num_attention_heads) // _kv_heads(config)},
               "ffn": {"no_op": False, "replace_with_linear": False, "ffn_mult": None}}
              for _ in range(int(config.num_hidden_layers))]
    for unit, level in zip(space.units, np.asarray(levels)):
        kept = unit.groups - unit.counts[int(level)]
        block = blocks[unit.block]
        if unit.kind == "heads":
            if 0 < kept < unit.groups:
                raise ConfigError(f"{unit.name} keeps {kept} of {unit.groups} key/value heads; DeciLM keeps a "
                                  f"block's attention whole or removes it (its query heads are global); {FIX}")
            if kept == 0:
                block["attention"] = {"no_op": True, "replace_with_linear": False, "n_heads_in_group": None}
        elif kept == 0:
            block["ffn"] = {"no_op": True, "replace_with_linear": False, "ffn_mult": None}
        else:
            block["ffn"]["ffn_mult"] = ffn_mult(kept, int(config.hidden_size))
            if block["ffn"]["ffn_mult"] is None:
                raise ConfigError(f"{unit.name} keeps {kept} of {unit.groups} MLP channels, not a multiple of "
                                  f"{MULTIPLE}; DeciLM MLP widths are; {FIX}")
    tensors = _tensors(config, blocks, state_dict)
    return _config(config, blocks, next(iter(tensors.values())).dtype), tensors


def _kv_heads(config) -> int:
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


def _check_source(config, space: SearchSpace, what: str, fix: str) -> None:
    model_type = getattr(config, "model_type", None)
    if space.family != "llama" or model_type not in MODEL_TYPES:
        raise ConfigError(f"{what} needs a Llama or Mistral model (model_type {' or '.join(MODEL_TYPES)}); this is "
                          f"model_type {model_type!r} in the {space.family!r} space; {fix}")
    if space.granularity != "structured":
        raise ConfigError(f"{what} needs granularity='structured' (DeciLM blocks are narrower, not sparse); "
                          f"this space is {space.granularity!r}")
    window = getattr(config, "sliding_window", None)
    if window is not None and window < int(config.max_position_embeddings):
        raise ConfigError(f"{what}: the model attends over a sliding window of {window} tokens, which DeciLM's "
                          f"config does not carry; {fix}")


def _tensors(config, blocks: list[dict], state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the norms and weights of skipped sublayers (and a tied head)."""
    skipped = []
    for b, block in enumerate(blocks):
        if block["attention"]["no_op"]:
            skipped += [f"model.layers.{b}.input_layernorm.", f"model.layers.{b}.self_attn."]
        if block["ffn"]["no_op"]:
            skipped += [f"model.layers.{b}.post_attention_layernorm.", f"model.layers.{b}.mlp."]
    tensors = {}
    for name, tensor in state_dict.items():
        if name.endswith(".out_bias") and any(name.startswith(s) for s in skipped):
            raise ConfigError(f"{name.rsplit('.', 1)[0]} is removed but adds a constant bias, which a DeciLM no_op "
                              "sublayer cannot; export it in the normal format")
        if any(name.startswith(s) for s in skipped) or name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        tensors[name] = tensor.detach().contiguous()
    return tensors


def _rope(config) -> tuple[float, dict | None]:
    """`rope_theta` and `rope_scaling`, as DeciLM's (transformers 4) config holds them."""
    params = getattr(config, "rope_parameters", None)  # transformers 5
    if params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        return float(params["rope_theta"]), None if scaling.get("rope_type", "default") == "default" else scaling
    return float(config.rope_theta), getattr(config, "rope_scaling", None)


def _config(config, blocks: list[dict], dtype: torch.dtype) -> dict:
    out = config.to_dict()
    for key in ("rope_parameters", "auto_map", "transformers_version", "_name_or_path", "sliding_window"):
        out.pop(key, None)
    theta, scaling = _rope(config)
    name = str(dtype).removeprefix("torch.")
    out.update(model_type="nemotron-nas", architectures=["DeciLMForCausalLM"], auto_map=dict(AUTO_MAP),
               block_configs=blocks, intermediate_size=None, num_key_value_heads=None, rope_theta=theta,
               rope_scaling=scaling, torch_dtype=name, dtype=name)
    return out
