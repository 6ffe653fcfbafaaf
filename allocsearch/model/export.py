"""Write a physically pruned model, and load one back.

An export directory loads with `from_pretrained` and holds `model.safetensors` and `config.json`
in one of three layouts (`LAYOUTS`, see `allocsearch.model.hf_export`): a stock checkpoint with
fewer blocks, the dense shapes with zeros (unstructured), or per-block shapes with
`modeling_pruned.py` (sublayers without heads or channels replaced by their constant output). Two
other formats are written on request (`EXPORT_FORMATS`): unstructured weights compressed
(`allocsearch.model.sparse_weights`) and NVIDIA's DeciLM blocks for vLLM (`allocsearch.model.decilm`). Beside
them: `allocation.json` (levels and kept groups per unit, and the layout), `space.yaml`, the
tokenizer and, when there is one, the search `result.json`. `load_pruned` needs no remote code: it
rebuilds the architecture from the stock config, gives every unit its kept shape with the same code
that composed the candidate, and loads the weights; its forward has the original model's signature
and outputs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers  # a lazy module: its model classes load on first use
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from .. import _io
from ..core.cost import CostModel
from ..core.result import Result
from ..core.space import SearchSpace
from ..errors import ConfigError, InputFileError
from .build import space_from_model
from .compose import Composer
from .decilm import CONFIG_FILE as DECILM_CONFIG_FILE
from .decilm import CONFIG_MODULE as DECILM_CONFIG_MODULE
from .decilm import decilm_checkpoint
from .hf_export import (
    MODELING_FILE,
    block_constant,
    checkpoint_tensors,
    depth_only_blocks,
    modeling_source,
    pruned_layout,
    remote_code_config,
    stock_checkpoint,
)
from .loading import save_tokenizer
from .recipes import write_recipes
from .sparse_weights import load_compressed, per_layer_sparsity, write_compressed

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
                 result: Result | None = None, *, export_format: str = "hf") -> Path:
    """Compose `levels` on the composer's model and write it to `out_dir` (atomically).

    Args:
        export_format: `hf`: a directory `from_pretrained` loads: a stock checkpoint when the
            allocation removes whole blocks only (or is unstructured: the dense shapes, with
            zeros), else through the remote code of `allocsearch.model.hf_export`
            (`trust_remote_code=True`); `compressed`: an unstructured allocation's weights in
            compressed-tensors' sparse-bitmask form; `decilm`: NVIDIA's DeciLM format, which vLLM
            serves (Llama family, searched with `fit="decilm"`).
    """
    check_export_format(export_format, composer.space.granularity)
    out_dir = check_export_dir(out_dir)
    space, model = composer.space, composer.model
    composer.apply(levels)
    kept = {u.name: u.groups - u.counts[k] for u, k in zip(space.units, levels)}
    meta = {"format": FORMAT, "task": space.task, "granularity": space.granularity, "space_id": space.id,
            "grid": space.to_dict()["grid"], "levels": space.levels_dict(levels),
            "allocation": space.allocation_dict(levels), "kept_groups": kept, "cost": costs.ratios(levels)}
    with _io.atomic_directory(out_dir) as tmp:
        meta["layout"] = _write_weights(composer, levels, tmp, export_format)
        if space.granularity == "unstructured":  # what each layer really holds
            meta["sparsity"] = per_layer_sparsity(model.state_dict(), [u.name for u in space.units])
        save_tokenizer(tokenizer, tmp)
        _io.write_json(tmp / "allocation.json", meta)
        _io.write_text(tmp / "space.yaml", yaml.safe_dump(space.spec, sort_keys=False))
        if result is not None:
            result.save(tmp / "result.json")
            write_recipes(result, tmp / "recipes")
    log.info("pruned model written to %s (%s)", out_dir, LAYOUTS[meta["layout"]])
    return out_dir


EXPORT_FORMATS = ("hf", "compressed", "decilm")
LAYOUTS = {  # what `allocation.json`'s layout says of the directory
    "stock": "a stock checkpoint with fewer blocks: from_pretrained loads it as is",
    "remote_code": "per-block shapes: from_pretrained(..., trust_remote_code=True) loads it",
    "masked": "dense shapes with zeros: from_pretrained loads it as is",
    "compressed": "sparse-bitmask weights: allocsearch.load_pruned (or compressed-tensors <= 0.14) loads it",
    "decilm": "NVIDIA's DeciLM blocks: vllm serve DIR --trust-remote-code",
}
FOREIGN_LAYOUTS = {"decilm": "serve it with vLLM (DeciLMForCausalLM), or export again without the decilm format "
                             "to load it here"}


def check_export_format(export_format: str, granularity: str | None = None) -> None:
    """Refuse an unknown format, or one an allocation of `granularity` cannot be written in."""
    if export_format not in EXPORT_FORMATS:
        raise ConfigError(f"export_format={export_format!r} is not a model format; choose one of "
                          f"{', '.join(EXPORT_FORMATS)}")
    needs = {"compressed": "unstructured", "decilm": "structured"}.get(export_format)
    if granularity is not None and needs and granularity != needs:
        raise ConfigError(f"export_format={export_format!r} writes {needs} allocations, and this one is "
                          f"{granularity}; use export_format='hf'")


def _write_weights(composer: Composer, levels: np.ndarray, directory: Path, export_format: str) -> str:
    """Write config.json and model.safetensors (and the modeling file if needed); returns the layout."""
    space, model = composer.space, composer.model
    if export_format == "compressed":
        write_compressed(model, [u.name for u in space.units], directory)
        return "compressed"
    if export_format == "decilm":
        config, tensors = decilm_checkpoint(model.config, space, levels, model.state_dict())
        _io.write_json(directory / "config.json", config)
        shutil.copy(DECILM_CONFIG_MODULE, directory / DECILM_CONFIG_FILE)
        _save_tensors(tensors, directory)
        return "decilm"
    if space.granularity == "unstructured":
        model.config.save_pretrained(directory)
        _save_tensors(checkpoint_tensors(model), directory)
        return "masked"
    kept_blocks = depth_only_blocks(space, levels)
    if kept_blocks is not None and _write_stock(composer, levels, kept_blocks, directory):
        return "stock"
    composer.apply(levels)
    _io.write_json(directory / "config.json", remote_code_config(model.config, pruned_layout(space, levels), space.task))
    _io.write_text(directory / MODELING_FILE, modeling_source(model))
    _save_tensors(checkpoint_tensors(model), directory)
    return "remote_code"


def _write_stock(composer: Composer, levels: np.ndarray, kept_blocks: list[int], directory: Path) -> bool:
    """Write the stock checkpoint of a depth-only allocation if it reproduces the composed model."""
    space, model = composer.space, composer.model
    composer.apply(levels)
    constants = {b: block_constant(model, space, b) for b in range(space.units[-1].block + 1) if b not in kept_blocks}
    expected = _probe(model, space.task)
    composer.apply(np.zeros_like(levels))
    stock = stock_checkpoint(model, space, kept_blocks, constants, checkpoint_tensors(model))
    if stock is None:
        log.info("a removed block adds a constant with no earlier bias to fold it into: exporting with remote code")
        return False
    config, tensors = stock
    config.save_pretrained(directory)
    _save_tensors(tensors, directory)
    loaded = _auto(space.task).from_pretrained(directory, dtype=next(model.parameters()).dtype)
    got = _probe(loaded.to(next(model.parameters()).device), space.task)
    tolerance = 1e-4 if got.dtype == torch.float32 else 2e-2
    if float((got - expected).abs().max()) <= tolerance * float(expected.abs().max()):
        return True
    log.info("this family's blocks do not vanish when emptied (post-LN): exporting with remote code")
    for name in ("config.json", "model.safetensors"):
        (directory / name).unlink()
    return False


def _probe(model: nn.Module, task: str) -> torch.Tensor:
    """The model's logits (or last hidden states) on fixed token ids."""
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids.to(next(model.parameters()).device))
    return (out.logits if task == "causal_lm" else out.last_hidden_state).float().cpu()


