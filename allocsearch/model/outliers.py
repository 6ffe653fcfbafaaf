"""Outlier ratios per block, as OWL (Yin et al. 2024) measures them.

For each block, the Wanda scores |W_ij| * ||X_j|| of all its prunable linear layers (X the layer's
calibration inputs, on the dense model) are pooled; the block's ratio D is the share of scores
above M times their mean (M = 5 in the paper).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.space import SearchSpace
from ._modules import get_module, linear_weight
from ._torch import torch_threads
from .blockwise import Blockwise


def outlier_ratios(model: nn.Module, space: SearchSpace, tokens: torch.Tensor, *, multiple: float = 5.0,
                   batch_size: int = 16, threads: int = 1) -> np.ndarray:
    """D per block: the share of the block's Wanda scores above `multiple` x their mean.  # (blocks,)

    The model must be dense (a `Composer` at level 0 everywhere).
    """
    paths = sorted({p for unit in space.units for p in unit.modules})
    squares: dict[str, torch.Tensor] = {}

    def hook(name):
        def accumulate(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            squares[name] = squares.get(name, 0) + (x * x).sum(0)
        return accumulate

    handles = [get_module(model, p).register_forward_pre_hook(hook(p)) for p in paths]
    blockwise = Blockwise(model, space)
    try:
        with torch.no_grad(), torch_threads(threads):
            for batch in tokens.split(batch_size):  # the blocks only: no head, no vocabulary-sized logits
                inputs = blockwise.embed(batch)
                blockwise.run(inputs.hidden, inputs, 0)
    finally:
        for h in handles:
            h.remove()
    blocks = sorted({u.block for u in space.units})
    by_block = {b: sorted({p for u in space.units if u.block == b for p in u.modules}) for b in blocks}
    ratios = []
    for b in blocks:
        scores = torch.cat([(linear_weight(get_module(model, p)).double().abs() * squares[p].sqrt()).flatten()
                            for p in by_block[b]])
        ratios.append(float((scores > multiple * scores.mean()).double().mean()))
    return np.array(ratios)
