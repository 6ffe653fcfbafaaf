from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from allocsearch import ConfigError, search
from allocsearch.model._modules import is_conv1d, is_linear, linear_shape
from allocsearch.model.recipes import (
    MODIFIERS,
    RECIPE_FORMATS,
    llmcompressor_recipe,
    nni_config_list,
    pruning_ratio_dict,
    torch_pruning_ratios,
    write_recipe,
    write_recipes,
)

from ..tiny import tiny_model

CASES = [(f, g) for f in ("gpt2", "llama") for g in ("structured", "unstructured")]
NNI_KEYS = {"op_names", "sparse_ratio", "granularity", "dependency_group_id", "target_settings"}


@pytest.fixture(scope="module")
def results(sessions):
    made = {}

    def get(family, granularity):
        if (family, granularity) not in made:
            made[family, granularity] = search("params=0.7", session=sessions(family, granularity), seed=0,
                                               progress=False)
        return made[family, granularity]

    return get


def _linears(family):
    model = tiny_model(family)
    return model, {name: m for name, m in model.named_modules() if is_linear(m)}


def _unit_of(name, result):
    """The structured unit of `result` whose block holds module `name`."""
    block = name.split(".attn.")[0].split(".self_attn.")[0].split(".mlp.")[0]
    kind = "heads" if ".attn." in name or ".self_attn." in name else "channels"
    return f"{block}.{kind}"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("modifier", list(MODIFIERS))
def test_llmcompressor_recipe_names_every_pruned_linear_once_with_its_sparsity(results, family, modifier):
    result = results(family, "unstructured")
    _, linears = _linears(family)
    recipe = yaml.safe_load(llmcompressor_recipe(result, modifier=modifier))
    assert list(recipe) == ["sparsity_stage"]  # llm-compressor reads stages "*_stage" and groups "*_modifiers"
    seen = {}
    for group, modifiers in recipe["sparsity_stage"].items():
        assert group.endswith("_modifiers") and list(modifiers) == [MODIFIERS[modifier]]
        args = modifiers[MODIFIERS[modifier]]
        assert set(args) == {"sparsity", "mask_structure", "targets"} and args["mask_structure"] == "0:0"
        assert isinstance(args["sparsity"], float) and 0 < args["sparsity"] < 1
        assert args["targets"] and all(isinstance(t, str) for t in args["targets"])
        for target in args["targets"]:
            assert target in linears and target not in seen
            seen[target] = args["sparsity"]
    assert seen == {name: f for name, f in result.allocation.items() if f > 0}
    assert len(set(seen.values())) == len(recipe["sparsity_stage"])  # one modifier per distinct sparsity


def test_llmcompressor_refuses_structured_results_and_unknown_modifiers(results):
    with pytest.raises(ConfigError, match="'llm-compressor' needs a result of granularity unstructured.*"
                                          "use nni or torch-pruning"):
        llmcompressor_recipe(results("llama", "structured"))
    with pytest.raises(ConfigError, match="modifier='obs' must be one of sparsegpt, wanda"):
        llmcompressor_recipe(results("llama", "unstructured"), modifier="obs")


