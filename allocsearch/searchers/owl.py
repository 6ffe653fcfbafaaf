"""owl: Outlier Weighed Layerwise sparsity (Yin et al. 2024), a baseline.

Blocks with more outliers (a larger share D of Wanda scores above 5x their mean) are pruned less:
the removed fraction of every unit of block l is the target plus lam - 2 lam (D_l - min D) /
(max D - min D), within target +- lam (lam = 0.08), and the target is shifted until the budget is
met on the grid (`shaped_levels`, which then fills leftover budget in unit order). The paper sets
per-block sparsity for unstructured pruning; on structured spaces the same mapping sets each
block's removed fraction of heads and channels.
"""

from __future__ import annotations

import numpy as np

from .base import Proposals
from .uniform import shaped_levels

LAMBDA = 0.08


class OWL(Proposals):
    """Proposes the OWL allocation (model-free apart from the outlier ratios)."""

    name = "owl"
    needs = frozenset({"outlier_ratios"})

    def propose(self) -> list[np.ndarray]:
        d = np.asarray(self.problem.outlier_ratios, dtype=np.float64)  # (blocks,)
        spread = d.max() - d.min()
        normalised = (d - d.min()) / spread if spread > 0 else np.full_like(d, 0.5)
        per_block = LAMBDA - 2 * LAMBDA * normalised  # more outliers, less pruning
        offsets = np.array([per_block[u.block] for u in self.problem.space.units])
        return [shaped_levels(self.problem, offsets)]
