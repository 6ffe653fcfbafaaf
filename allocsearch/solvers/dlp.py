"""DLP's layer-wise sparsity from the median Wanda score of each block (Chen et al., "DLP: Dynamic
Layerwise Pruning in Large Language Models", ICML 2025; reference code github.com/ironartisan/DLP,
`get_dlp_ratios` in lib/prune.py).

Block l's score is U_l, the median of its Wanda scores |W_ij| * ||X_j|| (`Problem.signal
("wanda_median")`), and its importance I_l = 1 - U_l / sum U. I is min-max scaled to
[0, 2 alpha] (alpha = 0.15), and for a target removed share t block l keeps
(1 - t) + (scaled_l - mean(scaled)): the mean kept share is 1 - t, within +- 2 alpha of it.

Direction, checked against the reference code: `get_dlp_ratios` returns these values as the kept
share (the pruning loop takes `layer_sparsity_ratio = 1 - all_layer_ratio[i]`, and the saved
ratios for LLaMA-7B at 70% sparsity average 0.3), so a block with a larger I, that is a smaller
U, keeps more; in LLaMA that is the early blocks. Ours does the same.

Where ours departs: the reference's unstructured path (`get_dlp_ratios`) takes the mean of the
Wanda scores, its structured path (`get_dlp_structure_ratios`) the median by default (the paper's
choice); we use the median throughout. The reference clips a block's sparsity at or below 0 to
0.01; we cap each unit's removed fraction to [0, its largest level]. t is the scalar
`shaped_levels` bisects so that the real limits (FLOPs, params, ...) hold after snapping to the
grid, then the grid's slack is filled.
"""

from __future__ import annotations

import numpy as np

from ..core.problem import Problem
from .shaped import block_targets, shaped_levels

DLP_ALPHA = 0.15


def dlp_keep(wanda_median: np.ndarray, target: float, alpha: float = DLP_ALPHA) -> np.ndarray:
    """Kept share of each block for a target removed share `target` (its mean).  # (blocks,)"""
    u = np.asarray(wanda_median, dtype=np.float64)  # (blocks,)
    importance = 1 - u / u.sum()  # (blocks,)
    spread = importance.max() - importance.min()
    scaled = (importance - importance.min()) / spread * 2 * alpha if spread > 0 else np.zeros_like(u)
    return (1 - target) + (scaled - scaled.mean())


def dlp_levels(problem: Problem, alpha: float = DLP_ALPHA) -> np.ndarray:
    """DLP's allocation within the limits, filled (see the module notes); reads "wanda_median" (blocks,)."""
    wanda_median = problem.signal("wanda_median")

    def removed(t: float) -> np.ndarray:
        return 1 - dlp_keep(wanda_median, t, alpha)  # (blocks,)

    bounds = (-2 * alpha, 1 + 2 * alpha)  # every block dense; every block at its top
    return shaped_levels(problem, block_targets(problem.space, removed), bounds=bounds)
