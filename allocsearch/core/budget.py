"""Budgets: limits on FLOPs, parameters and memory, as fractions of dense or absolute values.

`Budget(flops=0.5)` allows half the dense FLOPs; `Budget(flops=1.2e9, memory="300MB")` sets
absolute limits (FLOPs per token, bytes). A value of at most 1 is a fraction of dense, a larger one
is absolute; `"40%"` is a fraction too. Several limits hold at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import BudgetError
from .cost import CostModel
from .space import SearchSpace

KINDS = {"flops": "flops", "params": "params", "memory": "bytes"}  # budget kind -> cost metric
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_NUMBER = r"[+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?"


def _parse_value(kind: str, value: float | int | str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        text = str(value).strip()
        match = re.fullmatch(rf"({_NUMBER})\s*(%|[KMGT]?i?B)?", text, flags=re.IGNORECASE)
        if not match:
            raise BudgetError(
                f"budget {kind}={value!r} is not a number; write a fraction of dense (0.5, 50%) "
                "or an absolute value (1.2e9, or for memory 300MB / 1.5GiB)"
            )
        number, unit = float(match.group(1)), (match.group(2) or "").upper()
        if unit == "%":
            if number > 100:
                raise BudgetError(f"budget {kind}={value!r} is more than dense; a percentage is of dense, at "
                                  f"most 100% (e.g. {kind}=50%)")
            number /= 100
        elif unit:
            if kind != "memory":
                raise BudgetError(f"budget {kind}={value!r}: byte units are for memory budgets only")
            number *= _SIZE_UNITS[unit]
    if not np.isfinite(number) or number <= 0:
        raise BudgetError(f"budget {kind}={value!r} must be positive")
    if 1 < number <= 2:
        raise BudgetError(f"budget {kind}={value!r} is neither a fraction of dense (at most 1, e.g. {kind}=0.5) "
                          f"nor a plausible absolute {'size' if kind == 'memory' else 'count'} (e.g. "
                          f"{'memory=300MB' if kind == 'memory' else kind + '=1.2e9'}); write one of those")
    return number


@dataclass(frozen=True)
class Budget:
    """Limits an allocation must meet; None means unconstrained.

    `limits(costs)` turns it into absolute limits of a model's costs (`{'flops': 1.23e6}`).

    Example:
        >>> Budget.parse(["flops=0.5", "memory=300MB"])
        Budget(flops=0.5, params=None, memory=300000000.0)
    """

    flops: float | str | None = None
    params: float | str | None = None
    memory: float | str | None = None

    def __post_init__(self) -> None:
        for kind in KINDS:
            value = getattr(self, kind)
            if value is not None:
                object.__setattr__(self, kind, _parse_value(kind, value))
        if self.is_empty:
            raise BudgetError("budget is empty; give at least one of flops=, params=, memory= (e.g. flops=0.5)")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, kind) is None for kind in KINDS)

    @classmethod
    def parse(cls, items: str | Iterable[str]) -> Budget:
        """From strings like `"flops=0.5"`, `"memory=300MB"` (several, or comma-separated)."""
        if isinstance(items, str):
            items = [items]
        values: dict[str, str] = {}
        for item in (part for entry in items for part in entry.split(",") if part.strip()):
            kind, sep, value = item.partition("=")
            kind = kind.strip().lower()
            if not sep or kind not in KINDS:
                raise BudgetError(
                    f"budget {item!r} must look like KIND=VALUE with KIND one of {', '.join(KINDS)}, "
                    "e.g. flops=0.5 or memory=300MB"
                )
            if kind in values:
                raise BudgetError(f"budget gives {kind} twice ({values[kind]!r} and {value!r}); keep one")
            values[kind] = value.strip()
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return {kind: getattr(self, kind) for kind in KINDS if getattr(self, kind) is not None}

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.to_dict().items())

    def limits(self, costs: CostModel) -> dict[str, float]:
        """Absolute limits per cost metric; raises `BudgetError` when the space cannot meet one."""
        dense, minimum = costs.dense, costs.minimum
        limits = {}
        for kind, value in self.to_dict().items():
            metric = KINDS[kind]
            limit = value * dense[metric] if value <= 1 else value
            if limit < minimum[metric] * (1 - 1e-12):
                deeper = minimum[metric] > costs.constant[metric]  # some unit cannot yet be removed whole
                raise BudgetError(
                    f"budget {kind}={value:g} is below the smallest reachable cost "
                    f"{minimum[metric] / dense[metric]:.3f} of dense ({minimum[metric]:.4g}) for this search "
                    "space; raise the budget" + (" or allow deeper levels (max_level=)" if deeper else
                                                 " (the rest is outside the prunable units)")
                )
            limits[metric] = max(limit, minimum[metric])  # a fraction of dense can round a hair below it
        return limits


def within(costs: CostModel, levels: np.ndarray, limits: dict[str, float]) -> bool:
    """True when the allocation meets every limit (on the hot path of every searcher)."""
    idx = np.arange(len(levels))
    return all(costs.constant[m] + costs.tables[m][idx, levels].sum() <= limit for m, limit in limits.items())


def check_keeps_something(budget: Budget, limits: dict[str, float], space: SearchSpace, costs: CostModel) -> None:
    """Refuse limits that only an allocation removing every unit whole meets: its pruned model has no blocks.

    The smallest useful budget, named in the message, is the cost (as a fraction of dense, per kind of
    the budget) of the cheapest allocation that keeps part of one unit.

    For example::

        budget = Budget(flops=0.01)
        check_keeps_something(budget, budget.limits(costs), space, costs)
        # BudgetError: budget flops=0.01 leaves room only for removing every block (...); the smallest
        # budget that keeps part of one is flops=0.052 of dense: raise it to that or more
    """
    deepest = space.n_levels - 1  # (units,)
    if not all(u.counts[-1] == u.groups for u in space.units):
        return  # the cheapest allocation already keeps part of a unit
    shallower = np.arange(int(space.n_levels.max()))[None, :] < deepest[:, None]  # (units, max_levels)
    idx = np.arange(space.n_units)
    extra = {m: np.where(shallower, t - t[idx, deepest][:, None], np.inf) for m, t in costs.tables.items()}
    fits = np.ones(shallower.shape, dtype=bool)  # (units, max_levels): all units whole-removed but this cell
    for m, limit in limits.items():
        fits &= costs.minimum[m] + extra[m] <= limit * (1 + 1e-12)
    if fits.any():
        return
    least = {m: (costs.minimum[m] + extra[m].min()) / costs.dense[m] for m in limits}  # metric -> ratio to dense
    smallest = ", ".join(f"{kind}={math.ceil(least[KINDS[kind]] * 1000) / 1000:.3f}" for kind in budget.to_dict())
    raise BudgetError(f"budget {budget} leaves room only for removing every block (the pruned model would have "
                      f"none); the smallest budget that keeps part of one is {smallest} of dense: raise it to that "
                      "or more")
