from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from allocsearch import ConfigError, InputFileError, _io
from allocsearch.model._modules import get_module
from allocsearch.model.build import space_from_model
from allocsearch.model.hf_export import checkpoint_tensors
from allocsearch.model.sparse_weights import (
    ENTRY_FILE,
    WEIGHTS_FILE,
    compress_state_dict,
    decompress_state_dict,
    is_compressed,
    load_compressed,
    per_layer_sparsity,
    read_compressed,
    write_compressed,
)

from ..tiny import tiny_model


def masked_model(family: str, sparsity: float, dtype: torch.dtype = torch.float32, *, multiply: bool = False):
    """A tiny model whose linear weights keep a random `1 - sparsity` of their entries; the modules and masks."""
    model = tiny_model(family).to(dtype)
    modules = [u.name for u in space_from_model(model, granularity="unstructured").units]
    generator = torch.Generator().manual_seed(1)
    masks = {}
    with torch.no_grad():
        for i, path in enumerate(modules):
            weight = get_module(model, path).weight
            keep = torch.rand(weight.shape, generator=generator) >= sparsity * (0.5 + i / len(modules))
            # as the composer does (`w * keep`, leaving -0.0) or as zeros proper
            weight.copy_(weight * keep if multiply else torch.where(keep, weight, torch.zeros((), dtype=dtype)))
            masks[path] = keep
    return model, modules, masks


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.uint8)


@pytest.mark.parametrize("family,dtype", [("gpt2", torch.float32), ("llama", torch.bfloat16), ("opt", torch.float16)])
def test_round_trip_is_bit_identical(family, dtype):
    model, modules, _ = masked_model(family, 0.5, dtype)
    state = checkpoint_tensors(model)
    packed = compress_state_dict(state, modules)
    assert not any(f"{m}.weight" in packed for m in modules)
    assert packed[f"{modules[0]}.compressed"].dtype == dtype
    back = decompress_state_dict(packed)
    assert list(back) == list(state)  # same names, same order
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(bits(back[name]), bits(tensor)), name


def test_round_trip_of_multiplied_masks_gives_equal_values_and_positive_zeros():
    model, modules, _ = masked_model("gpt2", 0.5, multiply=True)
    weight = checkpoint_tensors(model)[f"{modules[0]}.weight"]
    assert (torch.signbit(weight) & (weight == 0)).any()  # the composer's masking leaves -0.0
    back = decompress_state_dict(compress_state_dict({"w.weight": weight}, ["w"]))["w.weight"]
    assert torch.equal(back, weight)
    assert torch.equal(bits(back), bits(torch.where(weight == 0, torch.zeros(()), weight)))


def test_measured_sparsity_equals_the_masks_in_both_forms():
    model, modules, masks = masked_model("llama", 0.7, torch.bfloat16)
    state = checkpoint_tensors(model)
    expected = {m: 1 - masks[m].float().mean().item() for m in modules}
    for tensors in (state, compress_state_dict(state, modules)):
        measured = per_layer_sparsity(tensors, modules)
        assert list(measured) == modules
        assert measured == pytest.approx(expected, abs=1e-12)
    assert min(expected.values()) < 0.5 < max(expected.values())  # the layers do differ


def test_written_directory_is_smaller_and_loads_back(tmp_path):
    model, modules, masks = masked_model("gpt2", 0.5)
    dense = tmp_path / "dense.safetensors"
    save_file(checkpoint_tensors(model), dense)
    out = write_compressed(model, modules, tmp_path / "sparse")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", WEIGHTS_FILE, ENTRY_FILE]
    assert (out / WEIGHTS_FILE).stat().st_size < 0.8 * dense.stat().st_size
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # plain from_pretrained must not half-load it
    entry = json.loads((out / ENTRY_FILE).read_text())
    assert entry["quant_method"] == "compressed-tensors" and entry["sparsity_config"]["format"] == "sparse-bitmask"
    assert entry["sparsity_config"]["targets"] == modules and config["architectures"] == ["GPT2LMHeadModel"]
    assert is_compressed(out) and not is_compressed(tmp_path)
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    loaded = load_compressed(out)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=tokens).logits, model(input_ids=tokens).logits)
    assert torch.equal(get_module(loaded, modules[0]).weight != 0, masks[modules[0]])


def test_load_keeps_bfloat16(tmp_path):
    model, modules, _ = masked_model("llama", 0.5, torch.bfloat16)
    loaded = load_compressed(write_compressed(model, modules, tmp_path))
    for name, tensor in checkpoint_tensors(model).items():
        got = loaded.state_dict()[name]
        assert got.dtype == torch.bfloat16 and torch.equal(bits(got), bits(tensor)), name


def test_bad_modules_are_named():
    state = checkpoint_tensors(tiny_model("gpt2"))
    with pytest.raises(ConfigError, match=r"modules: 'transformer.ln_f.weight' is a 1-D .*leave it out of modules"):
        compress_state_dict(state, ["transformer.ln_f"])
    with pytest.raises(ConfigError, match=r"modules: 'transformer.h.9.mlp' has no weight .*pass linear module paths"):
        compress_state_dict(state, ["transformer.h.9.mlp"])


def test_directories_without_compressed_weights_are_refused(tmp_path):
    with pytest.raises(InputFileError, match=f"holds no {WEIGHTS_FILE}"):
        read_compressed(tmp_path)
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / WEIGHTS_FILE)
    with pytest.raises(InputFileError, match=r"holds no compressed weights .*dense checkpoint"):
        load_compressed(tmp_path)


def test_damaged_files_are_refused(tmp_path):
    model, modules, _ = masked_model("gpt2", 0.5)
    out = write_compressed(model, modules, tmp_path)
    tensors = load_file(out / WEIGHTS_FILE)
    short = {**tensors, f"{modules[0]}.compressed": tensors[f"{modules[0]}.compressed"][:-1]}
    with pytest.raises(InputFileError, match=rf"'{modules[0]}' flags \d+ values but holds \d+"):
        decompress_state_dict(short)
    del tensors[f"{modules[1]}.bitmask"]
    with pytest.raises(InputFileError, match=rf"'{modules[1]}' lacks \['{modules[1]}.bitmask'\]"):
        decompress_state_dict(tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compressed_tensors_reads_what_we_write(dtype, tmp_path):
    sparse_bitmask = pytest.importorskip("compressed_tensors.compressors.sparse_compressors.sparse_bitmask",
                                         reason="compressed-tensors <= 0.14 ships the sparse-bitmask decompressor")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import BitmaskConfig

    model, modules, _ = masked_model("llama", 0.5, dtype)
    state = checkpoint_tensors(model)
    ours = compress_state_dict(state, modules)
    theirs = sparse_bitmask.BitmaskCompressor(config=BitmaskConfig()).compress(dict(state), set(modules))
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
    out = write_compressed(model, modules, tmp_path)
    config = json.loads((out / "config.json").read_text())  # the set-up the module docstring gives for <= 0.14
    _io.write_json(out / "config.json", {**config, "quantization_config": json.loads((out / ENTRY_FILE).read_text())})
    (out / WEIGHTS_FILE).rename(out / "model.safetensors")
    compressor = ModelCompressor.from_pretrained(str(out))
    assert compressor.sparsity_config.format == "sparse-bitmask"
    fresh = tiny_model("llama").to(dtype)
    compressor.decompress(str(out), fresh)
    for name, tensor in state.items():
        assert torch.equal(bits(fresh.state_dict()[name]), bits(tensor)), name
