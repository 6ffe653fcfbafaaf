"""Export a physically pruned model, and load one back.

An export directory holds `model.safetensors` (each block with its own number of heads and
channels; sublayers without heads replaced by their constant output), the original `config.json`,
`allocation.json` (levels and kept groups per unit), `space.yaml`, the tokenizer and, when there
is one, the search `result.json`. `load_pruned` rebuilds the architecture from the config, gives
every unit its kept shape with the same code that composed the candidate, and loads the weights:
its forward has the original model's signature and outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from . import _io
from .compose import Composer
from .errors import ConfigError, InputFileError, SpaceError
from .models import save_tokenizer
from .pipeline import RunConfig, Session
from .result import Result
from .space import LevelGrid, SearchSpace

FORMAT = 1
log = logging.getLogger(__name__)


def check_export_dir(out_dir: str | Path) -> Path:
    """Refuse to replace a directory that holds anything but an earlier export."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "allocation.json").is_file())):
        raise ConfigError(f"export directory {str(out_dir)!r} exists and is not an allocsearch export; "
                          "pass a new or empty directory (an earlier export there is replaced)")
    return out_dir


def export_levels(session: Session, levels: np.ndarray, out_dir: str | Path, result: Result | None = None) -> Path:
    """Compose `levels` on the session's model and write it to `out_dir` (atomically)."""
    out_dir = check_export_dir(out_dir)
    space = session.space
    session.composer.apply(levels)
    kept = {u.name: u.groups - u.counts[k] for u, k in zip(space.units, levels)}
    meta = {"format": FORMAT, "task": space.task, "granularity": space.granularity, "space_id": space.id,
            "grid": space.to_dict()["grid"], "levels": space.levels_dict(levels),
            "allocation": space.allocation_dict(levels), "kept_groups": kept,
            "cost": session.costs.ratios(levels)}
    with _io.atomic_directory(out_dir) as tmp:
        save_model(session.model, str(tmp / "model.safetensors"))
        session.model.config.save_pretrained(tmp)
        save_tokenizer(session.tokenizer, tmp)
        _io.write_json(tmp / "allocation.json", meta)
        _io.write_text(tmp / "space.yaml", yaml.safe_dump(space.spec, sort_keys=False))
        if result is not None:
            result.save(tmp / "result.json")
    log.info("pruned model written to %s", out_dir)
    return out_dir


def export(result: Result | str | Path, out_dir: str | Path, *, model: str | None = None,
           progress: bool = True) -> Path:
    """Write the pruned model of a search result (a `Result` or its JSON file) to `out_dir`.

    Example:
        >>> allocsearch.export("result.json", "pruned/")
        >>> pruned = allocsearch.load_pruned("pruned/")
    """
    if not isinstance(result, Result):
        result = Result.load(result)
    config = RunConfig.from_dict({**result.config, **({"model": model} if model else {})})
    session = Session(config, progress=progress)
    base_id = result.space.get("base_id", result.space.get("id"))
    if session.space.id != base_id:
        raise SpaceError(f"--result was searched on space {base_id} but this model gives "
                         f"{session.space.id}; pass the --model the search used")
    if result.space.get("rounds"):  # found on a refined grid: rebuild that grid
        grid = LevelGrid(**result.space["grid"])
        session = session.for_space(session.space.with_counts(result.space["rounds"][-1], grid))
    return export_levels(session, session.space.levels_from_dict(result.levels), out_dir, result)


class _KeptShapes:
    """A variant source that gives each structured unit its first `kept` groups (weights load after).

    Paired with a space whose units have two levels, dense and the exported removal.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def removal(self, unit: int) -> torch.Tensor:
        u = self.space.units[unit]
        kept = u.groups - u.counts[-1]
        return torch.tensor([u.n_levels] * kept + [1] * (u.groups - kept), dtype=torch.int16)

    def variant(self, unit: int, level: int):
        return None


def load_pruned(directory: str | Path, *, attn_implementation: str = "sdpa") -> nn.Module:
    """The pruned model written by `export`, in eval mode.

    Example:
        >>> model = allocsearch.load_pruned("pruned/")
        >>> model(input_ids).logits
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    directory = Path(directory)
    meta_path = directory / "allocation.json"
    if not meta_path.is_file():
        raise InputFileError(f"{str(directory)!r} holds no allocation.json; pass a directory written by export")
    meta = json.loads(meta_path.read_text())
    config = AutoConfig.from_pretrained(directory)
    auto = AutoModelForCausalLM if meta["task"] == "causal_lm" else AutoModel
    model = auto.from_config(config, attn_implementation=attn_implementation)
    if meta["granularity"] == "structured":  # give every unit its exported shape
        space = SearchSpace.from_model(model, granularity="structured", space=directory / "space.yaml")
        kept = meta["kept_groups"]
        space = space.with_counts([sorted({0, u.groups - kept[u.name]}) for u in space.units])
        levels = np.array([int(u.n_levels > 1) for u in space.units])
        Composer(model, space, _KeptShapes(space)).apply(levels)
    load_model(model, str(directory / "model.safetensors"))
    return model.eval().requires_grad_(False)
