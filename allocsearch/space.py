"""Search spaces: which modules of a model form which prunable units, and each unit's levels.

A family's YAML file (in `searchspaces/`) names the blocks and, per block, the modules of the
attention heads and of the MLP channels. `SearchSpace.from_model` reads it against a concrete
model and produces the units:

- `structured`: per block one `heads` unit (q/k/v rows and output-projection columns of each
  head, or of each key/value group with its query heads) and one `channels` unit (up/gate rows and
  down-projection columns). Removing every group removes the sublayer.
- `unstructured`: one unit per linear layer of the blocks; a level removes that fraction of the
  weights of every row.

Levels are removed counts of groups, increasing from 0, taken from a grid of fractions and
snapped to whole groups (whole heads, or a multiple of channels).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torch import nn

from ._modules import get_module, is_linear, linear_shape
from .errors import ConfigError, SpaceError

GRANULARITIES = ("structured", "unstructured")
TASKS = ("causal_lm", "encoder")
HEAD_ATTR_VALUES = ("heads", "kv_heads", "width")


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
    """

    step: float = 1 / 16
    max_level: float | None = None
    channel_multiple: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.step <= 1:
            raise ConfigError(f"grid step={self.step!r} must lie in (0, 1]; use e.g. 0.0625 (1/16)")
        if self.max_level is not None and not 0 < self.max_level <= 1:
            raise ConfigError(f"max_level={self.max_level!r} must lie in (0, 1]; use e.g. 0.95")
        if int(self.channel_multiple) != self.channel_multiple or self.channel_multiple < 1:
            raise ConfigError(f"channel_multiple={self.channel_multiple!r} must be a positive integer, e.g. 8")

    def counts(self, groups: int, granularity: str, multiple: int = 1) -> tuple[int, ...]:
        """Removed counts of `groups` at each level, increasing and unique, starting at 0."""
        top = self.max_level if self.max_level is not None else (1.0 if granularity == "structured" else 0.95)
        n = math.floor(top / self.step + 1e-9)
        counts = {min(groups, int(round(j * self.step * groups / multiple)) * multiple) for j in range(n + 1)}
        if top >= 1.0:
            counts.add(groups)
        return tuple(sorted(counts))


