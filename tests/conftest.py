from __future__ import annotations

import os

import pytest

from allocsearch import Session

from .tiny import EXPORT_FAMILIES, save_tiny, tiny_config

os.environ.setdefault("ALLOCSEARCH_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: save_tiny(family, root / family) for family in EXPORT_FAMILIES}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def sessions(model_dirs, cache_dir):
    """One session per (family, granularity), built once for the whole test run."""
    made = {}

    def get(family: str, granularity: str = "structured", **overrides) -> Session:
        key = (family, granularity, tuple(sorted(overrides.items())))
        if key not in made:
            made[key] = Session(tiny_config(model_dirs[family], cache_dir, granularity=granularity, **overrides),
                                progress=False)
        return made[key]

    return get
