"""Files and folders allocsearch writes get the permissions the umask gives, like any other tool's:
a cache or export on shared storage is readable by the group when the umask says so."""

from __future__ import annotations

import os
import stat

import pytest

from allocsearch import search

from ..tiny import tiny_config


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o002, 0o077])
def test_results_caches_and_exports_follow_the_umask(model_dirs, tmp_path, umask, mask):
    umask(mask)
    search("flops=0.6", seed=0, config=tiny_config(model_dirs["gpt2"], tmp_path / "cache"), out=tmp_path / "out" / "result.json",
           export_dir=tmp_path / "out" / "pruned", progress=False)
    written = [p for root in ("cache", "out") for p in (tmp_path / root).rglob("*")]
    assert any(p.is_dir() for p in written) and any(p.name == "model.safetensors" for p in written)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in written}
    want = {p.relative_to(tmp_path).as_posix(): (0o777 if p.is_dir() else 0o666) & ~mask for p in written}
    assert modes == want
