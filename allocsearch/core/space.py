"""Search spaces: prunable units and their levels, as plain data.

A unit is the attention heads of a block, its MLP channels, or (unstructured) one linear layer's
weights; its levels are removed counts of groups, increasing from 0, taken from a grid of fractions
and snapped to whole groups (whole heads, or a multiple of channels). `allocsearch.model.build`
reads a family's YAML against a concrete model to make a space; everything here is numpy only.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

import numpy as np

from ..errors import ConfigError, SpaceError

GRANULARITIES = ("structured", "unstructured")
TASKS = ("causal_lm", "encoder")
FITS = {"decilm": 256}  # export format -> the multiple its MLP widths take; its attention is kept whole or removed


@dataclass(frozen=True)
class Slice:
    """Rows (of a producer) or columns (of a consumer) of one group: `offset + g*width + [0, width)`."""

    module: str
    offset: int
    width: int

    def indices(self, groups: np.ndarray) -> np.ndarray:
        """Row or column indices of the given groups, in group order.  # (len(groups) * width,)"""
        return (self.offset + groups[:, None] * self.width + np.arange(self.width)[None, :]).reshape(-1)


@dataclass(frozen=True)
class Unit:
    """One prunable unit and its levels (removed groups per level, increasing from 0)."""

    name: str
    kind: str  # "heads" | "channels" | "linear"
    block: int
    groups: int  # heads: key/value groups; channels: channels; linear: weights per row
    counts: tuple[int, ...]  # removed groups at each level
    producers: tuple[Slice, ...] = ()  # structured: rows produced by each group
    consumer: Slice | None = None  # structured: columns of the output projection
    sublayer: str | None = None  # structured: module replaced when no group is left (heads: holds the head count)
    attrs: tuple[tuple[str, str], ...] = ()  # heads: attributes of the sublayer kept in step with the heads
    heads_per_group: int = 1
    head_dim: int = 0
    module: str | None = None  # linear: the layer

    @property
    def n_levels(self) -> int:
        return len(self.counts)

    @cached_property
    def fractions(self) -> np.ndarray:
        """Removed fraction at each level.  # (levels,)"""
        return np.asarray(self.counts, dtype=np.float64) / self.groups

    @property
    def modules(self) -> tuple[str, ...]:
        """Every linear module this unit slices."""
        if self.kind == "linear":
            return (self.module,)
        names = [s.module for s in self.producers] + [self.consumer.module]
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class LevelGrid:
    """How levels are laid out: fractions `0, step, 2*step, ... <= max_level`, snapped to groups.

    Args:
        step: grid step as a fraction of the unit's groups.
        max_level: the largest removed fraction; None means 1.0 for structured spaces (the
            sublayer may go) and 0.95 for unstructured ones.
        channel_multiple: MLP channels are removed in multiples of this (8 or 32 suit hardware).
        fit: an export format whose shapes every level must have (`FITS`): `decilm` (NVIDIA's
            Nemotron-NAS) keeps attention whole or removes it, and MLP widths on multiples of 256.

    For example::

        grid = LevelGrid(step=0.25, fit="decilm")
        grid.counts(1024, "structured", grid.channel_step)  # (0, 256, 512, 768, 1024)
        grid.counts(8, "structured", whole=True)  # (0, 8)
    """

    step: float = 1 / 16
    max_level: float | None = None
    channel_multiple: int = 1
    fit: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.step <= 1:
            raise ConfigError(f"grid_step={self.step!r} must lie in (0, 1]; use e.g. 0.0625 (1/16)")
        if self.max_level is not None and not 0 < self.max_level <= 1:
            raise ConfigError(f"max_level={self.max_level!r} must lie in (0, 1]; use e.g. 0.95")
        if int(self.channel_multiple) != self.channel_multiple or self.channel_multiple < 1:
            raise ConfigError(f"channel_multiple={self.channel_multiple!r} must be a positive integer, e.g. 8")
        if self.fit is not None and self.fit not in FITS:
            raise ConfigError(f"fit={self.fit!r} is not a known export format; use one of {', '.join(FITS)}, "
                              "or None for any shape")

    @property
    def channel_step(self) -> int:
        """MLP channels are removed in multiples of this: `channel_multiple`, and the fit's multiple."""
        return math.lcm(self.channel_multiple, FITS[self.fit]) if self.fit else self.channel_multiple

    def counts(self, groups: int, granularity: str, multiple: int = 1, *, whole: bool = False) -> tuple[int, ...]:
        """Removed counts of `groups` at each level, increasing and unique, starting at 0.

        `whole` keeps only 0 and all of them (attention under a fit).
        """
        top = self.max_level if self.max_level is not None else (1.0 if granularity == "structured" else 0.95)
        n = math.floor(top / self.step + 1e-9)
        counts = {min(groups, int(round(j * self.step * groups / multiple)) * multiple) for j in range(n + 1)}
        if top >= 1.0:
            counts.add(groups)
        if whole:
            counts &= {0, groups}
        return tuple(sorted(counts))


