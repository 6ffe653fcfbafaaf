"""The search loop: ask, evaluate through a runner, tell, until the searcher is done or a stop
condition is reached.

Around that loop: a start allocation measured first (a search never ends worse than its start),
rounds on refined grids when a `Refining` searcher asks for one (coarse-to-fine: a new cache on the
finer grid, the same model), checkpoints at a `Resumable` searcher's generation boundaries, and a
progress bar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .._progress import progress_bar
from ..core.problem import SIGNALS, Problem
from ..core.space import LevelGrid
from ..searchers.base import Refining, Resumable, Searcher
from ..searchers.termination import Status
from . import checkpoint as checkpoints
from .runners import Runner
from .stages import stage

log = logging.getLogger(__name__)
RunnerFactory = Callable[..., Runner]  # session -> runner for that session


@dataclass
class Outcome:
    """What a run found, and the session of its last round (whose space may be a refined grid)."""

    levels: np.ndarray
    fitness: float
    history: list[dict]
    session: object
    rounds: list[list[list[int]]]  # per round, the removed counts of every level of every unit
    searcher: Searcher


def run_search(session, searcher_class: type[Searcher], *, limits: dict[str, float], seed: int, options: dict,
               runner_factory: RunnerFactory, init: np.ndarray | None = None, stops: list = (),
               checkpoint: Path | None = None, resume: bool = False, identity: str = "", batch: int = 1024,
               progress: bool = True) -> Outcome:
    runner = runner_factory(session)
    # The tables are made on first read, through this runner: a searcher that reads none pays for none.
    problem = Problem(session.space, session.costs, limits, init=init, errors=lambda: session.error_table(runner),
                      signals={name: partial(session.signal, name) for name in SIGNALS})
    searcher = searcher_class(problem, seed=seed, **options)
    with stage(session.stages, "search", getattr(session, "device", None)):
        return _loop(session, searcher, runner, problem=problem, runner_factory=runner_factory, stops=list(stops),
                     checkpoint=checkpoint, resume=resume, identity=identity, batch=batch, progress=progress,
                     seed=seed)


def _loop(session, searcher: Searcher, runner: Runner, *, problem: Problem, runner_factory: RunnerFactory,
          stops: list, checkpoint: Path | None, resume: bool, identity: str, batch: int, progress: bool,
          seed: int) -> Outcome:
    history: list[dict] = []
    rounds = [session.space.counts]
    spent = 0.0  # seconds of earlier runs of a resumed search
    saved = checkpoints.load(checkpoint, identity) if (checkpoint is not None and resume) else None
    if saved is not None:
        history, rounds, spent = saved.history, saved.rounds, saved.seconds
        if len(rounds) > 1:  # the grid of the round the checkpoint was taken in
            session = session.on_grid(rounds[-1], LevelGrid(**saved.grid))
            _close(runner)
            runner = runner_factory(session)
            searcher.rebase(problem.on(session.space, session.costs, np.array(saved.state["parent"])))
        searcher.load_state(saved.state)
        log.info("resumed from %s: %d evaluations so far", checkpoint, len(history))
    elif problem.init is not None:  # the known point competes: a search never ends worse than its start
        fitness = runner.evaluate([problem.init], 1.0)
        searcher.tell([problem.init], fitness)
        history.append({"levels": problem.init.tolist(), "fidelity": 1.0, "fitness": fitness[0], "round": 0})
    clock = time.monotonic()
    bar, stopped = None, False
    while not stopped:
        while not searcher.done:
            allocations = searcher.ask(batch)
            if not allocations:
                if searcher.done:
                    break
                raise RuntimeError(f"searcher {searcher.name} asked for nothing but is not done")
            fidelity = searcher.fidelity
            fitnesses = runner.evaluate(allocations, fidelity)
            searcher.tell(allocations, fitnesses)
            history += [{"levels": np.asarray(a).tolist(), "fidelity": fidelity, "fitness": f,
                         "round": len(rounds) - 1} for a, f in zip(allocations, fitnesses)]
            bar = _show(searcher, bar, progress)
            resumable = isinstance(searcher, Resumable)
            if resumable and not searcher.at_boundary:
                continue  # stop conditions and checkpoints wait for the end of the generation
            status = Status(evaluations=len(history), seconds=spent + time.monotonic() - clock)
            if any(stop.reached(status) for stop in stops):
                stopped = True
                break
            if checkpoint is not None and resumable:
                checkpoints.save(checkpoint, identity, seed, checkpoints.Saved(
                    searcher.state(), history, rounds, asdict(session.space.grid), status.seconds))
        if stopped or not isinstance(searcher, Refining) or searcher.refine_step is None:
            break
        refined = session.space.refined(searcher.best_levels, step=searcher.refine_step)
        start = refined.level_of_counts(session.space.removed_counts(searcher.best_levels))
        log.info("round %d: grid step %.4g around the best allocation", len(rounds), searcher.refine_step)
        session = session.on_grid(refined.counts, refined.grid)
        _close(runner)  # its workers free their CPUs for the next round's
        runner = runner_factory(session)
        rounds.append(refined.counts)
        searcher.rebase(problem.on(session.space, session.costs, start))
    if bar is not None:
        bar.close()
    _close(runner)
    if searcher.best_levels is None:
        raise RuntimeError(f"searcher {searcher.name} found no allocation")
    return Outcome(searcher.best_levels, searcher.best_fitness, history, session, rounds, searcher)


def _close(runner) -> None:
    close = getattr(runner, "close", None)  # a runner of one's own may have no workers to release
    if close is not None:
        close()


def _show(searcher: Searcher, bar, progress: bool):
    status = searcher.progress()
    if status is None:
        return bar
    done, total, figures = status
    if bar is None:
        bar = progress_bar(total=total, desc=searcher.name, enabled=progress)
    bar.n = done
    bar.set_postfix(figures, refresh=True)
    return bar
