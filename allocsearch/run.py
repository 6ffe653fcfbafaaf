"""The search loop: ask, evaluate through a runner, tell, until the searcher is done.

Around that loop: a start allocation measured first (a search never ends worse than its start),
rounds on refined grids when the searcher asks for one (coarse-to-fine: a new cache on the finer
grid, the same model), checkpoints at the searcher's generation boundaries, and a progress bar.

A checkpoint (`.npz`, written atomically) holds the searcher's state, the history so far and the
grids of the rounds. Resuming checks that it was written by the same search (method, options, seed,
budget, configuration, space and start) and continues from it: the result is identical to an
uninterrupted run, since every evaluation is a pure function of (allocation, fidelity, data).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import _io
from ._progress import progress_bar
from ._stages import stage
from .errors import ConfigError
from .runners import Runner
from .searchers import Problem, Searcher
from .space import LevelGrid

log = logging.getLogger(__name__)
FORMAT = 1
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


def _problem(session, limits: dict, searcher_class: type[Searcher], options: dict, init, runner) -> Problem:
    needs = searcher_class.requirements(options, init is not None)
    extras = {}
    if "errors" in needs:
        extras["errors"] = session.error_table(runner)
    if "outlier_ratios" in needs:
        extras["outlier_ratios"] = session.outlier_ratios
    return Problem(session.space, session.costs, limits, init=init, **extras)


def _counts(space) -> list[list[int]]:
    return [list(u.counts) for u in space.units]


def fingerprint(**parts) -> str:
    """A hash of everything that makes two searches the same search."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_search(session, searcher_class: type[Searcher], *, limits: dict[str, float], seed: int, options: dict,
               runner_factory: RunnerFactory, init: np.ndarray | None = None, checkpoint: Path | None = None,
               resume: bool = False, identity: str = "", batch: int = 1024, progress: bool = True) -> Outcome:
    runner = runner_factory(session)
    searcher = searcher_class(_problem(session, limits, searcher_class, options, init, runner), seed=seed,
                              **options)
    with stage(session.stages, "search", getattr(session, "device", None)):
        return _loop(session, searcher, runner, limits=limits, runner_factory=runner_factory, init=init,
                     checkpoint=checkpoint, resume=resume, identity=identity, batch=batch, progress=progress, seed=seed)


def _loop(session, searcher: Searcher, runner: Runner, *, limits: dict[str, float], runner_factory: RunnerFactory,
          init: np.ndarray | None, checkpoint: Path | None, resume: bool, identity: str, batch: int, progress: bool,
          seed: int) -> Outcome:
    history: list[dict] = []
    rounds = [_counts(session.space)]
    saved = _load(checkpoint, identity) if (checkpoint is not None and resume) else None
    if saved is not None:
        state, history, rounds, grid = saved
        if len(rounds) > 1:  # rebuild the grid of the round the checkpoint was taken in
            session = session.for_space(session.space.with_counts(rounds[-1], LevelGrid(**grid)))
            _close(runner)
            runner = runner_factory(session)
            searcher.rebase(Problem(session.space, session.costs, limits, init=np.array(state["parent"])))
        searcher.load_state(state)
        log.info("resumed from %s: %d evaluations so far", checkpoint, len(history))
    elif init is not None:  # the known point competes: a search never ends worse than its start
        fitness = runner.evaluate([init], 1.0)
        searcher.tell([init], fitness)
        history.append({"levels": init.tolist(), "fidelity": 1.0, "fitness": fitness[0], "round": 0})
    bar = None
    while True:
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
            if checkpoint is not None and searcher.at_boundary:
                _save(checkpoint, identity, searcher.state(), history, rounds, asdict(session.space.grid), seed)
        if searcher.refine_step is None:
            break
        refined = session.space.refined(searcher.best_levels, step=searcher.refine_step)
        start = refined.level_of_counts(session.space.removed_counts(searcher.best_levels))
        log.info("round %d: grid step %.4g around the best allocation", len(rounds), searcher.refine_step)
        session = session.for_space(refined)
        _close(runner)  # its workers free their CPUs for the next round's
        runner = runner_factory(session)
        rounds.append(_counts(refined))
        searcher.rebase(Problem(session.space, session.costs, limits, init=start))
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


def checkpoint_seed(path: Path) -> int | None:
    """The seed a checkpoint was written with (to resume a search whose seed was drawn), if readable."""
    try:
        return int(_io.read_npz(path)[0]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(path: Path, identity: str, state: dict, history: list[dict], rounds, grid: dict, seed: int) -> None:
    plain = {k: v for k, v in state.items() if k != "seen"}  # JSON; the seen allocations go as an array
    meta = {"format": FORMAT, "identity": identity, "seed": seed, "state": plain, "rounds": rounds, "grid": grid}
    arrays = {
        "seen": state["seen"],
        "levels": np.array([h["levels"] for h in history], dtype=np.int16).reshape(len(history), -1),
        "fidelity": np.array([h["fidelity"] for h in history]), "fitness": np.array([h["fitness"] for h in history]),
        "round": np.array([h["round"] for h in history], dtype=np.int16),
    }
    _io.write_npz(path, meta, arrays)


def _load(path: Path, identity: str):
    if not path.is_file():
        log.info("no checkpoint at %s; starting afresh", path)
        return None
    try:
        meta, arrays = _io.read_npz(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read ({exc}); delete it to start afresh") from None
    if meta.get("format") != FORMAT or meta.get("identity") != identity:
        raise ConfigError(f"checkpoint {str(path)!r} was written by a different search (method, options, seed, "
                          "budget or model); rerun that command to resume it, or drop --resume to start afresh")
    state = {**meta["state"], "seen": arrays["seen"]}
    history = [{"levels": lv.astype(int).tolist(), "fidelity": float(fd), "fitness": float(ft), "round": int(r)}
               for lv, fd, ft, r in zip(arrays["levels"], arrays["fidelity"], arrays["fitness"], arrays["round"])]
    return state, history, meta["rounds"], meta["grid"]
