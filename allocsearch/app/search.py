"""The entry points: `search()` runs a searcher through a runner and returns a `Result`; `export()`
writes the pruned model of a result."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..core.budget import Budget, check_keeps_something, within
from ..core.result import Result
from ..core.space import LevelGrid
from ..errors import ConfigError, InputFileError, SpaceError
from ..model.evaluator import check_objective
from ..model.export import EXPORT_FORMATS, check_export_dir, check_export_format
from ..model.recipes import RECIPE_FORMATS, write_recipe
from ..searchers import get_searcher
from ..searchers.termination import stop_conditions
from .checkpoint import check_readable, checkpoint_seed, fingerprint
from .config import RunConfig, device_problem
from .loop import run_search
from .paths import check_output_dir, check_output_file
from .ray_runner import runner_factory
from .runners import Runner
from .session import Session
from .stages import stage


def search(budget: Budget | str | list[str], *, method: str = "dp", seed: int | None = None,
           config: RunConfig | None = None, runner: Runner | Callable[[Session], Runner] | None = None,
           out: str | Path | None = None, export_dir: str | Path | None = None, progress: bool = True,
           session: Session | None = None, init: np.ndarray | dict[str, int] | Result | str | Path | None = None,
           method_options: dict | None = None, checkpoint: str | Path | None = None, resume: bool = False,
           workers: int = 1, ray_address: str | None = None, max_evaluations: int | None = None,
           max_seconds: float | None = None, export_format: str = "hf", ray_timeout: float | None = None,
           **options) -> Result:
    """Search an allocation within `budget` and measure it.

    Args:
        budget: a `Budget` or strings like `"flops=0.5"`.
        method: a searcher name (`dp`, the default, `uniform`, `owl`, `admm`, `evolution`, `optuna`).
        seed: makes the search reproducible; None draws one (recorded in the result).
        config: a `RunConfig`; or give its fields as keyword `options` (`model="gpt2"`, ...).
        runner: evaluates candidates: a Runner, or a function of a `Session` making one (needed
            when a search moves to refined grids); None: in this process, or on `workers` Ray actors.
        workers, ray_address: with more than one worker (or an address), candidates are evaluated
            on Ray actors, locally or on the cluster at `ray_address`; results do not change.
        ray_timeout: seconds the cluster's address has to answer before the search gives up (default
            `$ALLOCSEARCH_RAY_TIMEOUT`, else 30); checked before any model is loaded.
        out: write the result JSON here.
        export_dir: write the pruned model here.
        export_format: its format: `hf` (the default: `from_pretrained` loads it), `compressed`
            (unstructured weights in sparse-bitmask form) or `decilm` (vLLM; search with
            `fit="decilm"`); see `allocsearch.model.export`.
        session: reuse a `Session` (its config wins over `config` and `options`).
        init: a known allocation (level indices, `{unit: level}`, or a `Result` or its JSON file,
            matched by removed groups per unit) to start from; it is evaluated
            first and the result is never worse than it.
        method_options: the searcher's own options (e.g. `{"generations": 100}` for evolution).
        checkpoint: write a checkpoint here at every generation boundary; removed when done.
        resume: continue from `checkpoint` when it holds this very search.
        max_evaluations, max_seconds: stop once this many candidates were evaluated, or this much
            wall time spent (checked between generations, or after each batch; seconds make the
            result depend on the machine).

    Every argument, the searcher's options and every output path (`out`, `checkpoint`,
    `export_dir`) are checked before any model is loaded, so a mistake costs nothing.

    For example::

        result = allocsearch.search("flops=0.5", method="dp", seed=0)
        result.cost["flops_ratio"], result.heldout
    """
    start = time.perf_counter()
    if session is None and config is not None and options:
        raise ConfigError(f"give either config= or keyword options, not both (got {sorted(options)})")
    run_config = session.config if session is not None else config or RunConfig(**options)
    run_config.check_files()
    budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
    _check_outputs(out, checkpoint, export_dir, export_format, run_config)
    _check_numbers(seed, max_evaluations, max_seconds)
    if isinstance(init, (str, Path)):
        init = _init_result(init)
    method_options = dict(method_options or {})
    searcher_class = get_searcher(method)
    searcher_class.parse_options(method_options)  # before any model is loaded
    if runner is None:
        factory = runner_factory(workers, ray_address, ray_timeout)  # probes a cluster's address
    elif hasattr(runner, "evaluate"):
        if method_options.get("rounds", 1) > 1:
            raise ConfigError("a search over refined grids (rounds > 1) needs runner= as a function of the session")
        factory = lambda s: runner
    else:
        factory = runner
    if resume and checkpoint and Path(checkpoint).is_file():
        check_readable(Path(checkpoint))  # a damaged one fails now, not after the build
        if seed is None:
            seed = checkpoint_seed(Path(checkpoint))  # the drawn seed of the search being resumed
    seed = _draw_seed() if seed is None else int(seed)
    if session is None:
        session = Session(run_config, progress=progress)
    limits = budget.limits(session.costs)
    check_keeps_something(budget, limits, session.space, session.costs)  # before the supernet is built
    check_objective(session.config.objective, session.space.task)  # the model's task is known now
    init_levels = _checked_init(session, limits, init)
    stops = {"max_evaluations": max_evaluations, "max_seconds": max_seconds}
    identity = fingerprint(method=method, options=method_options, seed=seed, limits=limits,
                           config=asdict(session.config), space=session.space.id,
                           init=None if init_levels is None else init_levels.tolist(),
                           **{k: v for k, v in stops.items() if v is not None})
    session.stages = {}  # what this search spends; what an earlier one built is reused, not counted again
    _ = session.supernet, session.evaluator  # the build, then the dense passes: each its own stage
    outcome = run_search(session, searcher_class, limits=limits, seed=seed, options=method_options,
                         runner_factory=factory, init=init_levels, stops=stop_conditions(**stops),
                         checkpoint=Path(checkpoint) if checkpoint else None, resume=resume, identity=identity,
                         progress=progress)
    final = outcome.session
    if not within(final.costs, outcome.levels, limits):
        raise RuntimeError(f"searcher {method} returned an allocation outside the limits")
    with stage(session.stages, "heldout", session.device):
        result = make_result(final, method, budget, outcome.levels, outcome.fitness, seed, outcome.history,
                             time.perf_counter() - start, base=session, rounds=outcome.rounds, options=method_options,
                             details=outcome.searcher.summary())
    result.stages = dict(session.stages)
    outcome.searcher.finish(result)
    if out is not None:
        result.save(out)
    if checkpoint and Path(checkpoint).is_file():
        os.unlink(checkpoint)  # the search is complete: nothing is left to resume
    if export_dir is not None:
        with stage(session.stages, "export", session.device):
            final.export(outcome.levels, export_dir, result, export_format=export_format)
        result.stages = dict(session.stages)
        if out is not None:
            result.save(out)
    return result


def export(result: Result | str | Path, out: str | Path, *, export_format: str = "hf", model: str | None = None,
           progress: bool = True) -> Path:
    """Write the pruned model of a search result (a `Result` or its JSON file) to the directory `out`,
    or its recipe for another tool to the file `out`.

    Args:
        export_format: a model format (`hf`, `compressed`, `decilm`; see `allocsearch.model.export`)
            or a recipe format (`llm-compressor`, `nni`, `torch-pruning`; see
            `allocsearch.model.recipes`), which needs no model.
        model: the model the search used, when it is no longer where the result says.

    For example::

        allocsearch.export("result.json", "pruned/")
        pruned = allocsearch.load_pruned("pruned/")
        allocsearch.export("result.json", "nni_config_list.json", export_format="nni")
    """
    if export_format not in (*EXPORT_FORMATS, *RECIPE_FORMATS):
        raise ConfigError(f"export_format={export_format!r} is not a format; choose one of "
                          f"{', '.join([*EXPORT_FORMATS, *RECIPE_FORMATS])}")
    if export_format in RECIPE_FORMATS:
        check_output_file("out", out)
    else:
        check_output_dir("out", out)
    if not isinstance(result, Result):
        result = Result.load(result)
    if export_format in RECIPE_FORMATS:
        return write_recipe(result, export_format, out)
    check_export_format(export_format, result.space.get("granularity"))  # before the model loads
    check_export_dir(out)
    config = {**result.config, **({"model": model} if model else {})}
    if device_problem(config.get("device", "auto")):
        config["device"] = "auto"  # searched on a device this machine lacks: the export is the same on any
    session = Session(RunConfig.from_dict(config), progress=progress)
    base_id = result.space.get("base_id", result.space.get("id"))
    if session.space.id != base_id:
        raise SpaceError(f"result was searched on space {base_id} but this model gives {session.space.id}; "
                         "pass the model the search used as model=PATH")
    if result.space.get("rounds"):  # found on a refined grid
        session = session.on_grid(result.space["rounds"][-1], LevelGrid(**result.space["grid"]))
    return session.export(session.space.levels_from_dict(result.levels), out, result, export_format=export_format)


def _check_outputs(out, checkpoint, export_dir, export_format: str, config: RunConfig) -> None:
    """Refuse, before any model is loaded, an output the search could not write at its end."""
    if out is not None:
        check_output_file("out", out)
    if checkpoint:
        check_output_file("checkpoint", checkpoint)
    if export_dir is not None:
        _check_export(export_format, config)
        check_export_dir(export_dir)
        check_output_dir("export_dir", export_dir)


SEED_LIMIT = 2**32  # seeds lie in [0, 2**32): numpy's SeedSequence and Optuna's samplers take them


def _check_numbers(seed, max_evaluations, max_seconds) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < SEED_LIMIT):
        raise ConfigError(f"seed={seed!r} must be an integer from 0 to {SEED_LIMIT - 1}, or None to draw one")
    if max_evaluations is not None and (isinstance(max_evaluations, bool)
                                        or not isinstance(max_evaluations, (int, np.integer)) or max_evaluations < 1):
        raise ConfigError(f"max_evaluations={max_evaluations!r} must be positive, or None for no limit")
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and 0 < max_seconds < float("inf")):
        raise ConfigError(f"max_seconds={max_seconds!r} must be positive, or None for no limit")


def _check_export(export_format: str, config: RunConfig) -> None:
    """Refuse, before any model is loaded, an export format the search cannot end in."""
    check_export_format(export_format, config.granularity)
    if export_format == "decilm" and config.fit != "decilm":
        raise ConfigError("export_format='decilm' needs a search with fit='decilm', whose levels all have DeciLM "
                          "shapes; add it, or export in another format")


def make_result(session: Session, method: str, budget: Budget, levels: np.ndarray, fitness: float, seed: int,
                history: list[dict], seconds: float, *, base: Session | None = None,
                rounds: list | None = None, options: dict | None = None, details: dict | None = None) -> Result:
    """The result of `levels` on `session`; `base` is the session the search began on, when a later
    round moved to a refined grid (`rounds` lists every round's grid); `details` is the searcher's
    `summary()`."""
    space, costs, evaluator = session.space, session.costs, session.evaluator
    summary = {k: v for k, v in space.to_dict().items() if k != "spec"}
    summary["base_id"] = (base or session).space.id
    if rounds is not None and len(rounds) > 1:
        summary["rounds"] = rounds
    total, ratios = costs.total(levels), costs.ratios(levels)
    held = evaluator.heldout(levels)
    cost = {"flops": total["flops"], "flops_ratio": ratios["flops"], "params": total["params"],
            "params_ratio": ratios["params"], "bytes": total["bytes"], "bytes_ratio": ratios["bytes"],
            "seq_len": costs.seq_len}
    return Result(
        method=method, budget=budget.to_dict(), allocation=space.allocation_dict(levels),
        levels=space.levels_dict(levels), cost=cost, fitness=float(fitness), heldout=held.score,
        heldout_fitness=held.fitness, dense_heldout=evaluator.dense_heldout, seed=seed, evaluations=len(history),
        config=asdict(session.config), space=summary, seconds=round(seconds, 2), history=history,
        options=dict(options or {}), details=dict(details or {}),
    )


def _init_result(path: str | Path) -> Result:
    """The result file a search starts from; errors name `init`."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"init={str(path)!r}: no such file; pass a result.json written by a search")
    try:
        return Result.load(path)
    except InputFileError:
        raise InputFileError(f"init={str(path)!r} is not a result file written by allocsearch; pass the result.json "
                             "of a search") from None


def _result_levels(space, result: Result) -> np.ndarray:
    """A result's allocation on `space`'s grid, matched by removed groups per unit."""
    if set(result.allocation) != {u.name for u in space.units}:
        raise ConfigError(f"init=<{result.method} result> was searched on other units; use a result of this model "
                          "and space")
    removed = [int(round(result.allocation[u.name] * u.groups)) for u in space.units]
    levels = space.level_of_counts(removed)
    if levels is None:
        raise ConfigError(f"init=<{result.method} result> lies off this level grid; search with its grid step "
                          f"(grid_step={result.config.get('grid_step')})")
    return levels


def _checked_init(session: Session, limits: dict[str, float], init) -> np.ndarray | None:
    if init is None:
        return None
    if isinstance(init, Result):
        levels = _result_levels(session.space, init)
    elif isinstance(init, dict):
        levels = session.space.levels_from_dict(init)
    else:
        levels = np.asarray(init, dtype=np.int64)
    session.space.check(levels)
    total = session.costs.total(levels)
    over = [m for m, limit in limits.items() if total[m] > limit]
    if over:
        raise ConfigError(f"init allocation exceeds the budget on {', '.join(over)}; start from one within it")
    return levels


def _draw_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**31))
