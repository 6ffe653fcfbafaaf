"""optuna: an allocation search as an Optuna study, in storage that dashboards read and runs resume.

- One int parameter per unit (its level index). Samplers: `tpe` (multivariate, the default), `gp`,
  `nsga2` (two objectives, fitness and cost, for a Pareto front), `cmaes`, `random`.
- Budget: a sampled allocation that breaks a limit is repaired before evaluation (levels raised
  where the error table says they cost least per unit of cost saved, see `repair`); the sampled
  allocation's worst relative excess is recorded with `Trial.set_constraint("budget", ...)` (<= 0 is
  feasible), and the repaired allocation with its costs goes into the trial's user attributes. No
  infeasible allocation is ever evaluated.
- Warm start: a new study first gets the dp and admm (price decomposition) allocations enqueued, and
  uniform's when asked for.
- Batches of `batch` trials are asked together, evaluated through the Runner and told in trial
  order. The sampler of batch k is seeded from (seed, k), so a study is reproducible from its seed,
  whatever evaluates it, and a resumed study continues exactly as an uninterrupted one would:
  trials a killed run left RUNNING are finished first (none lost, none duplicated).
- Multi-fidelity: with `prune` set, a batch is first scored on that share of the calibration
  tokens; only the best `keep` share goes on to full fidelity, the rest are told PRUNED.
- Predictor (`predictor` rbf or gp, see `surrogate`): once the study holds `surrogate.MIN_POINTS`
  complete trials, a batch asks `screen` times as many trials, predicts their fitness from the
  complete ones and measures the best `batch` by prediction; the others are told PRUNED at once, with
  user attributes `predicted_fitness` and `screened_out`. Only measured trials count toward
  `trials` (the study's budget is evaluations, as without a predictor), so the study holds more
  trials than `trials`. Rank correlation of prediction against each measured trial's first score is
  logged every batch and rebuilt from storage when a study continues.

The study's own user attributes record the search it belongs to (space, limits, seed, sampler); a
study of another search under the same name is refused.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ..core.problem import Problem
from ..core.result import Result
from ..errors import ConfigError
from ..solvers.dp import dp_solve
from ..solvers.price import price_allocation
from ..solvers.repair import repair
from ..solvers.shaped import uniform_levels
from .base import Searcher
from .surrogate import Surrogate, check_predictor, features, screening_summary

log = logging.getLogger(__name__)
SAMPLERS = ("tpe", "gp", "nsga2", "cmaes", "random")
WARM_STARTS = ("dp", "admm", "uniform")


def open_storage(url: str):
    """An Optuna storage: `sqlite:///...` (or any RDB URL), `journal:///path/file.log` for a
    journal file that several processes may share, or `:memory:` for one that dies with the process."""
    if url == ":memory:":
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal:///"):
        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy raises many kinds for a bad URL
        raise ConfigError(f"storage={url!r} is not a usable Optuna storage ({exc.__class__.__name__}: {exc}); "
                          "use sqlite:///studies/NAME.db or journal:///path/file.log") from None


def default_storage(study: str) -> str:
    """`sqlite:///studies/<study>.db`, relative to the working directory."""
    return f"sqlite:///studies/{study}.db"


@dataclass(frozen=True)
class StudyOptions:
    """Options of the `optuna` method (see the module notes)."""

    sampler: str = field(default="tpe", metadata={"help": f"one of {', '.join(SAMPLERS)}"})
    trials: int = field(default=200, metadata={"help": "trials in the study in all; a rerun continues to it"})
    batch: int = field(default=8, metadata={"help": "trials asked, evaluated and told together"})
    study: str = field(default="allocsearch", metadata={"help": "study name (the CLI's default: "
                                                                 "family-granularity-budget)"})
    storage: str | None = field(default=None, metadata={"help": "Optuna storage URL (default sqlite:///studies/"
                                                                "STUDY.db; journal:///path/file.log for several "
                                                                "processes)"})
    prune: float | None = field(default=None, metadata={"help": "score each batch on this share of the tokens "
                                                                "first"})
    keep: float = field(default=0.25, metadata={"help": "share of a batch that goes on to full fidelity"})
    warm_start: tuple[str, ...] = field(default=("dp", "admm"), metadata={"help": "allocations enqueued first: "
                                                                                  f"any of {', '.join(WARM_STARTS)}"})
    predictor: str = field(default="none", metadata={"help": "screen trials by predicted fitness: none, rbf, gp"})
    screen: int = field(default=4, metadata={"help": "with a predictor, trials asked per trial measured"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "warm_start", tuple(self.warm_start))
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler={self.sampler!r} must be one of {', '.join(SAMPLERS)}")
        if self.trials < 1 or self.batch < 1:
            raise ConfigError(f"trials={self.trials} and batch={self.batch} must be positive")
        if self.prune is not None and not (0 < self.prune < 1 and 0 < self.keep <= 1):
            raise ConfigError(f"prune={self.prune} must lie in (0, 1) and keep={self.keep} in (0, 1]")
        if self.prune is not None and self.sampler == "nsga2":
            raise ConfigError("prune works with one objective; sampler='nsga2' optimises two: leave prune unset")
        check_predictor(self.predictor, self.screen)
        if self.predictor != "none" and self.sampler == "nsga2":
            raise ConfigError(f"predictor={self.predictor!r} predicts one objective; sampler='nsga2' optimises two: "
                              "set predictor='none' or another sampler")
        unknown = set(self.warm_start) - set(WARM_STARTS)
        if unknown:
            raise ConfigError(f"warm_start={self.warm_start!r}: {sorted(unknown)} unknown; choose from {', '.join(WARM_STARTS)}")


def make_sampler(name: str, seed: int):
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


class OptunaStudy(Searcher):
    """The `optuna` method: ask/tell over an Optuna study in storage."""

    name = "optuna"
    Options = StudyOptions

    def __init__(self, problem: Problem, *, seed: int, **options) -> None:
        super().__init__(problem, seed=seed, **options)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        o = self.options
        self.names = [u.name for u in problem.space.units]
        self.cost_metric = problem.primary
        multi = o.sampler == "nsga2"
        storage_url = o.storage or default_storage(o.study)
        self.study = optuna.create_study(
            study_name=o.study, storage=open_storage(storage_url), load_if_exists=True,
            directions=["minimize", "minimize"] if multi else ["minimize"])
        identity = {"space": problem.space.id, "limits": {m: float(v) for m, v in problem.limits.items()},
                    "seed": seed, "sampler": o.sampler, "batch": o.batch, "prune": o.prune}
        if o.predictor != "none":  # studies made before predictors existed keep their identity
            identity |= {"predictor": o.predictor, "screen": o.screen}
        if not self.study.trials and not self.study.user_attrs:
            for key, value in identity.items():
                self.study.set_user_attr(key, value)
            with warnings.catch_warnings():  # metric names are experimental in Optuna, and what dashboards show
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(["fitness", f"{self.cost_metric}_ratio"] if multi else ["fitness"])
            for source, levels in self._warm_starts():
                self.study.enqueue_trial(dict(zip(self.names, levels.tolist())), user_attrs={"warm_start": source})
        elif {k: self.study.user_attrs.get(k) for k in identity} != identity:
            differ = "; ".join(f"{k} was {self.study.user_attrs.get(k)!r}, now {v!r}" for k, v in identity.items()
                               if self.study.user_attrs.get(k) != v)
            raise ConfigError(f"study={o.study!r} in {storage_url} belongs to another search ({differ}); choose "
                              "another study name, or rerun with that search's settings to continue it")
        self._trials: list = []  # the current batch's optuna Trials, in trial order
        self._levels: list[np.ndarray] = []  # their repaired allocations
        self._stage = 0
        self._survivors: list[int] = []  # indices into the batch that go on to full fidelity
        self._pending: list[int] = []  # indices into the batch asked for in this stage, not yet asked
        self._fitness: dict[int, float] = {}  # index into the batch -> fitness told in this stage
        self._predicted: dict[int, float] = {}  # index into the batch -> its prediction, until its first score
        self.surrogate = None if o.predictor == "none" else Surrogate(o.predictor)
        self._load_best()

    # -- study bookkeeping ------------------------------------------------------------------------

    def _warm_starts(self) -> list[tuple[str, np.ndarray]]:
        found = []
        for source in self.options.warm_start:
            if source == "dp":
                levels = dp_solve(self.problem).levels
            elif source == "admm":
                levels = price_allocation(self.problem, self.problem.errors)
            else:
                levels = uniform_levels(self.problem)
            if not any(np.array_equal(levels, other) for _, other in found):
                found.append((source, np.asarray(levels, dtype=np.int64)))
        return found

    def _load_best(self) -> None:
        """Earlier runs of this study count: the best complete trial is the best so far, and the
        predictor's points, pairs and count of screened trials come from storage."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.values[0] < self.best_fitness:
                self.best_fitness, self.best_levels = t.values[0], np.array(t.user_attrs["levels"])
            if self.surrogate is not None:
                self.surrogate.add(features(self.problem.space, [t.user_attrs["levels"]]), [t.values[0]])
        if self.surrogate is None:
            return
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.user_attrs.get("screened_out"):
                self.surrogate.screened_out += 1
            elif "predicted_fitness" in t.user_attrs:  # its first score: the pruning pass's, else its value
                self.surrogate.record(t.user_attrs["predicted_fitness"],
                                      t.intermediate_values[0] if t.intermediate_values else t.values[0])

    @staticmethod
    def _measured(trials: list) -> list:
        """The trials asked and not screened out: those that count toward `trials`."""
        return [t for t in trials if t.state != TrialState.WAITING and not t.user_attrs.get("screened_out")]

    def _finished(self) -> int:
        return len(self._measured(self.study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))))

    def _next_batch(self) -> None:
        """The next batch: the trials a killed run left RUNNING first (completed to their whole batch
        with the batch's own sampler), else new ones."""
        o = self.options
        trials = self.study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        measured = self._measured(trials)
        if not running and len(measured) >= o.trials:
            self._trials = []
            return
        first_open = running[0].number if running else math.inf
        k = sum(t.number < first_open for t in measured) // o.batch  # batches measured before this one
        self.study.sampler = make_sampler(o.sampler, int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0]))
        self._trials = [optuna.trial.Trial(self.study, t._trial_id) for t in running]
        missing = min((k + 1) * o.batch, o.trials) - len(measured)
        if missing > 0 and not running and self.surrogate is not None and self.surrogate.ready:
            self._trials += self._screened(missing)
        else:
            self._trials += [self.study.ask() for _ in range(missing)]
        self._levels = [self._prepare(t) for t in self._trials]
        if self.surrogate is not None:  # kept by the screen, in this run or in a killed one
            self._predicted = {i: t.user_attrs["predicted_fitness"] for i, t in enumerate(self._trials)
                               if "predicted_fitness" in t.user_attrs}
        # a batch whose first pass was scored (and its losers pruned) before a kill goes on to full fidelity
        first_pass_done = running and all(t.intermediate_values for t in running) and len(running) == len(self._trials)
        self._stage = 1 if o.prune is None or first_pass_done else 0
        self._survivors = list(range(len(self._trials))) if self._stage == 1 else []
        self._pending, self._fitness = self._stage_members(), {}

    def _screened(self, count: int) -> list:
        """Ask `screen * count` trials; return the `count` of best predicted fitness (in trial order) and
        tell the others PRUNED, screened out."""
        asked = [self.study.ask() for _ in range(count * self.options.screen)]
        kept, predicted = self.surrogate.screen(features(self.problem.space, [self._prepare(t) for t in asked]), count)
        kept = set(kept)
        for i, trial in enumerate(asked):
            trial.set_user_attr("predicted_fitness", float(predicted[i]))
            if i not in kept:
                trial.set_user_attr("screened_out", True)
                self.study.tell(trial, state=TrialState.PRUNED)
        return [trial for i, trial in enumerate(asked) if i in kept]

    def _stage_members(self) -> list[int]:
        return list(range(len(self._trials))) if self._stage == 0 else list(self._survivors)

    def _prepare(self, trial) -> np.ndarray:
        """Sample (or re-read) a trial's levels; repair them; record costs and the constraint."""
        problem = self.problem
        sampled = np.array([trial.suggest_int(name, 0, int(n) - 1)
                            for name, n in zip(self.names, problem.space.n_levels)])
        repaired = repair(problem, sampled, problem.errors)
        if "levels" not in trial.user_attrs:
            total = problem.costs.total(sampled)
            excess = max(total[m] / limit - 1 for m, limit in problem.limits.items())
            trial.set_constraint("budget", excess)
            ratios = problem.costs.ratios(repaired)
            trial.set_user_attr("levels", repaired.tolist())
            trial.set_user_attr("repaired", bool(excess > 0))
            trial.set_user_attr("allocation", problem.space.allocation_dict(repaired))
            trial.set_user_attr("costs", {f"{m}_ratio": ratios[m] for m in ratios})
        return repaired

    # -- ask / tell ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        if self._trials:
            return False
        trials = self.study.get_trials(deepcopy=False)
        running = any(t.state == TrialState.RUNNING for t in trials)
        return not running and len(self._measured(trials)) >= self.options.trials

    @property
    def fidelity(self) -> float:
        return self.options.prune if self._stage == 0 else 1.0

    def progress(self) -> tuple[int, int, dict]:
        return self._finished(), self.options.trials, {"best": f"{self.best_fitness:.5g}"}

    def summary(self) -> dict:
        return screening_summary(self.surrogate)

    def ask(self, n: int) -> list[np.ndarray]:
        """Up to `n` allocations of the current batch's stage; a new batch is begun when none is open."""
        if not self._trials:
            if self.done:
                return []
            self._next_batch()
        asked, self._pending = self._pending[:n], self._pending[n:]
        return [self._levels[i] for i in asked]

    def tell(self, allocations: list[np.ndarray], fitnesses: list[float]) -> None:
        told = self._stage_members()[len(self._fitness):len(self._fitness) + len(fitnesses)]
        self._fitness.update(zip(told, (float(f) for f in fitnesses)))
        for i, fitness in zip(told, fitnesses):
            if i in self._predicted:
                self.surrogate.record(self._predicted.pop(i), fitness)
        if self._stage == 1:
            super().tell(allocations, fitnesses)
            if self.surrogate is not None:
                self.surrogate.add(features(self.problem.space, allocations), fitnesses)
        if len(self._fitness) < len(self._stage_members()):
            return  # the rest of this stage is still to be asked
        if self._stage == 0:  # first pass on few tokens: report, keep the best share, prune the rest
            scores = [self._fitness[i] for i in range(len(self._trials))]
            for trial, fitness in zip(self._trials, scores):
                trial.report(fitness, step=0)
            kept = math.ceil(self.options.keep * len(self._trials))
            ranked = sorted(range(len(self._trials)), key=lambda i: (scores[i], i))
            self._survivors = sorted(ranked[:kept])
            for i in ranked[kept:]:
                self.study.tell(self._trials[i], state=TrialState.PRUNED)
            self._stage = 1
            self._pending, self._fitness = self._stage_members(), {}
            return
        for i in self._survivors:
            values = [self._fitness[i]]
            if self.options.sampler == "nsga2":
                values.append(self.problem.costs.ratios(self._levels[i])[self.cost_metric])
            self.study.tell(self._trials[i], values)
        self._trials, self._levels, self._survivors, self._fitness = [], [], [], {}
        if self.surrogate is not None:
            log.info("%d trials measured: predictor %s %s, %d screened out", self._finished(),
                     self.options.predictor, self.surrogate.correlation(), self.surrogate.screened_out)

    def finish(self, result: Result) -> None:
        """Record the best allocation and its held-out score on the study (trials are closed by now)."""
        if self.best_levels is not None:
            self.study.set_user_attr("best_levels", np.asarray(self.best_levels).tolist())
            self.study.set_user_attr("best_fitness", float(self.best_fitness))
            if result.heldout is not None:
                self.study.set_user_attr("best_heldout", float(result.heldout))
                self.study.set_user_attr("dense_heldout", float(result.dense_heldout))
