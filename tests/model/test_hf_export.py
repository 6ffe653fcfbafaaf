"""Exports load with plain transformers, in a process where allocsearch cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from allocsearch import load_pruned, search
from allocsearch.model.hf_export import MODELING_FILE

from ..tiny import EXPORT_FAMILIES

REPO = Path(__file__).resolve().parents[2]

# Loads every directory named on the command line with transformers alone, saves it again with
# save_pretrained, loads that copy, and writes both outputs beside the tokens.
STANDALONE = textwrap.dedent("""
    import os, sys
    sys.path = [p for p in sys.path if p not in ("", ".") and not os.path.isdir(os.path.join(p, "allocsearch"))]
    sys.modules["allocsearch"] = None  # an import of allocsearch now fails, even from site-packages
    import torch, transformers
    from safetensors.torch import load_file, save_file

    auto = transformers.AutoModelForCausalLM if sys.argv[2] == "causal_lm" else transformers.AutoModel
    tokens = load_file(sys.argv[3])["tokens"]
    outputs = {}
    for i, directory in enumerate(sys.argv[4:]):
        for copy in ("export", "saved"):
            model = auto.from_pretrained(directory, trust_remote_code=True).eval()
            with torch.no_grad():
                out = model(input_ids=tokens)
            outputs[f"{i}.{copy}"] = (out.logits if sys.argv[2] == "causal_lm" else out.last_hidden_state).contiguous()
            outputs[f"{i}.{copy}.type"] = torch.tensor([int(type(model).__name__ == "PrunedModel")])
            directory = directory + ".saved"
            model.save_pretrained(directory)
    save_file(outputs, sys.argv[3] + ".out")
""")


def load_standalone(task: str, directories: list[Path], tokens: torch.Tensor, tmp_path: Path) -> dict:
    """Outputs of each directory (and of its save_pretrained copy) loaded by transformers without allocsearch."""
    save_file({"tokens": tokens.contiguous()}, tmp_path / "tokens.safetensors")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", STANDALONE, str(REPO), task, str(tmp_path / "tokens.safetensors"),
                           *map(str, directories)], env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(tmp_path / "tokens.safetensors.out")


def outputs(model, tokens):
    with torch.no_grad():
        out = model(input_ids=tokens)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_the_standalone_process_cannot_import_allocsearch(tmp_path):
    probe = STANDALONE.split("import torch")[0] + "import allocsearch\n"
    assert "sys.modules" in probe
    done = subprocess.run([sys.executable, "-c", probe, str(REPO)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, check=False)
    assert done.returncode != 0 and "allocsearch" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("family", EXPORT_FAMILIES)
def test_structured_exports_load_without_allocsearch(family, sessions, tmp_path):
    session = sessions(family)
    space = session.space
    # a searched allocation, and one with a whole attention removed and the MLPs cut unevenly
    search("flops=0.6", method="dp", session=session, seed=0, progress=False, export_dir=tmp_path / "searched")
    mixed = np.array([(u.n_levels - 1 if u.block == 0 else 0) if u.kind == "heads"
                      else (u.n_levels // 2 if u.block == 0 else u.n_levels - 1) for u in space.units])
    session.export(mixed, tmp_path / "mixed")
    directories = [tmp_path / "searched", tmp_path / "mixed"]
    tokens = session.heldout_tokens[:2]
    got = load_standalone(space.task, directories, tokens, tmp_path)
    for i, directory in enumerate(directories):
        config = json.loads((directory / "config.json").read_text())
        assert config["model_type"] == f"pruned_{session.model.config.model_type}"
        assert (directory / MODELING_FILE).is_file() and (Path(f"{directory}.saved") / MODELING_FILE).is_file()
        expected = outputs(load_pruned(directory), tokens)
        assert got[f"{i}.export.type"].item() == 1
        torch.testing.assert_close(got[f"{i}.export"], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(got[f"{i}.saved"], expected, atol=1e-5, rtol=0)
    layers = json.loads((tmp_path / "mixed" / "config.json").read_text())["pruned_layout"]["layers"]
    assert layers[0]["heads"] == 0 and layers[1]["heads"] == space.units[2].groups * space.units[2].heads_per_group
    assert layers[1]["channels"] == 0 and 0 < layers[0]["channels"] < space.units[1].groups


# (family, removed block): GPT-2 and OPT fold a removed block's biases into the previous block's MLP
# output; with no previous block (GPT-2, block 0) or post-LN blocks (BERT) the export needs remote code.
DEPTH_CASES = [("gpt2", 1, "stock"), ("gpt2", 0, "remote_code"), ("opt", 1, "stock"), ("llama", 0, "stock"),
               ("qwen2", 1, "stock"), ("bert", 1, "remote_code")]


@pytest.mark.slow
@pytest.mark.parametrize("family,removed,layout", DEPTH_CASES)
def test_depth_only_allocations_export_a_stock_checkpoint(family, removed, layout, sessions, tmp_path):
    session = sessions(family)
    space = session.space
    levels = np.array([u.n_levels - 1 if u.block == removed else 0 for u in space.units])
    directory = session.export(levels, tmp_path / "pruned")
    tokens = session.heldout_tokens[:2]
    composed = outputs(session.evaluator.compose(levels), tokens).clone()
    assert json.loads((directory / "allocation.json").read_text())["layout"] == layout
    config = json.loads((directory / "config.json").read_text())
    got = load_standalone(space.task, [directory], tokens, tmp_path)
    torch.testing.assert_close(got["0.export"], composed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs(load_pruned(directory), tokens), composed, atol=1e-5, rtol=1e-5)
    if layout == "stock":
        assert "auto_map" not in config and config["model_type"] == session.model.config.model_type
        assert not (directory / MODELING_FILE).exists() and got["0.export.type"].item() == 0
        assert session.model.config.__class__.from_dict(config).num_hidden_layers == 1
        blocks = space.spec["blocks"] + "."
        assert {name[len(blocks):].split(".")[0] for name in load_file(directory / "model.safetensors")
                if name.startswith(blocks)} == {"0"}
    else:
        assert config["auto_map"] and got["0.export.type"].item() == 1


def test_modeling_file_needs_only_torch_and_transformers():
    source = (REPO / "allocsearch" / "model" / MODELING_FILE).read_text()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports == {"torch", "transformers"}
    assert len(source.splitlines()) < 120
