"""Several processes start the same search on one empty cache at once: one builds each cache entry
while the others wait for it and read it; all end with the same result and the cache verifies."""

from __future__ import annotations

import json
import subprocess

import pytest

from allocsearch import _io
from allocsearch.model.supernet import verify

from ..tiny import tiny_args
from .conftest import ROOT, command, temporaries

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("processes", [2, 4])
def test_the_same_search_started_at_once_on_an_empty_cache(model, tmp_path, processes):
    cache = tmp_path / "cache"
    runs = [subprocess.Popen(command("search", *tiny_args({"gpt2": model}, cache), "--budget", "flops=0.6",
                                     "--seed", "0", "--table", "exact", "--build-sequences", "128",
                                     "--out", str(tmp_path / f"result-{i}.json"),
                                     "--export", str(tmp_path / f"pruned-{i}"), quiet=False),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(processes)]
    logs = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0] * processes, "\n".join(logs)
    assert "Traceback" not in "".join(logs)
    results = [json.loads((tmp_path / f"result-{i}.json").read_text()) for i in range(processes)]
    for result in results[1:]:
        for field in ("levels", "fitness", "heldout", "heldout_fitness", "cost"):
            assert result[field] == results[0][field], field
    assert "waiting for it" in "".join(logs)  # they did overlap: one waited on another's build
    # each entry was built once, by one process; the others waited for it or found it made
    for what in ("building the supernet cache", "dense pass over", "exact error table"):
        assert sum(log.count(what) for log in logs) == (2 if what == "dense pass over" else 1), what
    supernets = [p for p in (cache / "supernet").iterdir() if not p.name.startswith(".")]
    dense = [p for p in (cache / "dense").iterdir() if not p.name.startswith(".")]
    assert len(supernets) == 1 and verify(supernets[0]) is not None
    assert len(dense) == 2 and all(_io.verify_manifest(p, json.loads((p / "manifest.json").read_text())["format"])
                                   for p in dense)
    assert [_io.read_npz(p)[1]["table"].shape for p in (cache / "tables").glob("*.npz")] != []
    assert temporaries(tmp_path) == []
