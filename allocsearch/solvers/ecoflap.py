"""ECoFLaP's layer-wise sparsity from zeroth-order block scores (Sung et al., "ECoFLaP: Efficient
Coarse-to-Fine Layer-wise Pruning for Vision-Language Models", ICLR 2024).

The coarse step: a block g of n_g weights with score S_g (the zeroth-order estimate of its loss
sensitivity, `Problem.signal("zeroth_order")`) keeps, for a target removed share t of all weights,

- at least ceil(n_g (1 - s_max)) weights, with s_max = t + 0.1 (clipped to [0, 1]), and
- a share S_g / sum S of the rest of the kept budget (1 - t) sum n - sum floors, capped at n_g;
  what the caps free goes again to the uncapped blocks by their scores, until no block exceeds n_g.

Where ours departs: n_g is the block's dense parameter count in the cost model (its units' params
at level 0); t is not the answer but the scalar that `shaped_levels` bisects so that the real
limits (FLOPs, params, ...) hold after snapping to the grid, then the grid's slack is filled. The
fine step (Wanda within each layer) is the supernet's criterion, not this allocator's.
"""

from __future__ import annotations

import numpy as np

from ..core.problem import Problem
from .shaped import block_targets, shaped_levels

MAX_GAP = 0.1  # s_max - t: how far above the target one block's removed share may go


def ecoflap_keep(scores: np.ndarray, sizes: np.ndarray, target: float, max_gap: float = MAX_GAP) -> np.ndarray:
    """Kept share of each block for a target removed share `target` of all weights.  # (blocks,)

    Args:
        scores: S_g, the blocks' importance (larger: keep more), non-negative.  # (blocks,)
        sizes: n_g, the blocks' weights.  # (blocks,)
        target: t, the removed share of all weights.
        max_gap: s_max - t.
    """
    scores, sizes = np.asarray(scores, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    s_max = float(np.clip(target + max_gap, 0.0, 1.0))
    keep = np.minimum(np.ceil(sizes * (1 - s_max)), sizes)  # (blocks,) the floors
    rest = (1 - target) * sizes.sum() - keep.sum()
    open_ = keep < sizes  # (blocks,) blocks that may take more
    while rest > 0 and open_.any():
        weight = np.where(open_, scores, 0.0)  # (blocks,)
        share = rest * (weight / weight.sum() if weight.sum() > 0 else open_ / open_.sum())  # (blocks,)
        capped = open_ & (share >= sizes - keep)  # (blocks,)
        if not capped.any():
            keep += share
            break
        rest -= (sizes - keep)[capped].sum()  # the capped take only their room; the rest is shared again
        keep[capped] = sizes[capped]
        open_ &= ~capped
    return np.divide(keep, sizes, out=np.ones_like(sizes), where=sizes > 0)


def ecoflap_levels(problem: Problem, per_weight: bool = False) -> np.ndarray:
    """ECoFLaP's allocation within the limits, filled (see the module notes).

    Args:
        problem: reads the signal "zeroth_order" (blocks,).
        per_weight: divide each block's score by its size: the mean sensitivity per weight rather
            than the block's sum.
    """
    space = problem.space
    scores = np.asarray(problem.signal("zeroth_order"), dtype=np.float64)  # (blocks,)
    blocks = np.array([u.block for u in space.units])  # (units,)
    sizes = np.bincount(blocks, weights=problem.costs.tables["params"][:, 0], minlength=len(scores))  # (blocks,)
    if per_weight:
        scores = np.divide(scores, sizes, out=np.zeros_like(scores), where=sizes > 0)

    def removed(t: float) -> np.ndarray:
        return 1 - ecoflap_keep(scores, sizes, t)  # (blocks,)

    return shaped_levels(problem, block_targets(space, removed), bounds=(0.0, 1.0))
