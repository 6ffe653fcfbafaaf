"""Write a physically pruned model, and load one back.

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
import transformers  # a lazy module: its model classes load on first use
import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from .. import _io
from ..core.cost import CostModel
from ..core.result import Result
from ..core.space import SearchSpace
from ..errors import ConfigError, InputFileError
from .build import space_from_model
from .compose import Composer
from .loading import save_tokenizer

FORMAT = 1
log = logging.getLogger(__name__)


def check_export_dir(out_dir: str | Path) -> Path:
    """Refuse to replace a directory that holds anything but an earlier export."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "allocation.json").is_file())):
        raise ConfigError(f"export_dir={str(out_dir)!r} exists and is not an allocsearch export; "
                          "pass a new or empty directory (an earlier export there is replaced)")
    return out_dir


def write_pruned(composer: Composer, costs: CostModel, tokenizer, levels: np.ndarray, out_dir: str | Path,
                 result: Result | None = None) -> Path:
    """Compose `levels` on the composer's model and write it to `out_dir` (atomically)."""
    out_dir = check_export_dir(out_dir)
    space, model = composer.space, composer.model
    composer.apply(levels)
    kept = {u.name: u.groups - u.counts[k] for u, k in zip(space.units, levels)}
    meta = {"format": FORMAT, "task": space.task, "granularity": space.granularity, "space_id": space.id,
            "grid": space.to_dict()["grid"], "levels": space.levels_dict(levels),
            "allocation": space.allocation_dict(levels), "kept_groups": kept, "cost": costs.ratios(levels)}
    with _io.atomic_directory(out_dir) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        model.config.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        _io.write_json(tmp / "allocation.json", meta)
        _io.write_text(tmp / "space.yaml", yaml.safe_dump(space.spec, sort_keys=False))
        if result is not None:
            result.save(tmp / "result.json")
    log.info("pruned model written to %s", out_dir)
    return out_dir


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

    For example::

        model = allocsearch.load_pruned("pruned/")
        model(input_ids).logits
    """
    directory = Path(directory)
    meta_path = directory / "allocation.json"
    if not meta_path.is_file():
        raise InputFileError(f"{str(directory)!r} holds no allocation.json; pass a directory written by export")
    meta = json.loads(meta_path.read_text())
    config = transformers.AutoConfig.from_pretrained(directory)
    auto = transformers.AutoModelForCausalLM if meta["task"] == "causal_lm" else transformers.AutoModel
    model = auto.from_config(config, attn_implementation=attn_implementation)
    if meta["granularity"] == "structured":  # give every unit its exported shape
        space = space_from_model(model, granularity="structured", space=directory / "space.yaml")
        kept = meta["kept_groups"]
        space = space.with_counts([sorted({0, u.groups - kept[u.name]}) for u in space.units])
        levels = np.array([int(u.n_levels > 1) for u in space.units])
        Composer(model, space, _KeptShapes(space)).apply(levels)
    load_model(model, str(directory / "model.safetensors"))
    return model.eval().requires_grad_(False)
