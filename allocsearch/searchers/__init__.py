"""Searchers by name. A new searcher is one file here and one line in `SEARCHERS`."""

from __future__ import annotations

from ..errors import ConfigError
from .admm import ADMM
from .base import Proposals, Refining, Resumable, Searcher
from .evolution import Evolution, EvolutionOptions
from .optuna import OptunaStudy, StudyOptions
from .proposals import (
    CFSP,
    DLP,
    DP,
    FLAP,
    OWL,
    DLPOptions,
    ECoFLaP,
    ECoFLaPOptions,
    Uniform,
)
from .random import RandomSearch
from .spdy import SPDY, SPDYOptions

SEARCHERS: dict[str, type[Searcher]] = {
    cls.name: cls for cls in (Uniform, OWL, ADMM, DP, Evolution, OptunaStudy, RandomSearch, SPDY,
                             ECoFLaP, FLAP, CFSP, DLP)
}
QUICK = ("uniform", "owl", "admm", "dp")  # methods that take seconds: one evaluation, or a few


def get_searcher(method: str) -> type[Searcher]:
    if method not in SEARCHERS:
        raise ConfigError(f"method={method!r} is unknown; choose one of {', '.join(SEARCHERS)}")
    return SEARCHERS[method]


__all__ = [
    "ADMM",
    "CFSP",
    "DLP",
    "DP",
    "FLAP",
    "OWL",
    "QUICK",
    "SEARCHERS",
    "SPDY",
    "DLPOptions",
    "ECoFLaP",
    "ECoFLaPOptions",
    "Evolution",
    "EvolutionOptions",
    "OptunaStudy",
    "Proposals",
    "RandomSearch",
    "Refining",
    "Resumable",
    "SPDYOptions",
    "Searcher",
    "StudyOptions",
    "Uniform",
    "get_searcher",
]