def known_families() -> dict[str, dict]:
    """The families shipped in `searchspaces/`, by name."""
    families = {}
    for entry in sorted(resources.files("allocsearch.searchspaces").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            spec = yaml.safe_load(entry.read_text(encoding="utf-8"))
            families[spec["family"]] = spec
    return families


def _family_help(families: dict[str, dict]) -> str:
    listed = ", ".join(f"{name} ({'/'.join(spec['model_types'])})" for name, spec in families.items())
    return (
        f"known families: {listed}. To add one, copy a file from searchspaces/ (the closest layout), "
        "edit its module paths and model_types, and pass it with --space FILE.yaml"
    )


def load_spec(space: str | Path | None, model_type: str | None) -> dict:
    """The YAML spec for `space` (a family name or a YAML file), or the family of `model_type`."""
    families = known_families()
    if space is not None:
        path = Path(space)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise SpaceError(f"space={str(space)!r}: no such file; pass an existing YAML file or a family name")
            try:
                spec = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise SpaceError(f"space={str(space)!r} is not valid YAML: {exc}") from None
            return validate_spec(spec, str(path))
        if str(space) not in families:
            raise SpaceError(f"space={str(space)!r} is not a known family; {_family_help(families)}")
        return validate_spec(families[str(space)], str(space))
    for spec in families.values():
        if model_type in spec["model_types"]:
            return validate_spec(spec, spec["family"])
    raise SpaceError(f"model_type={model_type!r} has no search space; {_family_help(families)}")


def validate_spec(spec: Any, source: str) -> dict:
    """Check a spec's keys and types, naming the file and key at fault."""
    if not isinstance(spec, dict):
        raise SpaceError(f"space {source}: expected a mapping at the top level, got {type(spec).__name__}")
    for key in ("family", "blocks", "final", "heads", "channels"):
        if key not in spec:
            raise SpaceError(f"space {source}: missing key {key!r}; see searchspaces/gpt2.yaml for the layout"
                             + (" (final lists the modules applied after the last block, e.g. [model.norm], "
                                "or [] for none)" if key == "final" else ""))
    if not isinstance(spec["final"], list) or not all(isinstance(p, str) for p in spec["final"]):
        raise SpaceError(f"space {source}: final={spec['final']!r} must be a list of module paths, e.g. [model.norm]")
    task = spec.setdefault("task", "causal_lm")
    if task not in TASKS:
        raise SpaceError(f"space {source}: task={task!r} must be one of {', '.join(TASKS)}")
    spec.setdefault("model_types", [])
    spec.setdefault("once_per_sequence", [])
    heads, channels = spec["heads"], spec["channels"]
    for key in ("attention", "out"):
        if key not in heads:
            raise SpaceError(f"space {source}: heads.{key} is missing")
    if "qkv" not in heads and not all(k in heads for k in ("query", "key", "value")):
        raise SpaceError(f"space {source}: heads needs either qkv (fused) or query, key and value")
    heads.setdefault("set", {})
    for attr, what in heads["set"].items():
        if what not in HEAD_ATTR_VALUES:
            raise SpaceError(
                f"space {source}: heads.set.{attr}={what!r} must be one of {', '.join(HEAD_ATTR_VALUES)}"
            )
    if not isinstance(channels.get("up"), list) or "down" not in channels:
        raise SpaceError(f"space {source}: channels needs up (a list of modules) and down")
    return spec


@dataclass(frozen=True)
class SearchSpace:
    """The units of one model and their levels.

    Example:
        >>> space = SearchSpace.from_model(model, granularity="structured")
        >>> space.units[0].name, space.units[0].fractions
        ('transformer.h.0.heads', array([0., 0.125, ...]))
    """

    family: str
    task: str
    granularity: str
    units: tuple[Unit, ...]
    spec: dict = field(compare=False)
    grid: LevelGrid = LevelGrid()

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        granularity: str = "structured",
        space: str | Path | None = None,
        grid: LevelGrid = LevelGrid(),
    ) -> SearchSpace:
        """Read the family spec (or `space`, a name or YAML file) against `model`."""
        if granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={granularity!r} must be one of {', '.join(GRANULARITIES)}")
        spec = load_spec(space, getattr(model.config, "model_type", None))
        _check_final(model, spec)
        units = _structured_units(model, spec, grid) if granularity == "structured" else _linear_units(model, spec, grid)
        return cls(spec["family"], spec["task"], granularity, tuple(units), spec, grid)

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
        blob = json.dumps([self.spec, self.granularity, [asdict(u) for u in self.units]], sort_keys=True)
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
        one group either side. The current allocation lies on the new grid.
        """
        counts = []
        for unit, level in zip(self.units, levels):
            multiple = self.grid.channel_multiple if unit.kind == "channels" else 1
            centre, top = unit.counts[level], unit.counts[-1]
            near = {min(top, max(0, int(round((centre / unit.groups + j * step) * unit.groups / multiple)) * multiple))
                    for j in range(-width, width + 1)}
            if centre > 0 and not any(c < centre for c in near):
                near.add(max(0, centre - multiple))
            if centre < top and not any(c > centre for c in near):
                near.add(min(top, centre + multiple))
            counts.append(tuple(sorted(near | {0, centre})))
        return self.with_counts(counts, LevelGrid(step, self.grid.max_level, self.grid.channel_multiple))

    def level_of_counts(self, removed: list[int]) -> np.ndarray | None:
        """Level indices of an allocation given as removed groups per unit, or None when one is off this grid."""
        levels = []
        for unit, count in zip(self.units, removed):
            if count not in unit.counts:
                return None
            levels.append(unit.counts.index(count))
        return np.array(levels)

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


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def _checked_linear(model: nn.Module, path: str, family: str) -> nn.Module:
    try:
        module = get_module(model, path)
    except AttributeError:
        raise SpaceError(
            f"space {family}: module {path!r} does not exist in this model; check the module paths in the YAML"
        ) from None
    if not is_linear(module):
        raise SpaceError(f"space {family}: module {path!r} is a {type(module).__name__}, not a linear layer")
    return module


def _check_final(model: nn.Module, spec: dict) -> None:
    """Every `final` path names a module of the model, or an attribute it holds as None (absent here)."""
    for path in spec["final"]:
        parent_path, _, name = path.rpartition(".")
        try:
            value = getattr(get_module(model, parent_path), name)
        except AttributeError:
            value = AttributeError
        if not (value is None or isinstance(value, nn.Module)):
            raise SpaceError(f"space {spec['family']}: final module {path!r} does not exist in this model; "
                             "check the final paths in the YAML")


def _blocks(model: nn.Module, spec: dict) -> tuple[str, int]:
    try:
        blocks = get_module(model, spec["blocks"])
    except AttributeError:
        raise SpaceError(f"space {spec['family']}: blocks {spec['blocks']!r} do not exist in this model") from None
    return spec["blocks"], len(blocks)


def _structured_units(model: nn.Module, spec: dict, grid: LevelGrid) -> list[Unit]:
    family, heads, channels = spec["family"], spec["heads"], spec["channels"]
    n_heads = _config_int(model.config, "num_attention_heads", "n_head")
    n_kv = _config_int(model.config, "num_key_value_heads") or n_heads
    if n_heads is None or n_heads % n_kv:
        raise SpaceError(f"space {family}: cannot read the head counts from the model config")
    per_group = n_heads // n_kv
    prefix, n_blocks = _blocks(model, spec)
    units = []
    for b in range(n_blocks):
        at = f"{prefix}.{b}"
        out_path = f"{at}.{heads['out']}"
        width = linear_shape(_checked_linear(model, out_path, family))[1]
        head_dim = width // n_heads
        if "qkv" in heads:
            qkv = f"{at}.{heads['qkv']}"
            if per_group != 1 or linear_shape(_checked_linear(model, qkv, family))[0] != 3 * width:
                raise SpaceError(f"space {family}: fused qkv {qkv!r} must hold 3 x {width} rows of plain multi-head attention")
            producers = tuple(Slice(qkv, i * width, head_dim) for i in range(3))
        else:
            q, k, v = (f"{at}.{heads[r]}" for r in ("query", "key", "value"))
            for path, rows in ((q, width), (k, n_kv * head_dim), (v, n_kv * head_dim)):
                if linear_shape(_checked_linear(model, path, family))[0] != rows:
                    raise SpaceError(f"space {family}: {path!r} should have {rows} output rows for {n_heads} heads")
            producers = (Slice(q, 0, per_group * head_dim), Slice(k, 0, head_dim), Slice(v, 0, head_dim))
        units.append(Unit(
            name=f"{at}.heads", kind="heads", block=b, groups=n_kv,
            counts=grid.counts(n_kv, "structured"),
            producers=producers, consumer=Slice(out_path, 0, per_group * head_dim),
            sublayer=f"{at}.{heads['attention']}", attrs=tuple(sorted(heads["set"].items())),
            heads_per_group=per_group, head_dim=head_dim,
        ))
        down = f"{at}.{channels['down']}"
        n_channels = linear_shape(_checked_linear(model, down, family))[1]
        ups = tuple(f"{at}.{p}" for p in channels["up"])
        for up in ups:
            if linear_shape(_checked_linear(model, up, family))[0] != n_channels:
                raise SpaceError(f"space {family}: {up!r} should have {n_channels} output rows like {down!r} has inputs")
        units.append(Unit(
            name=f"{at}.channels", kind="channels", block=b, groups=n_channels,
            counts=grid.counts(n_channels, "structured", grid.channel_multiple),
            producers=tuple(Slice(up, 0, 1) for up in ups), consumer=Slice(down, 0, 1),
            sublayer=f"{at}.{channels['mlp']}" if channels.get("mlp") else None,
        ))
    return units


def _linear_units(model: nn.Module, spec: dict, grid: LevelGrid) -> list[Unit]:
    heads, channels = spec["heads"], spec["channels"]
    names = [heads["qkv"]] if "qkv" in heads else [heads["query"], heads["key"], heads["value"]]
    names += [heads["out"], *channels["up"], channels["down"]]
    prefix, n_blocks = _blocks(model, spec)
    units = []
    for b in range(n_blocks):
        for name in names:
            path = f"{prefix}.{b}.{name}"
            in_features = linear_shape(_checked_linear(model, path, spec["family"]))[1]
            units.append(Unit(name=path, kind="linear", block=b, groups=in_features,
                              counts=grid.counts(in_features, "unstructured"), module=path))
    return units
