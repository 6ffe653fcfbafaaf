"""kill -9 at every stage of a search and of an export; the rerun must end exactly where an
uninterrupted run does, and leave no temporary file or folder behind.

Each kill is a real SIGKILL of a real `allocsearch` process, at an exact point (`killer.py`): the
Nth call of a function inside the stage.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import pytest

from allocsearch import load_pruned
from allocsearch._io import verify_manifest
from allocsearch.model.default_model import TrainConfig, default_model_dir
from allocsearch.model.supernet import verify

from ..tiny import tiny_args
from .conftest import ROOT, cli, command, temporaries, tree_digest

pytestmark = pytest.mark.slow

SEARCH = ["--budget", "flops=0.6", "--method", "evolution", "--generations", "3", "--offspring", "6", "--seed", "0",
          "--table", "exact"]
KILLED = -signal.SIGKILL
EVALUATE = "allocsearch.app.runners:InProcessRunner.evaluate"


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """An uninterrupted search with its export, and its cache."""
    root = tmp_path_factory.mktemp("reference")
    run = cli("search", *tiny_args({"gpt2": model}, root / "cache"), *SEARCH, "--out", str(root / "result.json"),
              "--export", str(root / "pruned"))
    assert run.returncode == 0, run.stderr
    return root


def _search(model, root, *extra, kill=()):
    return cli("search", *tiny_args({"gpt2": model}, root / "cache"), *SEARCH, "--out", str(root / "result.json"),
               "--export", str(root / "pruned"), *extra, kill=kill)


def _same_result(root, reference) -> None:
    got, want = (json.loads((r / "result.json").read_text()) for r in (root, reference))
    for field in ("levels", "fitness", "heldout", "heldout_fitness", "evaluations", "history", "seed"):
        assert got[field] == want[field], field
    weights = "model.safetensors"
    assert tree_digest(root / "pruned")[weights] == tree_digest(reference / "pruned")[weights]


def test_kill_during_the_supernet_build(model, reference, tmp_path):
    killed = _search(model, tmp_path, kill=("allocsearch.model.supernet:_unit_tensors@3",))
    assert killed.returncode == KILLED
    built = tmp_path / "cache" / "supernet"
    assert temporaries(built) and not any(verify(p) for p in built.iterdir() if p.is_dir() and p.name[0] != ".")
    assert not (tmp_path / "result.json").exists()
    rerun = _search(model, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    _same_result(tmp_path, reference)
    assert temporaries(tmp_path) == []


def test_kill_during_the_error_table(model, reference, tmp_path):
    killed = _search(model, tmp_path, kill=(f"{EVALUATE}@2",))  # the table's second chunk of cells
    assert killed.returncode == KILLED
    assert list((tmp_path / "cache" / "tables").glob("*.npz")) == []
    assert any(verify(p) for p in (tmp_path / "cache" / "supernet").iterdir())  # the build before it is kept
    rerun = _search(model, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    _same_result(tmp_path, reference)
    assert temporaries(tmp_path) == []


def test_kill_during_an_evolution_generation_resumes_exactly(model, reference, tmp_path):
    shutil.copytree(reference / "cache", tmp_path / "cache")  # every cache warm: each call is the search's own
    checkpoint = tmp_path / "result.json.checkpoint.npz"
    killed = _search(model, tmp_path, kill=(f"{EVALUATE}@6",))  # generation 2 (3 fidelities per generation)
    assert killed.returncode == KILLED and checkpoint.is_file()
    rerun = _search(model, tmp_path, "--resume")
    assert rerun.returncode == 0, rerun.stderr
    _same_result(tmp_path, reference)
    assert not checkpoint.exists() and temporaries(tmp_path) == []


def test_kill_during_the_default_model_training(tmp_path):
    """Killed after training, before its files are in place: the next run trains it again and removes
    the killed run's temporary folder (75 MB on the real default model)."""
    recipe = TrainConfig(n_layer=1, n_embd=16, n_head=2, n_inner=32, seq_len=16, batch=2, steps=2)
    code = ("from allocsearch.model.default_model import TrainConfig, default_model_dir\n"
            f"default_model_dir({str(tmp_path)!r}, {recipe!r}, progress=False)")
    killed = subprocess.run(command("--exec", code, kill=("allocsearch.model.default_model:train_default_model@1:after",),
                                    quiet=False), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == KILLED and temporaries(tmp_path)
    path = default_model_dir(tmp_path, recipe, progress=False)
    assert verify_manifest(path, 1) is not None and temporaries(tmp_path) == []


def _export(result, out, *, kill=()):
    return cli("export", "--result", str(result), "--out", str(out), kill=kill)


@pytest.fixture(scope="module")
def exports(model, reference, tmp_path_factory):
    """Uninterrupted `export` runs of two results of the same model: the search above and dp at another
    budget (whose export replaces the first one's in the tests)."""
    root = tmp_path_factory.mktemp("exports")
    shutil.copytree(reference / "cache", root / "cache")
    run = cli("search", *tiny_args({"gpt2": model}, root / "cache"), "--budget", "flops=0.8", "--seed", "0",
              "--table", "exact", "--out", str(root / "second.json"))
    assert run.returncode == 0, run.stderr
    results = {"first": reference / "result.json", "second": root / "second.json"}
    for name, result in results.items():
        run = _export(result, root / name)
        assert run.returncode == 0, run.stderr
    assert tree_digest(root / "first") != tree_digest(root / "second")
    return {name: (result, root / name) for name, result in results.items()}


def test_kill_during_a_fresh_export(exports, tmp_path):
    result, want = exports["first"]
    out = tmp_path / "pruned"
    killed = _export(result, out, kill=("allocsearch.model.export:save_tokenizer@1",))
    assert killed.returncode == KILLED
    assert not out.exists() and temporaries(tmp_path)  # the weights were written, in a temporary folder
    rerun = _export(result, out)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_digest(out) == tree_digest(want)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("kill", [
    ("allocsearch.model.export:save_tokenizer@1",),  # while the new export is written beside the old
    ("allocsearch._io:_exchange@1:after",),  # the names swapped, the old one not yet removed
    ("allocsearch._io:_exchange@false", "allocsearch._io:_set_aside@1:after"),  # no atomic swap: between renames
], ids=["writing", "after-swap", "between-renames"])
def test_kill_during_an_export_over_an_existing_one(exports, tmp_path, kill):
    (_, first), (result, second) = exports["first"], exports["second"]
    out = tmp_path / "pruned"
    shutil.copytree(first, out)
    killed = _export(result, out, kill=kill)
    assert killed.returncode == KILLED
    if kill[-1].startswith("allocsearch._io:_exchange"):
        assert tree_digest(out) == tree_digest(second)  # swapped: the new one is whole, the old one aside
    elif kill[-1].startswith("allocsearch._io:_set_aside"):
        assert not out.exists()  # the old one lies aside, the new one not yet in place
    else:
        assert tree_digest(out) == tree_digest(first)  # the old export is untouched and loads
        load_pruned(out)
    assert temporaries(tmp_path)
    rerun = _export(result, out)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_digest(out) == tree_digest(second)
    assert temporaries(tmp_path) == []
