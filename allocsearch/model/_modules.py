"""Small helpers over torch modules: paths, linear layers in one convention, removed sublayers.

HF models hold their projections either as `nn.Linear` (weight `(out, in)`) or as GPT-2's
`Conv1D` (weight `(in, out)`, transposed). Everything above this file speaks the Linear
convention `(out, in)`; only `linear_weight` and `set_linear` know the difference.
"""

from __future__ import annotations

import torch
from torch import nn


def get_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path (`transformer.h.0.attn`)."""
    return root.get_submodule(path) if path else root


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at a dotted path."""
    parent_path, _, name = path.rpartition(".")
    setattr(get_module(root, parent_path), name, module)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's `Conv1D`: a linear layer whose weight is stored `(in, out)`."""
    return hasattr(module, "nf") and hasattr(module, "nx") and not isinstance(module, nn.Linear)


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def as_out_in(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """A weight in `module`'s native layout seen as `(out, in)`: a view, no copy."""
    return weight.T if is_conv1d(module) else weight


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The module's weight as `(out, in)`."""
    return as_out_in(module, module.weight)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """`(out_features, in_features)`."""
    out_features, in_features = linear_weight(module).shape
    return out_features, in_features


def native_layout(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """Turn an `(out, in)` weight into the module's own layout, contiguous."""
    return (weight.T if is_conv1d(module) else weight).contiguous()


def set_linear(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Give a Linear/Conv1D a new weight (already in its native layout) and bias, by reference.

    The tensors are wrapped, never copied or written: they may be read-only memory maps.
    """
    module.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        module.bias = nn.Parameter(bias, requires_grad=False)
    if is_conv1d(module):
        module.nx, module.nf = weight.shape
    else:
        module.out_features, module.in_features = weight.shape


class RemovedSublayer(nn.Module):
    """Stands in for a sublayer (attention or MLP) whose heads or channels were all removed.

    Returns what the sublayer contributes with nothing left: its output projection's bias (or
    zeros) when the projection lived inside the replaced module, or a zero-width tensor when the
    projection follows it (BERT), so that the projection, sliced to no columns, adds its bias.
    Attention modules return `(output, None)`, as the modules they replace do.
    """

    def __init__(self, width: int, bias: torch.Tensor | None = None, *, attention: bool = False) -> None:
        super().__init__()
        self.width, self.attention = width, attention
        if bias is None:
            self.out_bias = None
        else:
            self.out_bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor | None = None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = args[0]
        shape = (*hidden_states.shape[:-1], self.width)
        out = hidden_states.new_zeros(shape) if self.out_bias is None else self.out_bias.expand(shape)
        return (out, None) if self.attention else out

    def extra_repr(self) -> str:
        return f"width={self.width}, bias={self.out_bias is not None}, attention={self.attention}"
