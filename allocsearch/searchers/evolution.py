"""evolution: (1 + lambda) elitist evolution over level indices, after EvoPress and Tyr-the-Pruner.

- Start: the allocation of another method (`init`: dp by default, admm, owl or uniform), or a given
  allocation (`Problem.init`); it is measured at full fidelity and becomes the parent.
- Offspring: `offspring` distinct children of the parent, none seen before in this round. A child is
  made by `min(randint(1, 3), randint(1, 3))` level switches: one unit keeps one level more, another
  removes one level more; when costs differ between units and the budget breaks, further random
  units remove one level more until it holds. No child ever exceeds the budget.
- Multi-step selection: every child is scored on the first `fidelities[0]` share of the calibration
  tokens, the best `survivors[0]` go on to `fidelities[1]`, and so on; the last stage is at full
  fidelity and its best replaces the parent only if strictly better (the parent competes there).
- Predictor (`predictor` rbf or gp, see `surrogate`; AMQ's idea): once it has fitted
  `surrogate.MIN_POINTS` full-fidelity measurements, a generation draws `screen * offspring`
  children by the same mutation, predicts their fitness and keeps the best `offspring` by prediction
  for the first selection stage; the others are never measured ("screened out", counted) and may be
  drawn again later. Only full-fidelity scores fit the predictor; its rank correlation pairs each
  kept child's prediction with its first-stage score, and is logged every generation.
- Rounds (Tyr's coarse-to-fine): when a round stops (`generations`, or `patience` generations
  without improvement) and `rounds` remain, the searcher asks for a grid half as fine around its best
  allocation (`refine_step`); the search loop rebuilds the cache on it and continues from there.

All randomness comes from the searcher's one generator, so a seed fixes the sequence of candidates;
`state()` / `load_state()` capture everything at a generation boundary for checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.problem import Problem
from ..errors import ConfigError
from .admm import ADMM
from .base import Refining, Resumable, Searcher
from .proposals import DP, OWL, Uniform
from .surrogate import Surrogate, check_predictor, features, screening_summary
from .termination import Limit, Status

log = logging.getLogger(__name__)
INITS = {"dp": DP, "admm": ADMM, "owl": OWL, "uniform": Uniform}


def _flag(help_text: str) -> dict:
    return {"help": help_text}


@dataclass(frozen=True)
class EvolutionOptions:
    """Options of `Evolution` (see the module notes)."""

    generations: int = field(default=50, metadata=_flag("generations per round"))
    offspring: int = field(default=64, metadata=_flag("children per generation"))
    init: str = field(default="dp", metadata=_flag("start from: dp, admm, owl, uniform, or a result.json"))
    rounds: int = field(default=1, metadata=_flag("coarse-to-fine rounds, each on a grid half as fine"))
    patience: int | None = field(default=None, metadata=_flag("end a round after this many generations "
                                                              "without improvement"))
    fidelities: tuple[float, ...] = field(default=(1 / 16, 1 / 4, 1.0), metadata=_flag(
        "share of calibration tokens of each selection stage, increasing to 1"))
    survivors: tuple[int, ...] = field(default=(8, 2, 1), metadata=_flag("children kept after each stage, "
                                                                         "ending with 1"))
    predictor: str = field(default="none", metadata=_flag("screen children by predicted fitness: none, rbf, gp"))
    screen: int = field(default=4, metadata=_flag("with a predictor, children drawn per child measured"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "fidelities", tuple(float(f) for f in self.fidelities))
        object.__setattr__(self, "survivors", tuple(int(s) for s in self.survivors))
        for name in ("offspring", "generations", "rounds", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.init not in INITS:
            raise ConfigError(f"init={self.init!r} must be one of {', '.join(INITS)}, or a result file")
        f, s = self.fidelities, self.survivors
        if (len(f) != len(s) or not f or f[-1] != 1.0 or any(b <= a for a, b in zip(f, f[1:]))
                or not all(0 < x <= 1 for x in f)):
            raise ConfigError(f"fidelities={f} must increase to 1.0, one per selection stage; survivors={s} "
                              "gives the number kept after each")
        if s[-1] != 1 or any(b > a for a, b in zip(s, s[1:])) or s[0] < 1:
            raise ConfigError(f"survivors={s} must not increase and must end with 1")
        check_predictor(self.predictor, self.screen)


class Evolution(Searcher, Resumable, Refining):
    """(1 + lambda) evolution with multi-step selection and coarse-to-fine rounds."""

    name = "evolution"
    Options = EvolutionOptions

    def __init__(self, problem: Problem, *, seed: int, **options) -> None:
        super().__init__(problem, seed=seed, **options)
        self.round = 0
        self.generation = 0  # in this round
        self.generations_done = 0  # over all rounds
        self.evaluations = 0
        self.surrogate = None if self.options.predictor == "none" else Surrogate(self.options.predictor)
        self.round_ends = [Limit("generation", self.options.generations)]
        if self.options.patience is not None:
            self.round_ends.append(Limit("stalls", self.options.patience))
        self._start(problem)

    # -- phases -----------------------------------------------------------------------------------

    def _start(self, problem: Problem) -> None:
        """Begin a round on `problem`: first measure the start allocation."""
        self.problem = problem
        self.best_levels, self.best_fitness = None, np.inf
        self.parent, self.parent_fitness = None, np.inf
        self.stalls, self.stage = 0, 0
        self.phase = "init"
        self.refine_step: float | None = None
        self._seen: set[bytes] = set()
        self._pool: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []
        self._scores: dict[bytes, float] = {}
        self._predicted: dict[bytes, float] = {}  # kept child -> its prediction, until its first score
        if problem.init is not None:
            self._inner = None
            self._pending = [np.asarray(problem.init, dtype=np.int64)]
        else:
            self._inner = INITS[self.options.init](problem, seed=int(self.rng.integers(2**31)))

    def rebase(self, problem: Problem) -> None:
        """Continue on a refined grid; `problem.init` is the best allocation, expressed on it."""
        self.round += 1
        self.generation = 0
        self._start(problem)

    @property
    def done(self) -> bool:
        return self.phase in ("done", "refine")

    @property
    def at_boundary(self) -> bool:
        """Between generations: what `state()` captures is all there is."""
        return self.phase == "evolve" and self.stage == 0 and not self._pending and not self._pool

    @property
    def fidelity(self) -> float:
        return self.options.fidelities[self.stage] if self.phase == "evolve" else 1.0

    def progress(self) -> tuple[int, int, dict]:
        total = self.options.generations * self.options.rounds
        return self.generations_done, total, {"best": f"{self.best_fitness:.5g}", "evals": self.evaluations,
                                              "round": self.round}

    def summary(self) -> dict:
        return screening_summary(self.surrogate)

    # -- ask / tell ---------------------------------------------------------------------------------

    def ask(self, n: int) -> list[np.ndarray]:
        if self.phase == "init" and self._inner is not None and not self._pending:
            return self._inner.ask(n)
        if self.phase == "evolve" and not self._pool:
            self._pool = self._offspring()
            self._pending = list(self._pool)
            if not self._pool:  # every neighbour has been seen: the round has converged
                self._end_round()
                return []
        asked, self._pending = self._pending[:n], self._pending[n:]
        return asked

    def tell(self, allocations: list[np.ndarray], fitnesses: list[float]) -> None:
        if self.fidelity == 1.0:  # scores on fewer tokens are not comparable: they never make the best
            super().tell(allocations, fitnesses)
            if self.surrogate is not None:
                self.surrogate.add(features(self.problem.space, allocations), fitnesses)
        self.evaluations += len(allocations)
        if self.phase == "init":
            if self._inner is not None:
                self._inner.tell(allocations, fitnesses)
                finished = self._inner.done
            else:  # the start allocation, measured by us or by the search loop before we asked
                told = {np.asarray(a, dtype=np.int64).tobytes() for a in allocations}
                self._pending = [p for p in self._pending if p.tobytes() not in told]
                finished = not self._pending and self.best_levels is not None
            if finished:
                self.parent, self.parent_fitness = self.best_levels.copy(), self.best_fitness
                self._seen.add(self.parent.tobytes())
                self.phase = "evolve"
            return
        for levels, fitness in zip(allocations, fitnesses):
            key = np.asarray(levels, dtype=np.int64).tobytes()
            self._scores[key] = float(fitness)
            if key in self._predicted:
                self.surrogate.record(self._predicted.pop(key), fitness)
        if self._pending or len(self._scores) < len(self._pool):
            return
        ranked = sorted(self._pool, key=lambda c: self._scores[c.tobytes()])  # stable: ties keep order
        if self.stage + 1 < len(self.options.fidelities):
            self._pool = ranked[: self.options.survivors[self.stage]]
            self._pending, self._scores = list(self._pool), {}
            self.stage += 1
            return
        best = ranked[0]
        if self._scores[best.tobytes()] < self.parent_fitness:
            self.parent, self.parent_fitness = best.copy(), self._scores[best.tobytes()]
            self.stalls = 0
        else:
            self.stalls += 1
        self._pool, self._scores, self.stage = [], {}, 0
        self.generation += 1
        self.generations_done += 1
        if self.surrogate is not None:
            log.info("generation %d: predictor %s %s, %d screened out", self.generations_done,
                     self.options.predictor, self.surrogate.correlation(), self.surrogate.screened_out)
        self._after_generation()

    def _after_generation(self) -> None:
        status = Status(evaluations=self.evaluations, generation=self.generation, stalls=self.stalls)
        if any(end.reached(status) for end in self.round_ends):
            self._end_round()

    def _end_round(self) -> None:
        if self.round + 1 < self.options.rounds:
            self.phase = "refine"
            self.refine_step = self.problem.space.grid.step / 2
        else:
            self.phase = "done"

    # -- offspring ----------------------------------------------------------------------------------

    def _mutate(self, parent: np.ndarray) -> np.ndarray:
        top = self.problem.space.n_levels - 1
        child = parent.copy()
        moves = min(int(self.rng.integers(1, 4)), int(self.rng.integers(1, 4)))
        for _ in range(moves):
            for _attempt in range(20):
                keep, remove = np.flatnonzero(child > 0), np.flatnonzero(child < top)
                if not len(keep) or not len(remove):
                    break
                a, b = int(self.rng.choice(keep)), int(self.rng.choice(remove))
                if a == b:
                    continue
                trial = child.copy()
                trial[a] -= 1
                trial[b] += 1
                while not self.problem.feasible(trial):  # heterogeneous costs: remove more elsewhere
                    more = np.flatnonzero((trial < top) & (np.arange(len(trial)) != a))
                    if not len(more):
                        break
                    trial[int(self.rng.choice(more))] += 1
                if self.problem.feasible(trial):
                    child = trial
                    break
        return child

    def _offspring(self) -> list[np.ndarray]:
        """`offspring` unseen children; with a ready predictor, the best by prediction of `screen` times as many."""
        screening = self.surrogate is not None and self.surrogate.ready
        wanted = self.options.offspring * (self.options.screen if screening else 1)
        children: list[np.ndarray] = []
        for _ in range(10 * wanted):  # small spaces run out of unseen neighbours
            if len(children) == wanted:
                break
            child = self._mutate(self.parent)
            key = child.tobytes()
            if key not in self._seen:
                self._seen.add(key)
                children.append(child)
        return self._screened(children) if screening and children else children

    def _screened(self, children: list[np.ndarray]) -> list[np.ndarray]:
        """The `offspring` children of best predicted fitness, in the order drawn; the others are unseen again."""
        kept, predicted = self.surrogate.screen(features(self.problem.space, children), self.options.offspring)
        for i in set(range(len(children))) - set(kept):
            self._seen.discard(children[i].tobytes())
        self._predicted = {children[i].tobytes(): float(predicted[i]) for i in kept}
        return [children[i] for i in kept]

    # -- checkpoints ----------------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue from this generation boundary (JSON data plus arrays)."""
        if not self.at_boundary:
            raise RuntimeError("state() is taken between generations only")
        seen = np.frombuffer(b"".join(sorted(self._seen)), dtype=np.int64).reshape(-1, self.problem.space.n_units)
        return {"round": self.round, "generation": self.generation, "generations_done": self.generations_done,
                "evaluations": self.evaluations, "stalls": self.stalls,
                "parent": self.parent.tolist(), "parent_fitness": self.parent_fitness,
                "best": self.best_levels.tolist(), "best_fitness": self.best_fitness,
                "rng": self.rng.bit_generator.state, "options": asdict(self.options), "seen": seen,
                "surrogate": None if self.surrogate is None else self.surrogate.state()}

    def load_state(self, state: dict) -> None:
        """Continue from `state()` taken on a problem with the same space as this one."""
        self.round, self.generation = int(state["round"]), int(state["generation"])
        self.generations_done, self.evaluations = int(state["generations_done"]), int(state["evaluations"])
        self.stalls = int(state["stalls"])
        self.parent, self.parent_fitness = np.array(state["parent"], dtype=np.int64), float(state["parent_fitness"])
        self.best_levels, self.best_fitness = np.array(state["best"], dtype=np.int64), float(state["best_fitness"])
        self.rng.bit_generator.state = state["rng"]
        self._seen = {row.tobytes() for row in np.asarray(state["seen"], dtype=np.int64)}
        if self.surrogate is not None and state.get("surrogate"):
            self.surrogate.load_state(state["surrogate"])
        self._inner, self._pending, self._pool, self._scores, self.stage = None, [], [], {}, 0
        self._predicted = {}
        self.phase = "evolve"
