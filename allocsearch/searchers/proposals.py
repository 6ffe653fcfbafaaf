"""Searchers that propose one allocation from a solver: uniform, owl, dp, and the model-informed
allocators ecoflap, flap, cfsp and dlp (each reads one signal of the dense model, `Problem.signal`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..solvers.cfsp import cfsp_levels
from ..solvers.dlp import DLP_ALPHA, dlp_levels
from ..solvers.dp import dp_solve
from ..solvers.ecoflap import ecoflap_levels
from ..solvers.flap import flap_levels
from ..solvers.shaped import owl_offsets, shaped_levels, shifted, uniform_levels
from .base import Proposals


class Uniform(Proposals):
    """uniform: the same removed fraction in every unit, as much as the budget needs. The baseline."""

    name = "uniform"

    def propose(self) -> list[np.ndarray]:
        return [uniform_levels(self.problem)]


class OWL(Proposals):
    """owl: Outlier Weighed Layerwise sparsity (Yin et al. 2024), model-free apart from the outlier
    ratios (see `allocsearch.solvers.shaped`)."""

    name = "owl"

    def propose(self) -> list[np.ndarray]:
        offsets = owl_offsets(self.problem.space, self.problem.signal("outlier_ratios"))
        return [shaped_levels(self.problem, *shifted(offsets))]


class DP(Proposals):
    """dp: the allocation minimising the summed single-unit errors within the limits (the multiple-choice
    knapsack of `allocsearch.solvers.dp`). Several limits: the better of the Lagrangian dp (DP on
    flops, or the first limit, prices on the others) and the exact MILP (`allocsearch.solvers.milp`)."""

    name = "dp"
    resolution = 10_000

    def propose(self) -> list[np.ndarray]:
        return [dp_solve(self.problem, resolution=self.resolution).levels]


BLOCK_SCORES = ("total", "per_weight")


@dataclass(frozen=True)
class ECoFLaPOptions:
    """Options of `ECoFLaP`."""

    block_score: str = field(default="total", metadata={"help": "a block's score: total (its zeroth-order "
                                                                "sum, as ECoFLaP) or per_weight (divided by its "
                                                                "parameters)"})

    def __post_init__(self) -> None:
        if self.block_score not in BLOCK_SCORES:
            raise ConfigError(f"block_score={self.block_score!r} must be one of {', '.join(BLOCK_SCORES)}")


class ECoFLaP(Proposals):
    """ecoflap: ECoFLaP's layer-wise sparsity from zeroth-order block scores (Sung et al. 2024; see
    `allocsearch.solvers.ecoflap`)."""

    name = "ecoflap"
    Options = ECoFLaPOptions

    def propose(self) -> list[np.ndarray]:
        return [ecoflap_levels(self.problem, per_weight=self.options.block_score == "per_weight")]


class FLAP(Proposals):
    """flap: FLAP's global threshold on standardised fluctuation scores, structured spaces only (An et
    al. 2024; see `allocsearch.solvers.flap`)."""

    name = "flap"

    def propose(self) -> list[np.ndarray]:
        return [flap_levels(self.problem)]


class CFSP(Proposals):
    """cfsp: CFSP's block sparsity from the angles between blocks' inputs and outputs (Wang et al.
    2024; see `allocsearch.solvers.cfsp`)."""

    name = "cfsp"

    def propose(self) -> list[np.ndarray]:
        return [cfsp_levels(self.problem)]


@dataclass(frozen=True)
class DLPOptions:
    """Options of `DLP`."""

    alpha: float = field(default=DLP_ALPHA, metadata={"help": "how far a block's kept share may lie from "
                                                              "the mean: within +- 2 alpha"})

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 0.5:
            raise ConfigError(f"alpha={self.alpha!r} must lie in [0, 0.5]; DLP uses {DLP_ALPHA}")


class DLP(Proposals):
    """dlp: DLP's block sparsity from the median Wanda score of each block (Chen et al. 2025; see
    `allocsearch.solvers.dlp`)."""

    name = "dlp"
    Options = DLPOptions

    def propose(self) -> list[np.ndarray]:
        return [dlp_levels(self.problem, alpha=self.options.alpha)]
