"""allocsearch: find the best per-layer sparsity allocation of a model under a FLOPs or memory budget.

Example:
    >>> import allocsearch
    >>> result = allocsearch.search("flops=0.5", method="dp", seed=0)
    >>> result.cost["flops_ratio"], result.fitness, result.heldout
"""

from .budget import Budget
from .compose import Composer
from .cost import CostModel
from .dp import Frontier, dp_allocate, dp_allocate_constrained, dp_frontier
from .errors import AllocSearchError, BudgetError, ConfigError, InputFileError, ModelLoadError, SpaceError
from .evaluator import Evaluator, EvaluatorConfig, HeldOut
from .export import export, load_pruned
from .pipeline import RunConfig, Session, search
from .planner import Plan, Planner
from .result import Result
from .runners import InProcessRunner, Runner
from .searchers import SEARCHERS, Problem, Searcher
from .space import LevelGrid, SearchSpace, Unit
from .supernet import Supernet, SupernetConfig
from .tables import TABLES, error_table, proxy_table

__version__ = "0.1.0"

__all__ = [
    "AllocSearchError", "Budget", "BudgetError", "Composer", "ConfigError", "CostModel", "Evaluator",
    "EvaluatorConfig", "Frontier", "HeldOut", "InProcessRunner", "InputFileError", "LevelGrid", "ModelLoadError", "Plan",
    "Planner", "Problem", "Result", "RunConfig", "Runner", "SEARCHERS", "SearchSpace", "Searcher", "Session",
    "SpaceError", "Supernet", "SupernetConfig", "TABLES", "Unit", "dp_allocate", "dp_allocate_constrained", "dp_frontier",
    "error_table", "export", "load_pruned", "proxy_table", "search",
]
