from __future__ import annotations

import numpy as np
import pytest
import yaml

from allocsearch import LevelGrid, SpaceError, space_from_model
from allocsearch.errors import ConfigError

from ..tiny import tiny_model


@pytest.mark.parametrize("family", ["gpt2", "opt", "llama", "qwen2", "bert"])
def test_structured_units_per_block(family):
    space = space_from_model(tiny_model(family), granularity="structured")
    assert [u.kind for u in space.units] == ["heads", "channels"] * 2
    heads, channels = space.units[0], space.units[1]
    assert heads.counts[0] == 0 and heads.counts[-1] == heads.groups  # level 1.0 removes the sublayer
    assert channels.groups == 64 and channels.counts == tuple(range(0, 65, 4))  # 1/16 of 64 channels
    assert np.allclose(channels.fractions, np.arange(17) / 16)


def test_grouped_query_attention_prunes_whole_kv_groups():
    space = space_from_model(tiny_model("llama"), granularity="structured")
    heads = space.units[0]
    assert heads.groups == 2 and heads.heads_per_group == 2  # 4 query heads over 2 key/value heads
    assert heads.counts == (0, 1, 2)  # snapped to whole groups
    q, k, v = heads.producers
    assert (q.width, k.width, v.width) == (2 * 8, 8, 8)  # head_dim 8
    assert heads.consumer.width == 16


def test_gpt2_fused_qkv_slices():
    space = space_from_model(tiny_model("gpt2"), granularity="structured")
    heads = space.units[0]
    assert [(s.module, s.offset, s.width) for s in heads.producers] == [
        ("transformer.h.0.attn.c_attn", 0, 8), ("transformer.h.0.attn.c_attn", 32, 8),
        ("transformer.h.0.attn.c_attn", 64, 8)]
    assert heads.producers[1].indices(np.array([1, 3])).tolist() == list(range(40, 48)) + list(range(56, 64))


def test_unstructured_one_unit_per_linear_layer():
    space = space_from_model(tiny_model("llama"), granularity="unstructured")
    names = [u.name for u in space.units if u.block == 0]
    assert names == [f"model.layers.0.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                      "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                      "mlp.down_proj")]
    unit = space.units[0]
    assert unit.n_levels == 16 and unit.fractions[-1] == pytest.approx(0.9375)  # 0 .. 0.95 in steps of 1/16


def test_grid_options():
    grid = LevelGrid(step=0.25, max_level=0.5, channel_multiple=8)
    space = space_from_model(tiny_model("gpt2"), granularity="structured", grid=grid)
    assert space.units[1].counts == (0, 16, 32)
    with pytest.raises(ConfigError, match="grid_step=0"):
        LevelGrid(step=0)


def test_unknown_family_lists_known_ones_and_how_to_add_one():
    model = tiny_model("gpt2")
    model.config.model_type = "mamba"
    with pytest.raises(SpaceError, match=r"model_type='mamba' has no search space; known families: bert.*gpt2.*allocsearch/model/searchspaces/.*space=FILE.yaml"):
        space_from_model(model)


def test_user_space_file(tmp_path):
    model = tiny_model("gpt2")
    spec = yaml.safe_load(_family_file("gpt2").read_text())
    spec["family"] = "my-gpt2"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(spec))
    space = space_from_model(model, space=str(path))
    assert space.family == "my-gpt2" and space.n_units == 4
    spec["heads"]["out"] = "attn.nothing"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpaceError, match="module 'transformer.h.0.attn.nothing' does not exist"):
        space_from_model(model, space=str(path))
    with pytest.raises(SpaceError, match="no such file"):
        space_from_model(model, space=str(tmp_path / "missing.yaml"))


def test_the_final_modules_are_required_and_checked(tmp_path):
    model = tiny_model("gpt2")
    spec = yaml.safe_load(_family_file("gpt2").read_text())
    path = tmp_path / "mine.yaml"
    spec["final"] = ["transformer.ln_end"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpaceError, match="final module 'transformer.ln_end' does not exist in this model"):
        space_from_model(model, space=str(path))
    del spec["final"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpaceError, match=r"missing key 'final'.*modules applied after the last block"):
        space_from_model(model, space=str(path))


def _family_file(name):
    from importlib import resources

    return resources.files("allocsearch.model").joinpath("searchspaces") / f"{name}.yaml"


def test_levels_round_trip_and_check():
    space = space_from_model(tiny_model("gpt2"))
    levels = np.array([1, 5, 4, 16])
    assert (space.levels_from_dict(space.levels_dict(levels)) == levels).all()
    assert space.allocation_dict(levels)["transformer.h.0.channels"] == pytest.approx(5 / 16)
    with pytest.raises(ConfigError, match="not one level index per unit"):
        space.check(np.array([0, 0, 0, 17]))
