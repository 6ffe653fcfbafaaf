"""What makes an export load with plain transformers: a stock checkpoint with fewer blocks, or remote code.

A depth-only allocation (whole blocks removed, the rest dense) becomes the family's stock
checkpoint with `num_hidden_layers` lowered and the blocks renumbered. A removed block of a pre-LN
family adds a constant to the residual stream (its output projections' biases): that constant is
folded into the bias of the previous kept block's MLP output, so the outputs are unchanged. Any
other structured allocation gets `modeling_pruned.py` (the family's stock classes, each block
sized from `config.pruned_layout`) registered through the config's `auto_map`.
"""

from __future__ import annotations

import re
from importlib import resources

import numpy as np
import torch
import transformers
from torch import nn

from ..core.space import SearchSpace, Unit
from ..errors import ConfigError
from ._modules import RemovedSublayer, get_module

MODELING_FILE = "modeling_pruned.py"
PER_LAYER_CONFIG = ("layer_types",)  # config lists with an entry per block
_TEMPLATE_IMPORT = "from transformers import LlamaConfig as BaseConfig, LlamaForCausalLM as BaseModel"


def checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as `from_pretrained` expects it: tied copies (the LM head) left out."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    return {name: t.contiguous() for name, t in model.state_dict().items() if name not in tied}


def pruned_layout(space: SearchSpace, levels: np.ndarray) -> dict:
    """`config.pruned_layout`: the modules each unit sizes, and the heads and channels each block keeps."""
    blocks = space.spec["blocks"]
    units: dict[str, dict] = {}
    layers: list[dict[str, int]] = [{} for _ in range(max(u.block for u in space.units) + 1)]
    for unit, level in zip(space.units, levels):
        layers[unit.block][unit.kind] = (unit.groups - unit.counts[level]) * unit.heads_per_group
        units.setdefault(unit.kind, _unit_layout(unit, f"{blocks}.{unit.block}."))
    return {"blocks": blocks, "units": units, "layers": layers}


def _unit_layout(unit: Unit, prefix: str) -> dict:
    rows: dict[str, int] = {}
    for s in unit.producers:  # a fused q|k|v layer appears once per part
        path = s.module.removeprefix(prefix)
        rows[path] = rows.get(path, 0) + s.width
    layout = {"groups": unit.groups, "rows": rows, "columns": {unit.consumer.module.removeprefix(prefix): unit.consumer.width},
              "sublayer": unit.sublayer.removeprefix(prefix) if unit.sublayer else None, "attention": unit.kind == "heads"}
    if unit.kind == "heads":
        layout.update(set=dict(unit.attrs), heads_per_group=unit.heads_per_group, head_dim=unit.head_dim)
    return layout


def modeling_source(model: nn.Module) -> str:
    """`modeling_pruned.py` importing this model's stock config and model classes."""
    config_class, model_class = type(model.config).__name__, type(model).__name__
    if not (hasattr(transformers, config_class) and hasattr(transformers, model_class)):
        raise ConfigError(f"the model class {model_class} is not part of transformers, so an export cannot name it; "
                          "load the export with allocsearch.load_pruned instead")
    source = resources.files(__package__).joinpath(MODELING_FILE).read_text(encoding="utf-8")
    line = f"from transformers import {config_class} as BaseConfig, {model_class} as BaseModel"
    return source.replace(_TEMPLATE_IMPORT, line, 1)


def remote_code_config(config, layout: dict, task: str) -> dict:
    """The config.json of a remote-code export: the stock config plus `pruned_layout` and `auto_map`."""
    auto = "AutoModelForCausalLM" if task == "causal_lm" else "AutoModel"
    module = MODELING_FILE.removesuffix(".py")
    data = config.to_dict()
    data.update(model_type=f"pruned_{config.model_type}", architectures=["PrunedModel"], pruned_layout=layout,
                auto_map={"AutoConfig": f"{module}.PrunedConfig", auto: f"{module}.PrunedModel"})
    return data


def depth_only_blocks(space: SearchSpace, levels: np.ndarray) -> list[int] | None:
    """The blocks kept when an allocation removes whole blocks and leaves the others dense; else None."""
    if space.granularity != "structured":
        return None
    states: dict[int, set[str]] = {}
    for unit, level in zip(space.units, levels):
        state = "dense" if level == 0 else "removed" if unit.counts[level] == unit.groups else "partial"
        states.setdefault(unit.block, set()).add(state)
    if any(s not in ({"dense"}, {"removed"}) for s in states.values()):
        return None
    kept = [b for b, s in sorted(states.items()) if s == {"dense"}]
    return kept or None


def block_constant(model: nn.Module, space: SearchSpace, block: int) -> torch.Tensor | None:
    """What a removed block adds (the composed model's removed sublayers' biases), or None for nothing."""
    total = None
    for unit in space.units:
        if unit.block != block:
            continue
        sublayer = get_module(model, unit.sublayer) if unit.sublayer else None
        if isinstance(sublayer, RemovedSublayer) and sublayer.width > 0:
            bias = sublayer.out_bias
        else:  # the output projection, left with no columns, adds its bias
            bias = get_module(model, unit.consumer.module).bias
        if bias is not None:
            total = bias.detach().clone() if total is None else total + bias
    return total


def stock_checkpoint(model: nn.Module, space: SearchSpace, kept: list[int],
                     constants: dict[int, torch.Tensor | None], dense: dict[str, torch.Tensor]):
    """The stock config and tensors of the dense model without the removed blocks, or None when a
    removed block's constant has nowhere to go (it comes before any kept block)."""
    blocks = space.spec["blocks"]
    down = next(u.consumer.module for u in space.units if u.kind == "channels" and u.block == 0)
    down = down.removeprefix(f"{blocks}.0.")
    pattern = re.compile(rf"^{re.escape(blocks)}\.(\d+)\.(.*)$")
    tensors, new_index = {}, {b: i for i, b in enumerate(kept)}
    for name, tensor in dense.items():
        match = pattern.match(name)
        if match is None:
            tensors[name] = tensor
        elif int(match[1]) in new_index:
            tensors[f"{blocks}.{new_index[int(match[1])]}.{match[2]}"] = tensor
    for block, constant in constants.items():
        if constant is None or not bool(constant.any()):
            continue
        previous = [b for b in kept if b < block]
        bias = f"{blocks}.{new_index[previous[-1]]}.{down}.bias" if previous else None
        if bias not in tensors:
            return None
        tensors[bias] = tensors[bias] + constant.to(tensors[bias].dtype)
    config = model.config.__class__.from_dict(model.config.to_dict())
    n_layers = config.num_hidden_layers
    config.num_hidden_layers = len(kept)
    for attr in PER_LAYER_CONFIG:
        value = getattr(config, attr, None)
        if isinstance(value, list) and len(value) == n_layers:
            setattr(config, attr, [value[b] for b in kept])
    return config, tensors
