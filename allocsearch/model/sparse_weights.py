"""Unstructured exports in compressed form: compressed-tensors' `sparse-bitmask` layout, and a loader.

Each compressed weight `NAME.weight` (stored as the module holds it: `(out, in)` for Linear,
`(in, out)` for GPT-2's Conv1D) becomes four tensors, as compressed-tensors' `BitmaskCompressor`
writes them:

- `NAME.shape`: int64 `(2,)`, the dense shape `(rows, cols)`;
- `NAME.compressed`: the nonzero values in row-major order, `(nnz,)`, the weight's dtype;
- `NAME.bitmask`: uint8 `(rows, ceil(cols / 8))`, bit `j % 8` of byte `j // 8` (little bit order,
  numpy's `packbits(..., bitorder="little")`) set where column `j` holds a value;
- `NAME.row_offsets`: int64 `(rows,)`, where each row's values start in `compressed`.

Every other tensor stays dense. They go to `model.sparse-bitmask.safetensors`, beside the stock
`config.json` and `sparsity_config.json`: compressed-tensors' entry `{"quant_method":
"compressed-tensors", "version": ..., "sparsity_config": {"format": "sparse-bitmask", ...},
"transform_config": {}}`. The names keep plain `from_pretrained` away on purpose: given this
layout as `model.safetensors` with the entry in config.json, compressed-tensors releases from 0.15
on (which dropped the sparse decompressor) let transformers load the model with its linear weights
missing, randomly initialised. For releases up to 0.14, rename the file to `model.safetensors` and
put the entry under config.json's `quantization_config`. `load_compressed` needs nothing but
torch and transformers.

A zero is any value whose bits other than the sign are 0, as compressed-tensors' `tensor != 0`:
the round trip is bit-identical except that `-0.0` comes back as `+0.0` (masking by
multiplication leaves `-0.0` where a negative weight was removed; the two are equal).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import transformers  # a lazy module: its model classes load on first use
from safetensors.torch import load_file, save
from torch import nn

from .. import _io
from ..errors import ConfigError, InputFileError
from .hf_export import checkpoint_tensors

FORMAT = "sparse-bitmask"
CT_VERSION = "0.14.0.1"  # the compressed-tensors release whose decompressor the tests check against
WEIGHTS_FILE = "model.sparse-bitmask.safetensors"
ENTRY_FILE = "sparsity_config.json"  # compressed-tensors' quantization_config entry
PARTS = ("shape", "compressed", "bitmask", "row_offsets")
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-size integer views


def compress_state_dict(state_dict: Mapping[str, torch.Tensor], modules: Iterable[str]) -> dict[str, torch.Tensor]:
    """The state dict with the weights of `modules` in sparse-bitmask form; everything else as is.

    Args:
        state_dict: tensor name -> tensor, e.g. `model.state_dict()`.
        modules: paths of linear modules (`transformer.h.0.mlp.c_fc`) whose `.weight` is compressed.

    Returns:
        A new dict in the state dict's order, each compressed `NAME.weight` replaced by
        `NAME.shape`, `NAME.compressed`, `NAME.bitmask` and `NAME.row_offsets` (on the CPU).

    For example::

        w = torch.tensor([[0.0, 1.5], [2.0, 0.0]])
        packed = compress_state_dict({"fc.weight": w}, ["fc"])
        packed["fc.compressed"]   # tensor([1.5000, 2.0000])
    """
    names = _weight_names(state_dict, modules)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if name in names:
            out.update(_compress(name.removesuffix(".weight"), tensor))
        else:
            out[name] = tensor
    return out


def decompress_state_dict(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense state dict of a sparse-bitmask one: each `NAME.*` group back to `NAME.weight`.

    For example::

        packed = compress_state_dict({"fc.weight": torch.eye(3)}, ["fc"])
        torch.equal(decompress_state_dict(packed)["fc.weight"], torch.eye(3))   # True
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    dense: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        prefix, _, part = name.rpartition(".")
        if part in PARTS and prefix:
            groups.setdefault(prefix, {})[part] = tensor
            dense.setdefault(f"{prefix}.weight", None)  # keeps the file's order
        else:
            dense[name] = tensor
    for prefix, parts in groups.items():
        dense[f"{prefix}.weight"] = _decompress(prefix, parts)
    return dense


def per_layer_sparsity(state_dict: Mapping[str, torch.Tensor], modules: Iterable[str]) -> dict[str, float]:
    """The measured fraction of zeros in each module's weight (dense or sparse-bitmask state dict).

    For example::

        per_layer_sparsity({"fc.weight": torch.tensor([[0.0, 1.0], [0.0, 0.0]])}, ["fc"])   # {'fc': 0.75}
    """
    sparsity = {}
    for module in dict.fromkeys(modules):
        if f"{module}.compressed" in state_dict and f"{module}.shape" in state_dict:
            total = math.prod(int(d) for d in state_dict[f"{module}.shape"].tolist())
            nonzero = state_dict[f"{module}.compressed"].numel()
        else:
            weight = state_dict[next(iter(_weight_names(state_dict, [module])))]
            total, nonzero = weight.numel(), int(_nonzero(weight).sum())
        sparsity[module] = 1.0 - nonzero / total if total else 0.0
    return sparsity


def compression_config(state_dict: Mapping[str, torch.Tensor], modules: Iterable[str]) -> dict:
    """The `quantization_config` entry of config.json, as compressed-tensors' `ModelCompressor.update_config`
    writes it: `global_sparsity` is the fraction of zeros over every floating tensor of the dense state dict.

    For example::

        compression_config({"fc.weight": torch.eye(2)}, ["fc"])["sparsity_config"]["format"]   # 'sparse-bitmask'
    """
    modules = list(dict.fromkeys(modules))
    floats = [t for t in state_dict.values() if t.is_floating_point()]
    total = sum(t.numel() for t in floats)
    zeros = total - sum(int(_nonzero(t).sum()) for t in floats)
    sparsity = {"format": FORMAT, "targets": modules, "ignore": [],
                "global_sparsity": zeros / total if total else 0.0, "sparsity_structure": "unstructured"}
    return {"version": CT_VERSION, "quant_method": "compressed-tensors", "sparsity_config": sparsity,
            "transform_config": {}}


def write_compressed(model: nn.Module, modules: Iterable[str], directory: str | Path,
                     tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write the stock `config.json`, the compression entry and the weights in sparse-bitmask form.

    Args:
        model: the pruned model; gives the config and, unless `tensors` is given, the weights
            (its checkpoint tensors: tied copies such as the LM head left out).
        modules: the linear modules whose weights are compressed (an unstructured space's units).
        directory: where to write; made if missing. Existing files of the same names are replaced.
        tensors: the dense tensors to write instead of the model's.

    Returns:
        The directory.

    For example::

        write_compressed(model, [u.name for u in space.units], "pruned/")
        model = load_compressed("pruned/")
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = checkpoint_tensors(model) if tensors is None else dict(tensors)
    modules = list(dict.fromkeys(modules))
    packed = compress_state_dict(tensors, modules)
    model.config.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = [type(model).__name__]
    _io.write_json(directory / "config.json", config)
    _io.write_json(directory / ENTRY_FILE, compression_config(tensors, modules))
    with _io.atomic_file(directory / WEIGHTS_FILE) as f:  # compressed: a fraction of the model's size
        f.write(save({k: t.detach().cpu().contiguous() for k, t in packed.items()}, metadata={"format": "pt"}))
    return directory


def is_compressed(directory: str | Path) -> bool:
    """Whether `directory` holds weights in compressed-tensors' sparse-bitmask format."""
    try:
        entry = json.loads((Path(directory) / ENTRY_FILE).read_text())
        return entry["sparsity_config"]["format"] == FORMAT and (Path(directory) / WEIGHTS_FILE).is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_compressed(directory: str | Path) -> dict[str, torch.Tensor]:
    """The dense tensors of a directory written by `write_compressed` (or in the same layout).

    For example::

        tensors = read_compressed("pruned/")
        tensors["transformer.h.0.mlp.c_fc.weight"].shape   # the dense shape, zeros included
    """
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise InputFileError(f"{str(directory)!r} holds no {WEIGHTS_FILE}; pass a directory written by write_compressed")
    tensors = load_file(path)
    if not any(name.endswith(".compressed") for name in tensors):
        raise InputFileError(f"{str(path)!r} holds no compressed weights (no '*.compressed' tensors): it is a dense "
                             "checkpoint; load it with from_pretrained or load_pruned instead")
    return decompress_state_dict(tensors)


