"""Searchers by name. A new searcher is one file here and one line in `SEARCHERS`."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Problem, Searcher
from .uniform import Uniform, uniform_levels

SEARCHERS: dict[str, type[Searcher]] = {cls.name: cls for cls in (Uniform,)}


def get_searcher(method: str) -> type[Searcher]:
    if method not in SEARCHERS:
        raise ConfigError(f"method={method!r} is unknown; choose one of {', '.join(SEARCHERS)}")
    return SEARCHERS[method]


__all__ = ["SEARCHERS", "Problem", "Searcher", "Uniform", "get_searcher", "uniform_levels"]
