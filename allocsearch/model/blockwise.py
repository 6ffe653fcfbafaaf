"""Running a model block by block, so that a forward can start at any block.

A forward is split into three parts: `embed` (the model up to its first block: embeddings, position
embeddings, attention masks), the blocks, and `final` (what follows the last block, the family's
`final` modules in `searchspaces/*.yaml`, then the language-model head applied by the caller). The
arguments each block receives besides the hidden states (masks, rotary embeddings) are captured
from the model's own forward, so every family runs as its code is written.

Started at block l from the hidden states that block l received in a full forward, the blocks
l..L compute what the full forward computes: the supernet build runs one block at a time this way,
and the evaluator starts each candidate at its first pruned block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.space import SearchSpace
from ._modules import get_module


class _Stop(Exception):
    pass


@dataclass
class BlockInputs:
    """What the first block of a batch receives: its hidden states and every other argument."""

    hidden: torch.Tensor  # (batch, seq, hidden)
    args: tuple
    kwargs: dict


class Blockwise:
    """A model seen as embed -> blocks -> final.

    For example::

        blockwise = Blockwise(model, space)
        inputs = blockwise.embed(batch)
        hidden = blockwise.run(inputs.hidden, inputs, start=0)   # every block
        blockwise.final(hidden)                                  # the model's last hidden state
    """

    def __init__(self, model: nn.Module, space: SearchSpace) -> None:
        self.model, self.task = model, space.task
        self.blocks = get_module(model, space.spec["blocks"])
        self.final_paths = tuple(space.spec["final"])
        self.head = model.get_output_embeddings() if space.task == "causal_lm" else None

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def embed_width(self) -> int:
        """The width of the hidden states between blocks."""
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed(self, batch: torch.Tensor) -> BlockInputs:
        """The inputs of the first block for token ids `batch` (the model stops there)."""
        captured = []

        def grab(module, args, kwargs):
            captured.append(BlockInputs(args[0], args[1:], kwargs))
            raise _Stop

        handle = self.blocks[0].register_forward_pre_hook(grab, with_kwargs=True, prepend=True)  # before any other hook
        try:
            self.model(input_ids=batch.to(self.device), **({"use_cache": False} if self.task == "causal_lm" else {}))
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]

    def run(self, hidden: torch.Tensor, inputs: BlockInputs, start: int, stop: int | None = None,
            states: list | None = None) -> torch.Tensor:
        """Blocks `start` to `stop` (default: the last) on `hidden`; appends each block's input to `states`."""
        for b in range(start, self.n_blocks if stop is None else stop):
            if states is not None:
                states.append(hidden)
            out = self.blocks[b](hidden, *inputs.args, **inputs.kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def final(self, hidden: torch.Tensor) -> torch.Tensor:
        """What follows the last block (final norm, projection): the model's last hidden state."""
        for path in self.final_paths:
            module = _optional_module(self.model, path)
            if module is not None:
                hidden = module(hidden)
        return hidden


def _optional_module(model: nn.Module, path: str) -> nn.Module | None:
    """The module at `path`, or None where this model has none there (OPT's `project_out`)."""
    parent_path, _, name = path.rpartition(".")
    return getattr(get_module(model, parent_path), name, None)
