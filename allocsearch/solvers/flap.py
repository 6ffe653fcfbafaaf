"""FLAP's adaptive structure from fluctuation scores (An et al., "Fluctuation-based Adaptive
Structured Pruning for Large Language Models", AAAI 2024).

FLAP scores every group (a head, an MLP channel) by the fluctuation of its input to the output
projection over the calibration text times the squared norm of its weight column (WIFV),
standardises the scores within each layer, and, in its "AL-AM" structure (adaptive across layers
and modules), sorts all groups of the model together and cuts at the score where the kept weights
meet the budget. Here that is one global threshold tau: unit u removes #{g : wifv[u, g] < tau}
groups, snapped down to the largest level that removes no more, and tau is the smallest whose
allocation meets every limit (FLOPs, params, ...: our real costs stand for FLAP's kept-weight
count). The grid's slack is then filled as `shaped_levels` fills it.

Where ours departs: FLAP sets only how many groups each unit loses; which groups go is the
supernet's criterion order, not the WIFV order, and FLAP's bias compensation is not applied.
Structured spaces only: an unstructured space has no groups to score.
"""

from __future__ import annotations

import numpy as np

from ..core.problem import Problem
from ..errors import ConfigError
from .shaped import least_feasible


def flap_counts(wifv: np.ndarray, tau: float) -> np.ndarray:
    """Groups each unit removes at threshold `tau`: those scoring below it (NaN never does).  # (units,)"""
    with np.errstate(invalid="ignore"):
        return np.sum(np.asarray(wifv) < tau, axis=1)


def flap_levels(problem: Problem) -> np.ndarray:
    """FLAP's allocation within the limits, filled (see the module notes).

    Raises:
        ConfigError: on an unstructured space.
        BudgetError: when removing every group allowed still breaks a limit.
    """
    space = problem.space
    if space.granularity != "structured":
        raise ConfigError(f"method='flap' scores heads and channels, so it needs granularity='structured' "
                          f"(this space is granularity={space.granularity!r}); use another method, e.g. 'dlp'")
    wifv = np.asarray(problem.signal("wifv"), dtype=np.float64)  # (units, max groups)

    def levels_at(tau: float) -> np.ndarray:
        counts = flap_counts(wifv, tau)  # (units,)
        return np.array([np.searchsorted(u.counts, c, side="right") - 1 for u, c in zip(space.units, counts)])

    bounds = float(np.nanmin(wifv)) - 1, float(np.nanmax(wifv)) + 1  # nothing removed; everything removed
    return least_feasible(problem, levels_at, bounds, shape="FLAP's shape")
