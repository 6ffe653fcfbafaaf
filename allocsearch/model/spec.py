"""Family specs: the YAML files that say which modules of a model form its units.

A family's YAML file (in `searchspaces/` beside this file) names the blocks and, per block, the
modules of the attention heads and of the MLP channels; a new family is one more file there (or
any file passed as `space=`). `load_spec` finds and checks one; `allocsearch.model.build` reads it
against a model.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..core.space import TASKS
from ..errors import SpaceError

HEAD_ATTR_VALUES = ("heads", "kv_heads", "width")


def known_families() -> dict[str, dict]:
    """The families shipped in `searchspaces/` beside this file, by name."""
    families = {}
    for entry in sorted(resources.files(__package__).joinpath("searchspaces").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            spec = yaml.safe_load(entry.read_text(encoding="utf-8"))
            families[spec["family"]] = spec
    return families


def _family_help(families: dict[str, dict]) -> str:
    listed = ", ".join(f"{name} ({'/'.join(spec['model_types'])})" for name, spec in families.items())
    return (
        f"known families: {listed}. To add one, copy a file from allocsearch/model/searchspaces/ (the closest "
        "layout), edit its module paths and model_types, and pass it as space=FILE.yaml"
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
