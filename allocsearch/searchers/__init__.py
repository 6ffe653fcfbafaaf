"""Searchers by name. A new searcher is one file here and one line in `SEARCHERS`."""

from __future__ import annotations

from ..errors import ConfigError
from .admm import ADMM
from .base import Problem, Proposals, Searcher
from .dp import DP
from .evolution import Evolution, EvolutionOptions
from .owl import OWL
from .study import OptunaStudy, StudyOptions
from .repair import fill, predicted_error, repair
from .uniform import Uniform, shaped_levels, uniform_levels

SEARCHERS: dict[str, type[Searcher]] = {cls.name: cls for cls in (Uniform, OWL, ADMM, DP, Evolution, OptunaStudy)}
QUICK = ("uniform", "owl", "admm", "dp")  # methods that take seconds: one evaluation, or a few


def get_searcher(method: str) -> type[Searcher]:
    if method not in SEARCHERS:
        raise ConfigError(f"method={method!r} is unknown; choose one of {', '.join(SEARCHERS)}")
    return SEARCHERS[method]


__all__ = ["ADMM", "DP", "OWL", "Evolution", "EvolutionOptions", "OptunaStudy", "StudyOptions", "SEARCHERS",
           "QUICK", "Problem", "Proposals", "Searcher", "Uniform", "fill", "get_searcher", "predicted_error", "repair",
           "shaped_levels", "uniform_levels"]