def _save_tensors(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    """`model.safetensors`, streamed to the file (the directory is a temporary one, swapped in whole)."""
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def _auto(task: str):
    return transformers.AutoModelForCausalLM if task == "causal_lm" else transformers.AutoModel


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
    layout = meta.get("layout", "remote_code")
    if layout not in LAYOUTS or layout in FOREIGN_LAYOUTS:
        raise InputFileError(f"{str(directory)!r} holds a {layout} export; "
                             f"{FOREIGN_LAYOUTS.get(layout, 'this version of allocsearch cannot load it')}")
    auto = _auto(meta["task"])
    if layout == "compressed":
        return load_compressed(directory, attn_implementation=attn_implementation)
    if layout != "remote_code":
        return auto.from_pretrained(directory, attn_implementation=attn_implementation).eval().requires_grad_(False)
    config_dict = json.loads((directory / "config.json").read_text())
    for key in ("auto_map", "pruned_layout", "architectures"):
        config_dict.pop(key, None)
    base_type = config_dict.pop("model_type").removeprefix("pruned_")
    config = transformers.AutoConfig.for_model(base_type, **config_dict)
    model = auto.from_config(config, attn_implementation=attn_implementation)
    # give every unit its exported shape
    space = space_from_model(model, granularity="structured", space=directory / "space.yaml")
    kept = meta["kept_groups"]
    space = space.with_counts([sorted({0, u.groups - kept[u.name]}) for u in space.units])
    levels = np.array([int(u.n_levels > 1) for u in space.units])
    Composer(model, space, _KeptShapes(space)).apply(levels)
    missing, unexpected = model.load_state_dict(load_file(directory / "model.safetensors"), strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise InputFileError(f"{str(directory)!r}: model.safetensors does not fit its allocation "
                             f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}); export it again")
    return model.eval().requires_grad_(False)
