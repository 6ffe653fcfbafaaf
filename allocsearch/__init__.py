"""allocsearch: find the best per-layer sparsity allocation of a model under a FLOPs or memory budget.

For example::

    import allocsearch
    result = allocsearch.search("flops=0.5", method="dp", seed=0)
    result.cost["flops_ratio"], result.fitness, result.heldout
"""

from .app.config import RunConfig
from .app.planner import Plan, Planner
from .app.runners import InProcessRunner, Runner
from .app.search import export, search
from .app.session import Session
from .app.tables import TABLES, error_table, proxy_table
from .core.budget import Budget
from .core.cost import CostModel
from .core.problem import Problem
from .core.result import Result
from .core.space import LevelGrid, SearchSpace, Unit
from .errors import (
    AllocSearchError,
    BudgetError,
    ConfigError,
    InputFileError,
    ModelLoadError,
    SpaceError,
)
from .model.build import costs_from_model, space_from_model
from .model.compose import Composer
from .model.evaluator import Evaluator, EvaluatorConfig, HeldOut
from .model.export import load_pruned
from .model.supernet import Supernet, SupernetConfig
from .searchers import SEARCHERS, Searcher
from .solvers.dp import Frontier, dp_allocate, dp_allocate_constrained, dp_frontier

__version__ = "0.1.0"

__all__ = [
    "SEARCHERS",
    "TABLES",
    "AllocSearchError",
    "Budget",
    "BudgetError",
    "Composer",
    "ConfigError",
    "CostModel",
    "Evaluator",
    "EvaluatorConfig",
    "Frontier",
    "HeldOut",
    "InProcessRunner",
    "InputFileError",
    "LevelGrid",
    "ModelLoadError",
    "Plan",
    "Planner",
    "Problem",
    "Result",
    "RunConfig",
    "Runner",
    "SearchSpace",
    "Searcher",
    "Session",
    "SpaceError",
    "Supernet",
    "SupernetConfig",
    "Unit",
    "costs_from_model",
    "dp_allocate",
    "dp_allocate_constrained",
    "dp_frontier",
    "error_table",
    "export",
    "load_pruned",
    "proxy_table",
    "search",
    "space_from_model",
]
