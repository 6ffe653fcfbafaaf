"""What a searcher or solver works from: the space, its costs, the absolute limits, and tables.

The error table `E[u, k]` and the signals of the dense model that the model-informed allocators read
(`SIGNALS`) are expensive to make (a table means measuring candidates, a signal at least one pass
over calibration text), so a problem may hold them as functions: each is made on first read and
kept. A searcher that never reads one never pays for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .budget import within
from .cost import CostModel
from .space import SearchSpace

Table = np.ndarray | Callable[[], np.ndarray] | None

# Signals of the dense model on calibration text, by name: what each holds, and its shape.
SIGNALS = {
    "outlier_ratios": "OWL: share of the block's Wanda scores |W|*||X|| above 5x their mean  # (blocks,)",
    "zeroth_order": "ECoFLaP: sum over the block's weight matrices m and calibration batches of the "
                    "zeroth-order directional derivative |L(W_m + eps z) - L(W_m - eps z)| / 2 eps  # (blocks,)",
    "wifv": "FLAP: each group's (head's or channel's) fluctuation score F_j * ||W_:,j||^2 of its output "
            "projection's input channels, standardised within the unit, a head the mean of its channels; "
            "NaN past a unit's groups; structured spaces only  # (units, max groups)",
    "block_angles": "CFSP: mean over calibration tokens of arccos(cos(x_in, x_out)) / pi of the block  # (blocks,)",
    "wanda_median": "DLP: median of the block's Wanda scores |W_ij| * ||X_j||  # (blocks,)",
}


class Problem:
    """An allocation problem: one level per unit of `space`, every limit met.

    Args:
        space, costs: the search space and its cost tables.
        limits: cost metric -> absolute limit.
        errors: `E[u, k]`, (units, max_levels), or a function making it.
        signals: name (one of `SIGNALS`) -> the signal, or a function making it.
        init: a known good allocation to start from, (units,), if any.
    """

    def __init__(self, space: SearchSpace, costs: CostModel, limits: dict[str, float], *, errors: Table = None,
                 signals: Mapping[str, Table] | None = None, init: np.ndarray | None = None) -> None:
        self.space, self.costs, self.limits, self.init = space, costs, dict(limits), init
        unknown = set(signals or {}) - set(SIGNALS)
        if unknown:
            raise ValueError(f"signals={sorted(unknown)} are unknown; the signals are {', '.join(SIGNALS)}")
        self._signals = dict(signals or {})
        self._tables = {"errors": errors, **self._signals}

    @property
    def errors(self) -> np.ndarray:
        """The error table E[u, k].  # (units, max_levels)"""
        return self._table("errors")

    def signal(self, name: str) -> np.ndarray:
        """The signal `name` of the dense model (see `SIGNALS`)."""
        if name not in SIGNALS:
            raise ValueError(f"signal {name!r} is unknown; the signals are {', '.join(SIGNALS)}")
        return self._table(name)

    def _table(self, name: str) -> np.ndarray:
        value = self._tables[name]
        if value is None:
            raise RuntimeError(f"this problem was made without {name}")  # a programming error, not a user's
        if callable(value):
            value = self._tables[name] = np.asarray(value())
        return value

    def on(self, space: SearchSpace, costs: CostModel, init: np.ndarray) -> Problem:
        """The same limits on another grid of the same model (coarse-to-fine), starting from `init`."""
        return Problem(space, costs, self.limits, signals=self._signals, init=init)

    @property
    def unit_limits(self) -> dict[str, float]:
        """Each limit less its cost outside the units (`costs.constant`): what the units' tables may sum
        to, as the largest float that `within` agrees with (see `unit_limit`)."""
        return {m: unit_limit(limit, self.costs.constant[m]) for m, limit in self.limits.items()}

    def feasible(self, levels: np.ndarray) -> bool:
        return within(self.costs, levels, self.limits)

    @property
    def primary(self) -> str:
        """The metric a single-constraint solver works on: flops when limited, else the first limit."""
        return "flops" if "flops" in self.limits else next(iter(self.limits))


def unit_limit(limit: float, constant: float) -> float:
    """The largest float u with `constant + u <= limit` in floating point: a solver summing unit costs
    against `limit - constant` would, rounded, refuse by one ulp an allocation that `within` accepts.

    >>> limit = 0.7 + 0.2  # an allocation of unit cost 0.2 with a constant of 0.7 meets it exactly
    >>> limit - 0.7 < 0.2, unit_limit(limit, 0.7) >= 0.2
    (True, True)
    """
    step = float(np.spacing(abs(limit)) + np.spacing(abs(constant)))  # one rounding of the sum moves it less
    low = limit - constant
    while constant + low > limit:
        low -= step
    high = low + step
    while constant + high <= limit:
        low, high = high, high + step
    while True:  # bisect to adjacent floats: low within, high not
        mid = low + (high - low) / 2
        if not low < mid < high:
            return float(low)
        low, high = (mid, high) if constant + mid <= limit else (low, mid)