@pytest.mark.parametrize("family,granularity", CASES)
def test_nni_config_list_follows_the_documented_schema(results, family, granularity):
    result = results(family, granularity)
    _, linears = _linears(family)
    configs = json.loads(json.dumps(nni_config_list(result)))  # plain JSON, as written
    names = [c["op_names"][0] for c in configs]
    assert len(set(names)) == len(names)
    for config in configs:
        assert set(config) <= NNI_KEYS and len(config["op_names"]) == 1 and config["op_names"][0] in linears
        assert isinstance(config["sparse_ratio"], float) and 0 <= config["sparse_ratio"] <= 1
        if family == "gpt2":  # Conv1D: the bias follows weight dim 1
            assert config["target_settings"]["bias"]["align"]["dims"] == [1]
    if granularity == "unstructured":
        assert names == list(result.allocation)
        assert [c["sparse_ratio"] for c in configs] == list(result.allocation.values())
        assert all("granularity" not in c for c in configs)
        return
    producers = {"gpt2": ("attn.c_attn", "mlp.c_fc"),
                 "llama": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")}
    assert sorted(names) == sorted(f"{b}.{p}" for b in {u.rsplit(".", 1)[0] for u in result.allocation}
                                   for p in producers[family])
    for config in configs:
        name = config["op_names"][0]
        assert config["sparse_ratio"] == result.allocation[_unit_of(name, result)]
        assert config["granularity"] == ("in_channel" if family == "gpt2" else "out_channel")
        assert config.get("dependency_group_id") == (_unit_of(name, result) if ".mlp." in name else None)


@pytest.mark.parametrize("family,granularity", CASES)
def test_nni_prunes_the_searched_fractions(results, family, granularity):
    pruning = pytest.importorskip("nni.compression.pruning")
    setting = pytest.importorskip("nni.compression.base.setting")
    setting.PruningSetting.register("Conv1D", setting.PruningSetting.registry["Linear"])
    result = results(family, granularity)
    model = tiny_model(family)
    configs = nni_config_list(result)
    pruner = (pruning.L1NormPruner if granularity == "structured" else pruning.LevelPruner)(model, configs)
    _, masks = pruner.compress()
    for config in configs:
        name, ratio = config["op_names"][0], config["sparse_ratio"]
        mask = masks[name]["weight"]
        if granularity == "unstructured":
            assert (mask == 0).float().mean().item() == pytest.approx(ratio)
        else:  # whole output rows: columns of a Conv1D weight
            rows = mask.T if is_conv1d(model.get_submodule(name)) else mask
            removed = (rows == 0).all(dim=1)
            assert removed.float().mean().item() == pytest.approx(ratio) and ((rows == 0) == removed[:, None]).all()


def test_torch_pruning_ratios_key_the_producers_of_heads_and_channels(results):
    result = results("llama", "structured")
    model, linears = _linears("llama")
    ratios = json.loads(json.dumps(torch_pruning_ratios(result)))
    assert set(ratios) == {"pruning_ratio_dict", "head_pruning_ratio_dict"}
    for name, ratio in ratios["pruning_ratio_dict"].items():
        assert name in linears and ratio == result.allocation[_unit_of(name, result)] and 0 <= ratio < 1
    heads = {n for n in ratios["pruning_ratio_dict"] if ".self_attn." in n}
    assert set(ratios["head_pruning_ratio_dict"]) == heads and len(heads) == 3 * 2  # q, k, v of 2 blocks
    assert all(ratios["head_pruning_ratio_dict"][n] == ratios["pruning_ratio_dict"][n] for n in heads)
    assert {n.rsplit(".", 1)[1] for n in ratios["pruning_ratio_dict"]} == {"q_proj", "k_proj", "v_proj",
                                                                           "gate_proj", "up_proj"}
    mapped = pruning_ratio_dict(model, ratios["pruning_ratio_dict"])
    assert all(isinstance(m, torch.nn.Linear) for m in mapped) and len(mapped) == len(ratios["pruning_ratio_dict"])
    assert mapped[model.model.layers[1].mlp.gate_proj] == result.allocation["model.layers.1.channels"]


def test_torch_pruning_refuses_what_it_cannot_do(results, tmp_path):
    with pytest.raises(ConfigError, match="'torch-pruning' needs a result of granularity structured.*use llm-compressor or nni"):
        torch_pruning_ratios(results("llama", "unstructured"))
    result = results("llama", "structured")
    whole = dataclasses.replace(result, allocation={**result.allocation, "model.layers.1.channels": 1.0})
    with pytest.raises(ConfigError, match="removes model.layers.1.channels whole"):
        torch_pruning_ratios(whole)
    assert list(write_recipes(whole, tmp_path)) == ["nni"]  # an export still gets the formats that fit


def test_pruning_ratio_dict_names_a_missing_module_and_a_bad_ratio():
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="module 'model.layers.7.mlp.up_proj', which LlamaForCausalLM does not have"):
        pruning_ratio_dict(model, {"model.layers.7.mlp.up_proj": 0.5})
    with pytest.raises(ConfigError, match=r"ratios\['model.layers.0.mlp.up_proj'\]=1.0 must be a number in \[0, 1\)"):
        pruning_ratio_dict(model, {"model.layers.0.mlp.up_proj": 1.0})


@pytest.mark.parametrize("granularity,formats", [("structured", ["nni", "torch-pruning"]),
                                                 ("unstructured", ["llm-compressor", "nni"])])
def test_write_recipes_writes_the_fitting_formats_under_fixed_names(results, tmp_path, granularity, formats):
    result = results("llama", granularity)
    written = write_recipes(result, tmp_path / "recipes")
    assert list(written) == formats
    assert sorted(p.name for p in (tmp_path / "recipes").iterdir()) == sorted(RECIPE_FORMATS[f].file for f in formats)
    if granularity == "structured":
        assert json.loads(written["nni"].read_text()) == nni_config_list(result)
        assert json.loads(written["torch-pruning"].read_text()) == torch_pruning_ratios(result)
    else:
        assert written["llm-compressor"].read_text() == llmcompressor_recipe(result)


def test_write_recipe_lists_the_formats_for_an_unknown_one(results, tmp_path):
    with pytest.raises(ConfigError, match="format='onnx' is not a recipe format; choose one of llm-compressor, nni, "
                                          "torch-pruning"):
        write_recipe(results("llama", "structured"), "onnx", tmp_path / "x")
    with pytest.raises(ConfigError, match="use nni or torch-pruning"):
        write_recipe(results("llama", "structured"), "llm-compressor", tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()


def test_llmcompressor_parses_the_recipe(results, tmp_path):
    recipe_module = pytest.importorskip("llmcompressor.recipe", exc_type=ImportError)
    result = results("llama", "unstructured")
    path = write_recipe(result, "llm-compressor", tmp_path / "recipe.yaml")
    recipe = recipe_module.Recipe.create_instance(str(path))
    parsed = {t: m.sparsity for m in recipe.modifiers for t in m.targets}
    assert {type(m).__name__ for m in recipe.modifiers} == {"SparseGPTModifier"}
    assert parsed == {name: f for name, f in result.allocation.items() if f > 0}


@pytest.mark.slow
def test_llmcompressor_oneshot_prunes_each_linear_to_its_sparsity(results, model_dirs, tmp_path):
    llmcompressor = pytest.importorskip("llmcompressor", exc_type=ImportError)
    datasets = pytest.importorskip("datasets")
    import tokenizers
    import transformers

    result = results("llama", "unstructured")
    path = write_recipe(result, "llm-compressor", tmp_path / "recipe.yaml")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dirs["llama"])
    vocab = {chr(65 + i): i for i in range(26)} | {"[UNK]": 26}
    processor = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]")))
    tokens = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0))
    data = datasets.Dataset.from_dict({"input_ids": tokens.tolist(), "attention_mask": [[1] * 16] * 8})
    llmcompressor.oneshot(model=model, processor=processor, dataset=data, recipe=str(path),
                          num_calibration_samples=8, max_seq_length=16)
    for name, fraction in result.allocation.items():
        weight = model.get_submodule(name).weight
        zeros = (weight == 0).float().mean().item()
        assert fraction <= zeros <= fraction + 2 / linear_shape(model.get_submodule(name))[1]
