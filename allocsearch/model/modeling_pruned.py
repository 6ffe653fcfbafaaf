"""A transformers model pruned by allocsearch: the family's stock model, each block with its own heads and channels.

This file is copied into every structured export, where `from_pretrained(directory,
trust_remote_code=True)` loads it through the config's `auto_map`; it needs torch and transformers
only. `config.pruned_layout` holds, per block, the attention heads and MLP channels kept
(`layers`), and which linear layers of a block they size (`units`): each kept group (a key/value
head with its query heads, or one channel) gives `rows` output rows to each producer and `columns`
input columns to the output projection. A unit with nothing kept becomes a `RemovedSublayer`
(or, without a sublayer of its own, layers of zero width). The weights then load as usual.
"""

import torch
from torch import nn
from transformers import LlamaConfig as BaseConfig, LlamaForCausalLM as BaseModel  # the family's stock classes


class PrunedConfig(BaseConfig):
    model_type = "pruned_" + BaseConfig.model_type


class RemovedSublayer(nn.Module):
    """A sublayer (attention or MLP) with every head or channel removed: adds its output bias, or nothing."""

    def __init__(self, width: int, bias: torch.Tensor | None = None, *, attention: bool = False) -> None:
        super().__init__()
        self.width, self.attention = width, attention
        self.out_bias = None if bias is None else nn.Parameter(torch.zeros_like(bias), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor | None = None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = args[0]
        shape = (*hidden_states.shape[:-1], self.width)
        out = hidden_states.new_zeros(shape) if self.out_bias is None else self.out_bias.expand(shape)
        return (out, None) if self.attention else out


def resize_linear(linear: nn.Module, rows: int | None = None, columns: int | None = None) -> None:
    """Give an `nn.Linear` (or GPT-2's `Conv1D`, whose weight is stored transposed) a new shape."""
    transposed = not isinstance(linear, nn.Linear)
    out_features, in_features = linear.weight.shape[::-1] if transposed else linear.weight.shape
    out_features, in_features = rows if rows is not None else out_features, columns if columns is not None else in_features
    shape = (in_features, out_features) if transposed else (out_features, in_features)
    linear.weight = nn.Parameter(linear.weight.new_zeros(shape), requires_grad=False)
    if rows is not None and linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.new_zeros(rows), requires_grad=False)
    if transposed:
        linear.nx, linear.nf = in_features, out_features
    else:
        linear.in_features, linear.out_features = in_features, out_features


def prune_block(block: nn.Module, unit: dict, kept: int) -> None:
    """Size one unit of a block (`heads` or `channels`) for `kept` of its groups."""
    if kept == unit["groups"]:
        return
    for path, rows in unit["rows"].items():
        resize_linear(block.get_submodule(path), rows=kept * rows)
    for path, columns in unit["columns"].items():
        resize_linear(block.get_submodule(path), columns=kept * columns)
    sublayer = unit.get("sublayer")
    if not sublayer:
        return
    heads = kept * unit.get("heads_per_group", 1)
    values = {"heads": heads, "kv_heads": kept, "width": heads * unit.get("head_dim", 0)}
    for attr, what in unit.get("set", {}).items():
        setattr(block.get_submodule(sublayer), attr, values[what])
    if kept == 0:
        (out_path,) = unit["columns"]
        if out_path.startswith(sublayer + "."):  # the output projection goes with the sublayer
            out = block.get_submodule(out_path)
            width = out.weight.shape[-1] if not isinstance(out, nn.Linear) else out.out_features
            removed = RemovedSublayer(width, out.bias, attention=unit["attention"])
        else:  # the projection follows it and, with no columns left, adds its bias
            removed = RemovedSublayer(0, attention=unit["attention"])
        parent, _, name = sublayer.rpartition(".")
        setattr(block.get_submodule(parent) if parent else block, name, removed)


class PrunedModel(BaseModel):
    """The stock model with every block sized as `config.pruned_layout` says."""

    config_class = PrunedConfig

    def __init__(self, config: PrunedConfig) -> None:
        super().__init__(config)
        layout = config.pruned_layout
        for block, kept in zip(self.get_submodule(layout["blocks"]), layout["layers"]):
            for name, unit in layout["units"].items():
                prune_block(block, unit, kept[name] // unit.get("heads_per_group", 1))
