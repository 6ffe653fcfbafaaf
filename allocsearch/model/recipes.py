"""A searched allocation as the input files of other pruning tools.

Each tool prunes by its own criterion; these files only tell it how much to remove where:

- **llm-compressor** (unstructured): a recipe YAML of `SparseGPTModifier` or `WandaPruningModifier`
  runs, one per distinct sparsity, each naming its Linear layers exactly in `targets`.
- **NNI v3** (both): a `config_list`, one dict per layer with `op_names` and `sparse_ratio`; for
  structured results whole output rows (`granularity`) of the layers that produce the heads and
  channels, the channel producers of a block in one `dependency_group_id`.
- **Torch-Pruning** (structured): `pruning_ratio_dict` and `head_pruning_ratio_dict` by module
  name; `pruning_ratio_dict(model, names)` turns names into the modules `MetaPruner` takes.

Everything here reads a `Result` only (and its family spec); no model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import yaml
from torch import nn

from .. import _io
from ..core.result import Result
from ..errors import ConfigError
from .spec import load_spec

log = logging.getLogger(__name__)

MODIFIERS = {"sparsegpt": "SparseGPTModifier", "wanda": "WandaPruningModifier"}
TRANSPOSED_FAMILIES = ("gpt2",)  # weights stored (in, out), as GPT-2's Conv1D: output rows are weight columns


def llmcompressor_recipe(result: Result, *, modifier: str = "sparsegpt") -> str:
    """An llm-compressor recipe (YAML text) that prunes every layer to its searched sparsity.

    llm-compressor (0.5 and later) reads a list `sparsity` by the order of `model.named_modules()`,
    not by the order of `targets`, and the families order their projections differently (OPT
    holds k, v, q). So the recipe has one modifier per distinct sparsity, each with a scalar
    `sparsity` and the exact names of its layers as `targets`: every Linear gets exactly its
    allocation, whatever the module order. Layers left dense (sparsity 0) are not named.
    `mask_structure` is "0:0" (unstructured). Versions since 0.11 hook only modules whose class
    is Linear or ConvNd, so GPT-2's Conv1D layers are named but left dense there.

    Args:
        result: an unstructured search result.
        modifier: "sparsegpt" or "wanda".

    Raises:
        ConfigError: for a structured result (SparseGPT and Wanda prune single weights), or an
            unknown modifier.

    Example:
        >>> r = Result("dp", {}, {"model.layers.0.mlp.up_proj": 0.5}, {}, {}, 0.0, None, None, 0, 0,
        ...            {}, {"family": "llama", "granularity": "unstructured"})
        >>> print(llmcompressor_recipe(r).split("\\n", 1)[1])  # doctest: +NORMALIZE_WHITESPACE
        sparsity_stage:
          sparsity_0_modifiers:
            SparseGPTModifier:
              sparsity: 0.5
              mask_structure: 0:0
              targets:
              - model.layers.0.mlp.up_proj
        <BLANKLINE>
    """
    if modifier not in MODIFIERS:
        raise ConfigError(f"modifier={modifier!r} must be one of {', '.join(MODIFIERS)}")
    _require(result, "unstructured", "llm-compressor")
    if result.space.get("family") in TRANSPOSED_FAMILIES:
        log.warning("llm-compressor 0.11 and later prune only Linear and ConvNd classes: the %s family's "
                    "Conv1D layers named in this recipe stay dense there", result.space["family"])
    by_sparsity: dict[float, list[str]] = {}
    for name, fraction in result.allocation.items():
        if fraction > 0:
            by_sparsity.setdefault(float(fraction), []).append(name)
    groups = {f"sparsity_{i}_modifiers": {MODIFIERS[modifier]: {"sparsity": s, "mask_structure": "0:0",
                                                                   "targets": names}}
              for i, (s, names) in enumerate(sorted(by_sparsity.items()))}
    header = f"# allocsearch {result.method} allocation, budget {result.budget}: one modifier per sparsity\n"
    return header + yaml.safe_dump({"sparsity_stage": groups}, sort_keys=False)


def nni_config_list(result: Result) -> list[dict]:
    """An NNI v3 `config_list`: one dict per layer, `op_names` and `sparse_ratio`.

    Unstructured: the layer's searched fraction of weights (for `LevelPruner`, which masks single
    weights). Structured: the layers that produce a unit's rows (query/key/value or the fused qkv
    for heads, the `up` layers for channels) each lose the unit's fraction of output rows,
    `granularity` "out_channel" (NNI's weight dim 0; "in_channel" for families whose weights are
    stored transposed, as GPT-2's Conv1D); the `up` layers of a block share a
    `dependency_group_id`, so they lose the same channels. NNI ranks single rows, not whole heads;
    its speedup removes the matching input columns of the out and down layers. For transposed
    weights every dict also aligns the bias with weight dim 1, and NNI 3.0 needs the class
    registered first: `PruningSetting.register("Conv1D", PruningSetting.registry["Linear"])`
    (`nni.compression.base.setting`).

    Example:
        >>> r = Result("dp", {}, {"model.layers.0.channels": 0.25}, {}, {}, 0.0, None, None, 0, 0,
        ...            {}, {"family": "llama", "granularity": "structured"})
        >>> [c["op_names"] for c in nni_config_list(r)]
        [['model.layers.0.mlp.gate_proj'], ['model.layers.0.mlp.up_proj']]
    """
    # NNI aligns a bias with weight dim 0, the input dim of a transposed (Conv1D) weight: point it at dim 1
    bias = {"target_settings": {"bias": {"align": {"module_name": None, "target_name": "weight", "dims": [1]}}}} \
        if result.space.get("family") in TRANSPOSED_FAMILIES else {}
    if result.space.get("granularity") == "unstructured":
        return [{"op_names": [name], "sparse_ratio": float(f), **bias} for name, f in result.allocation.items()]
    _require(result, "structured", "nni")
    rows = {"granularity": "in_channel" if bias else "out_channel", **bias}
    spec, configs = _spec(result), []
    for unit, fraction in result.allocation.items():
        block, kind = _unit_parts(unit)
        group = {"dependency_group_id": unit} if kind == "channels" else {}
        for path in _producers(spec, kind):
            configs.append({"op_names": [f"{block}.{path}"], "sparse_ratio": float(fraction), **rows, **group})
    return configs


def torch_pruning_ratios(result: Result) -> dict[str, dict[str, float]]:
    """Torch-Pruning ratios by module name: `{"pruning_ratio_dict": ..., "head_pruning_ratio_dict": ...}`.

    Channels: every `up` layer of a block (the roots of its MLP channel group) keyed in
    `pruning_ratio_dict` with the removed fraction. Heads: the query, key and value layers (or the
    fused qkv) keyed in `head_pruning_ratio_dict` with the removed fraction of heads, and in
    `pruning_ratio_dict` with the same value, which opens the group to pruning. Use them with
    `MetaPruner(..., pruning_ratio=0.0, num_heads={q, k, v: their head counts},
    prune_num_heads=True, prune_head_dims=False)` so only these heads and channels go (never the
    hidden size). With grouped-query attention Torch-Pruning removes that fraction of query heads
    inside every key/value group and keeps the key/value heads; allocsearch removes whole groups.

    Raises:
        ConfigError: for an unstructured result, or a unit removed whole (fraction 1), which
            Torch-Pruning cannot do.

    Example:
        >>> r = Result("dp", {}, {"model.layers.0.channels": 0.25}, {}, {}, 0.0, None, None, 0, 0,
        ...            {}, {"family": "llama", "granularity": "structured"})
        >>> torch_pruning_ratios(r)["pruning_ratio_dict"]
        {'model.layers.0.mlp.gate_proj': 0.25, 'model.layers.0.mlp.up_proj': 0.25}
    """
    _require(result, "structured", "torch-pruning")
    whole = [unit for unit, f in result.allocation.items() if f >= 1]
    if whole:
        raise ConfigError(f"result removes {', '.join(whole)} whole (fraction 1), which Torch-Pruning cannot do; "
                          "search again with --max-level below 1, or use allocsearch export, which drops them")
    spec = _spec(result)
    ratios: dict[str, dict[str, float]] = {"pruning_ratio_dict": {}, "head_pruning_ratio_dict": {}}
    for unit, fraction in result.allocation.items():
        block, kind = _unit_parts(unit)
        for path in _producers(spec, kind):
            ratios["pruning_ratio_dict"][f"{block}.{path}"] = float(fraction)
            if kind == "heads":
                ratios["head_pruning_ratio_dict"][f"{block}.{path}"] = float(fraction)
    return ratios


def pruning_ratio_dict(model: nn.Module, ratios: dict[str, float]) -> dict[nn.Module, float]:
    """Module names to the modules of `model`, for `MetaPruner`'s `pruning_ratio_dict` and
    `head_pruning_ratio_dict`.

    Raises:
        ConfigError: for a name that is not a module of `model`, or a ratio outside [0, 1).

    Example:
        >>> layer = nn.Sequential(nn.Linear(4, 8))
        >>> pruning_ratio_dict(layer, {"0": 0.5}) == {layer[0]: 0.5}
        True
    """
    mapped = {}
    for name, ratio in ratios.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"ratios names module {name!r}, which {type(model).__name__} does not have; "
                              "pass the model the search ran on") from None
        if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ConfigError(f"ratios[{name!r}]={ratio!r} must be a number in [0, 1)")
        mapped[module] = float(ratio)
    return mapped


class RecipeFormat(NamedTuple):
    """A file format: its fixed file name, its writer and the granularities it fits."""

    file: str
    write: Callable[[Result, Path], None]
    granularities: tuple[str, ...]


RECIPE_FORMATS = {
    "llm-compressor": RecipeFormat("llmcompressor_recipe.yaml",
                                   lambda r, p: _io.write_text(p, llmcompressor_recipe(r)), ("unstructured",)),
    "nni": RecipeFormat("nni_config_list.json", lambda r, p: _io.write_json(p, nni_config_list(r)),
                        ("structured", "unstructured")),
    "torch-pruning": RecipeFormat("torch_pruning_ratios.json", lambda r, p: _io.write_json(p, torch_pruning_ratios(r)),
                                  ("structured",)),
}


def write_recipe(result: Result, format: str, path: str | Path) -> Path:
    """Write one format (a key of `RECIPE_FORMATS`) to `path`, atomically.

    Raises:
        ConfigError: for an unknown format, or one that does not fit the result's granularity.

    Example:
        >>> r = Result("dp", {}, {"model.layers.0.channels": 0.25}, {}, {}, 0.0, None, None, 0, 0,
        ...            {}, {"family": "llama", "granularity": "structured"})
        >>> import tempfile; out = Path(tempfile.mkdtemp()) / "nni.json"
        >>> write_recipe(r, "nni", out) == out
        True
    """
    if format not in RECIPE_FORMATS:
        raise ConfigError(f"format={format!r} is not a recipe format; choose one of {', '.join(RECIPE_FORMATS)}")
    path = Path(path)
    RECIPE_FORMATS[format].write(result, path)
    return path


def write_recipes(result: Result, directory: str | Path) -> dict[str, Path]:
    """Write every format that fits the result into `directory`, by format name; a format that cannot
    express this allocation is left out with a warning.

    Example:
        >>> r = Result("dp", {}, {"model.layers.0.channels": 0.25}, {}, {}, 0.0, None, None, 0, 0,
        ...            {}, {"family": "llama", "granularity": "structured"})
        >>> import tempfile; sorted(write_recipes(r, tempfile.mkdtemp()))
        ['nni', 'torch-pruning']
    """
    granularity = result.space.get("granularity")
    written = {}
    for name, fmt in RECIPE_FORMATS.items():
        if granularity not in fmt.granularities:
            continue
        try:
            written[name] = write_recipe(result, name, Path(directory) / fmt.file)
        except ConfigError as exc:  # e.g. a sublayer removed whole, which Torch-Pruning cannot do
            log.warning("no %s recipe: %s", name, exc)
    return written


def _require(result: Result, granularity: str, format: str) -> None:
    found = result.space.get("granularity")
    if found != granularity:
        fitting = [name for name, fmt in RECIPE_FORMATS.items() if found in fmt.granularities]
        why = " (SparseGPT and Wanda remove single weights)" if format == "llm-compressor" else \
            " (Torch-Pruning removes whole channels and heads)" if format == "torch-pruning" else ""
        raise ConfigError(f"format {format!r} needs a result of granularity {granularity}{why}; this one is {found}: "
                          f"use {' or '.join(fitting) or 'allocsearch export'}, or search with --granularity {granularity}")


def _spec(result: Result) -> dict:
    """The family spec the result was searched with: stored in the result, else loaded again."""
    spec = result.space.get("spec")
    return spec if spec else load_spec(result.config.get("space") or result.space["family"], None)


def _unit_parts(unit: str) -> tuple[str, str]:
    """`model.layers.3.heads` -> (`model.layers.3`, `heads`)."""
    block, _, kind = unit.rpartition(".")
    if kind not in ("heads", "channels"):
        raise ConfigError(f"allocation unit {unit!r} is not a structured unit (BLOCK.heads or BLOCK.channels); "
                          "pass a result of a structured search")
    return block, kind


def _producers(spec: dict, kind: str) -> list[str]:
    """The layers whose output rows a unit removes, relative to its block."""
    if kind == "channels":
        return list(spec["channels"]["up"])
    heads = spec["heads"]
    return [heads["qkv"]] if "qkv" in heads else [heads["query"], heads["key"], heads["value"]]
