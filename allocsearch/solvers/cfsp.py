"""CFSP's layer-wise sparsity from block angles (Wang et al., "CFSP: An Efficient Structured Pruning
Framework for LLMs with Coarse-to-Fine Activation Information", 2024).

The coarse step scores block l by how much it turns its input, s_l = the mean over calibration tokens
of arccos(cos(x_in, x_out)) / pi (the paper sums; see `allocsearch.model.signals.block_angles`) (`Problem.signal("block_angles")`): a block that changes its input
more matters more. The scores are centred and squashed, s_l <- sigmoid(s_l - mean(s)), and for a
target removed share p each block keeps k_l = s_l / mean(s) * (1 - p), so the mean kept share is
1 - p. Where a block would keep more than all of itself, the deviations shrink:
k_l = (1 - p)(1 + lam (s_l / mean(s) - 1)) with the largest lam in [0, 1] keeping max k_l <= 1.
Every unit of block l removes 1 - k_l.

Where ours departs: p is the scalar `shaped_levels` bisects so that the real limits (FLOPs, params,
...) hold after snapping to the grid, then the grid's slack is filled; the paper's fine step
(which groups within a block) is the supernet's criterion.
"""

from __future__ import annotations

import numpy as np

from ..core.problem import Problem
from .shaped import block_targets, shaped_levels


def cfsp_keep(angles: np.ndarray, target: float) -> np.ndarray:
    """Kept share of each block for a target removed share `target` (its mean).  # (blocks,)"""
    s = np.asarray(angles, dtype=np.float64)  # (blocks,)
    s = 1 / (1 + np.exp(-(s - s.mean())))  # centred, then sigmoid: in (0, 1)
    relative = s / s.mean()  # (blocks,) mean 1
    if target >= 1:
        return np.zeros_like(s)
    kept = 1 - target
    spread = relative.max() - 1
    lam = 1.0 if spread <= 0 else min(1.0, (1 / kept - 1) / spread)  # largest with max k <= 1
    return kept * (1 + lam * (relative - 1))


def cfsp_levels(problem: Problem) -> np.ndarray:
    """CFSP's allocation within the limits, filled (see the module notes); reads "block_angles" (blocks,)."""
    angles = problem.signal("block_angles")

    def removed(p: float) -> np.ndarray:
        return 1 - cfsp_keep(angles, p)  # (blocks,)

    return shaped_levels(problem, block_targets(problem.space, removed), bounds=(0.0, 1.0))