def load_compressed(directory: str | Path, *, attn_implementation: str = "sdpa") -> nn.Module:
    """The model of a directory written by `write_compressed`, dense again, in eval mode without gradients.

    The class is the one named in config.json's `architectures`; the weights keep their stored dtype.

    For example::

        model = load_compressed("pruned/")
        model(input_ids).logits
    """
    directory = Path(directory)
    tensors = read_compressed(directory)
    config_dict = json.loads((directory / "config.json").read_text())
    architecture = (config_dict.get("architectures") or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None:
        raise InputFileError(f"{str(directory)!r}: config.json names architectures={architecture!r}, not a "
                             "transformers model class; write the directory again with write_compressed")
    config = transformers.AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    model, info = model_class.from_pretrained(None, config=config, state_dict=tensors, dtype=dtype,
                                              attn_implementation=attn_implementation, output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
        raise InputFileError(f"{str(directory)!r}: {WEIGHTS_FILE} does not fit {architecture} (missing "
                             f"{sorted(info['missing_keys'])[:3]}, unexpected {sorted(info['unexpected_keys'])[:3]}, "
                             f"wrong shape {sorted(info['mismatched_keys'])[:3]}); write it again")
    return model.eval().requires_grad_(False)


def _weight_names(state_dict: Mapping[str, torch.Tensor], modules: Iterable[str]) -> set[str]:
    """The `.weight` names of `modules`, checked to be 2-D tensors of the state dict."""
    names = set()
    for module in modules:
        name = f"{module}.weight"
        if name not in state_dict:
            raise ConfigError(f"modules: {module!r} has no weight {name!r} in the state dict; pass linear module "
                              "paths such as 'model.layers.0.mlp.up_proj' (tied copies like the LM head are left out)")
        tensor = state_dict[name]
        if tensor.dim() != 2 or tensor.is_complex():
            raise ConfigError(f"modules: {name!r} is a {tensor.dim()}-D {tensor.dtype} tensor of shape "
                              f"{tuple(tensor.shape)}; only 2-D real weights of linear layers are compressed, "
                              "leave it out of modules")
        names.add(name)
    return names


def _nonzero(tensor: torch.Tensor) -> torch.Tensor:
    """Where `tensor` is not zero, by its bits: a float is zero when all bits but the sign are 0."""
    if tensor.dtype == torch.bool:
        return tensor
    bits = tensor.view(_BITS[tensor.element_size()])
    if tensor.is_floating_point():
        bits = bits & ((1 << (8 * tensor.element_size() - 1)) - 1)
    return bits != 0


def _compress(prefix: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    weight = weight.detach().cpu().contiguous()  # (rows, cols)
    mask = _nonzero(weight)  # (rows, cols)
    view = _BITS[weight.element_size()] if weight.dtype != torch.bool else torch.bool
    values = weight.view(view)[mask].view(weight.dtype)  # (nnz,), bits copied as they are
    counts = mask.sum(dim=-1)  # (rows,)
    bitmask = torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))  # (rows, ceil(cols/8))
    return {f"{prefix}.shape": torch.tensor(list(weight.shape)), f"{prefix}.compressed": values,
            f"{prefix}.bitmask": bitmask, f"{prefix}.row_offsets": torch.cumsum(counts, 0) - counts}


def _decompress(prefix: str, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    missing = [p for p in ("shape", "compressed", "bitmask") if p not in parts]
    if missing:
        raise InputFileError(f"the compressed weight {prefix!r} lacks {[f'{prefix}.{p}' for p in missing]}; "
                             "the file is damaged or not in compressed-tensors' sparse-bitmask layout; write it again")
    shape, values, bitmask = tuple(int(d) for d in parts["shape"].tolist()), parts["compressed"], parts["bitmask"]
    if len(shape) != 2 or bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != (shape[0], -(-shape[1] // 8)):
        raise InputFileError(f"the compressed weight {prefix!r} has shape {list(shape)} and a {bitmask.dtype} bitmask "
                             f"of shape {tuple(bitmask.shape)}, which do not match; the file is damaged, write it again")
    mask = torch.from_numpy(np.unpackbits(bitmask.cpu().numpy(), axis=-1, count=shape[1], bitorder="little")
                            .astype(bool))  # (rows, cols)
    if int(mask.sum()) != values.numel():
        raise InputFileError(f"the compressed weight {prefix!r} flags {int(mask.sum())} values but holds "
                             f"{values.numel()}; the file is damaged, write it again")
    view = _BITS[values.element_size()] if values.dtype != torch.bool else torch.bool
    dense = torch.zeros(shape, dtype=view)
    dense[mask] = values.cpu().view(view)
    return dense.view(values.dtype)