@dataclass(frozen=True)
class SearchSpace:
    """The units of one model and their levels.

    Made from a model by `allocsearch.model.build.space_from_model`; for example::

        space = space_from_model(model, granularity="structured")
        space.units[0].name, space.units[0].fractions  # 'transformer.h.0.heads', array([0., 0.125, ...])
    """

    family: str
    task: str
    granularity: str
    units: tuple[Unit, ...]
    spec: dict = field(compare=False)
    grid: LevelGrid = LevelGrid()

    @property
    def n_units(self) -> int:
        return len(self.units)

    @cached_property
    def n_levels(self) -> np.ndarray:
        """Number of levels of each unit.  # (units,)"""
        return np.array([u.n_levels for u in self.units])

    @property
    def id(self) -> str:
        """A short hash of everything that defines the space."""
        parts = [self.spec, self.granularity, [asdict(u) for u in self.units]]
        if self.grid.fit:  # the same counts under a fit are another space (its export differs)
            parts.append(self.grid.fit)
        blob = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @cached_property
    def fraction_table(self) -> np.ndarray:
        """Removed fraction of every unit at every level, NaN past a unit's levels.  # (units, max_levels)"""
        table = np.full((self.n_units, int(self.n_levels.max())), np.nan)
        for u, unit in enumerate(self.units):
            table[u, : unit.n_levels] = unit.fractions
        return table

    def fractions(self, levels: np.ndarray) -> np.ndarray:
        """Removed fraction of each unit for an allocation.  # (units,)"""
        return self.fraction_table[np.arange(self.n_units), np.asarray(levels)]

    def allocation_dict(self, levels: np.ndarray) -> dict[str, float]:
        return dict(zip((u.name for u in self.units), self.fractions(levels).tolist()))

    def levels_dict(self, levels: np.ndarray) -> dict[str, int]:
        return {u.name: int(k) for u, k in zip(self.units, levels)}

    def levels_from_dict(self, levels: dict[str, int]) -> np.ndarray:
        """Level indices from `{unit name: level}`, checked against this space."""
        missing = [u.name for u in self.units if u.name not in levels]
        if missing:
            raise SpaceError(f"levels lack units {missing[:3]}...; the result was made for another space")
        out = np.array([int(levels[u.name]) for u in self.units])
        self.check(out)
        return out

    def nearest_levels(self, fraction: float) -> np.ndarray:
        """Per unit, the level whose removed fraction is closest to `fraction` (ties: less removed)."""
        return np.array([int(np.argmin(np.abs(u.fractions - fraction) + 1e-12 * np.arange(u.n_levels))) for u in self.units])

    def with_counts(self, counts, grid: LevelGrid | None = None) -> SearchSpace:
        """The same units on other level grids: `counts[u]` removed groups per level, starting at 0."""
        units = tuple(replace(u, counts=tuple(int(c) for c in cs)) for u, cs in zip(self.units, counts))
        return SearchSpace(self.family, self.task, self.granularity, units, self.spec, grid or self.grid)

    def refined(self, levels: np.ndarray, *, step: float, width: int = 3) -> SearchSpace:
        """A grid `step` apart around an allocation (Tyr's coarse-to-fine).

        Per unit: the removed fractions f + j * step for |j| <= width around its current fraction f,
        snapped to whole groups (and the channel multiple), kept within the unit's range, plus 0 so
        the dense model stays reachable. A unit too small for the step (a few heads) keeps at least
        one group either side; under a fit, attention keeps its two levels. The current allocation
        lies on the new grid.
        """
        counts = []
        for unit, level in zip(self.units, levels):
            if unit.kind == "heads" and self.grid.fit:  # kept whole or removed: nothing in between
                counts.append(unit.counts)
                continue
            multiple = self.grid.channel_step if unit.kind == "channels" else 1
            centre, top = unit.counts[level], unit.counts[-1]
            near = {min(top, max(0, int(round((centre / unit.groups + j * step) * unit.groups / multiple)) * multiple))
                    for j in range(-width, width + 1)}
            if centre > 0 and not any(c < centre for c in near):
                near.add(max(0, centre - multiple))
            if centre < top and not any(c > centre for c in near):
                near.add(min(top, centre + multiple))
            counts.append(tuple(sorted(near | {0, centre})))
        return self.with_counts(counts, replace(self.grid, step=step))

    def level_of_counts(self, removed: list[int]) -> np.ndarray | None:
        """Level indices of an allocation given as removed groups per unit, or None when one is off this grid."""
        levels = []
        for unit, count in zip(self.units, removed):
            if count not in unit.counts:
                return None
            levels.append(unit.counts.index(count))
        return np.array(levels)

    @property
    def counts(self) -> list[list[int]]:
        """Removed groups at every level of every unit: the grid as plain data (a refined round's, a saved one)."""
        return [list(u.counts) for u in self.units]

    def removed_counts(self, levels: np.ndarray) -> list[int]:
        """Removed groups per unit for an allocation: comparable across grids."""
        return [unit.counts[k] for unit, k in zip(self.units, levels)]

    def check(self, levels: np.ndarray) -> None:
        """Raise if `levels` is not one valid level index per unit."""
        levels = np.asarray(levels)
        if levels.shape != (self.n_units,) or (levels < 0).any() or (levels >= self.n_levels).any():
            raise ConfigError(
                f"allocation {levels.tolist()} is not one level index per unit within "
                f"{self.n_levels.tolist()} levels"
            )

    def to_dict(self) -> dict:
        """A summary for results: family, granularity, id, spec and grid (no units)."""
        return {"family": self.family, "granularity": self.granularity, "id": self.id, "spec": self.spec,
                "grid": asdict(self.grid)}

    def to_json(self) -> dict:
        """Everything, units included, as plain JSON data (see `from_json`)."""
        return {"family": self.family, "task": self.task, "granularity": self.granularity,
                "units": [asdict(u) for u in self.units], "spec": self.spec, "grid": asdict(self.grid)}

    @classmethod
    def from_json(cls, data: dict) -> SearchSpace:
        """The space `to_json` wrote, without the model."""
        units = []
        for u in data["units"]:
            consumer = u["consumer"]
            units.append(Unit(**{**u, "counts": tuple(u["counts"]),
                                 "producers": tuple(Slice(**p) for p in u["producers"]),
                                 "consumer": Slice(**consumer) if consumer else None,
                                 "attrs": tuple(tuple(a) for a in u["attrs"])}))
        return cls(data["family"], data["task"], data["granularity"], tuple(units), data["spec"],
                   LevelGrid(**data["grid"]))
