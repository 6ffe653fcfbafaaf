"""optuna: an allocation search as an Optuna study, in storage that dashboards read and runs resume.

- One int parameter per unit (its level index). Samplers: `tpe` (multivariate, the default), `gp`,
  `nsga2` (two objectives, fitness and cost, for a Pareto front), `cmaes`, `random`.
- Budget: a sampled allocation that breaks a limit is repaired before evaluation (levels raised
  where the error table says they cost least per unit of cost saved, see `repair`); the sampled
  allocation's worst relative excess is recorded with `Trial.set_constraint("budget", ...)` (<= 0 is
  feasible), and the repaired allocation with its costs goes into the trial's user attributes. No
  infeasible allocation is ever evaluated.
- Warm start: the first trials of a study are the dp and admm (price decomposition) allocations, and
  uniform's when asked for.
- Batches of `batch` trials are sampled together, evaluated through the Runner and told. Batch k is
  sampled from a copy of the study in memory holding the batches before it, with a sampler seeded from
  (seed, k), and only then written to storage, each trial whole in one write (user attributes `batch`
  and `batch_size` say where it belongs). So a study is reproducible from its seed, whatever
  evaluates it, and a study killed anywhere and rerun ends trial by trial as an uninterrupted one:
  a batch a kill left part-written is sampled again and its missing trials written, running trials
  are measured (a first score already stored is not measured again) and told, and the batches after
  it are sampled as they would have been. Scores are stored as they come.
- The result's `history` and `evaluations` are the whole study's (`history()`): a rerun's result
  counts the measurements of the runs before it.
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

import importlib.util
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
        if self.sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
            raise ConfigError("sampler='cmaes' needs the cmaes package, which Optuna's CMA-ES sampler runs on: "
                              "pip install 'allocsearch[cmaes]' (or cmaes), or choose another sampler")
        for name in ("trials", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if not self.study or not isinstance(self.study, str):
            raise ConfigError(f"study={self.study!r} must be a non-empty name")
        if self.prune is not None and not 0 < self.prune < 1:
            raise ConfigError(f"prune={self.prune!r} must lie in (0, 1): the share of tokens a batch is first "
                              "scored on")
        if not 0 < self.keep <= 1:
            raise ConfigError(f"keep={self.keep!r} must lie in (0, 1]: the share of a batch that goes on to full "
                              "fidelity")
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
    with warnings.catch_warnings():  # GPSampler's deterministic_objective is experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make_sampler(name, seed)


def _make_sampler(name: str, seed: int):
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
    """The `optuna` method: ask/tell over an Optuna study in storage (see the module notes)."""

    name = "optuna"
    Options = StudyOptions

    def __init__(self, problem: Problem, *, seed: int, **options) -> None:
        super().__init__(problem, seed=seed, **options)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        o = self.options
        self.names = [u.name for u in problem.space.units]
        self.cost_metric = problem.primary
        self.multi = o.sampler == "nsga2"
        storage_url = o.storage or default_storage(o.study)
        self.study = optuna.create_study(
            study_name=o.study, storage=open_storage(storage_url), load_if_exists=True,
            sampler=make_sampler(o.sampler, seed), directions=["minimize", "minimize"] if self.multi else ["minimize"])
        identity = {"space": problem.space.id, "limits": {m: float(v) for m, v in problem.limits.items()},
                    "seed": seed, "sampler": o.sampler, "batch": o.batch, "prune": o.prune}
        if o.predictor != "none":  # studies made before predictors existed keep their identity
            identity |= {"predictor": o.predictor, "screen": o.screen}
        self._claim(identity, storage_url)
        self._trials: list = []  # the open batch's measured trials (optuna Trials), in trial order; [] when none
        self._levels: list[np.ndarray] = []  # their allocations
        self._running: set[int] = set()  # indices into the batch of the trials not told yet
        self._stage = 1  # 0: the first pass on `prune` of the tokens; 1: full fidelity
        self._pending: list[int] = []  # indices into the batch to measure in this stage, not yet asked
        self._asked: list[int] = []  # indices asked in this stage, not yet told, in order
        self._fitness: dict[int, float] = {}  # index into the batch -> this stage's score (stored ones too)
        self._predicted: dict[int, float] = {}  # index into the batch -> its prediction, until its first score
        self._outside = 0  # measurements told outside any batch: the loop's start allocation
        self._warm: list[tuple[str, np.ndarray]] | None = None  # the warm starts, made on first need
        self.surrogate = None if o.predictor == "none" else Surrogate(o.predictor)
        self._load_best()

    # -- study bookkeeping ------------------------------------------------------------------------

    def _claim(self, identity: dict, storage_url: str) -> None:
        """Record this search on a study that has no trials yet (finishing the record where a kill cut it
        short), or check that the study is this search's."""
        stored, has_trials = self.study.user_attrs, bool(self.study.get_trials(deepcopy=False))
        if any(k in stored and stored[k] != v for k, v in identity.items()) or (
                has_trials and any(k not in stored for k in identity)):
            differ = "; ".join(f"{k} was {stored.get(k)!r}, now {v!r}" for k, v in identity.items()
                               if stored.get(k) != v)
            raise ConfigError(f"study={self.options.study!r} in {storage_url} belongs to another search ({differ}); "
                              "choose another study name, or rerun with that search's settings to continue it")
        for key, value in identity.items():
            if key not in stored:
                self.study.set_user_attr(key, value)
        names = ["fitness", f"{self.cost_metric}_ratio"] if self.multi else ["fitness"]
        with warnings.catch_warnings():  # metric names are experimental in Optuna, and what dashboards show
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.study.metric_names != names:
                self.study.set_metric_names(names)

    def _warm_starts(self) -> list[tuple[str, np.ndarray]]:
        if self._warm is not None:
            return self._warm
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
        self._warm = found
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

    @staticmethod
    def _last_batch(trials: list) -> tuple[int, list]:
        """The index of the last batch in storage (-1: none yet) and its trials, in trial order."""
        k = max((t.user_attrs["batch"] for t in trials if "batch" in t.user_attrs), default=-1)
        return k, [t for t in trials if "batch" in t.user_attrs and t.user_attrs["batch"] == k]

    @staticmethod
    def _is_open(members: list) -> bool:
        """A batch is open while a kill left part of it unwritten, or a trial of it running."""
        return bool(members) and (len(members) < members[0].user_attrs["batch_size"]
                                  or any(t.state == TrialState.RUNNING for t in members))

    def _next_batch(self) -> None:
        """Open the last batch in storage where a killed run left it open, its unwritten trials written
        first (sampled again, exactly as then); else sample and write a new batch and open it."""
        trials = self.study.get_trials(deepcopy=False)
        k, members = self._last_batch(trials)
        if not self._is_open(members):
            if len(self._measured(trials)) >= self.options.trials:
                return
            k, members = k + 1, []
        if not members or len(members) < members[0].user_attrs["batch_size"]:
            self._write_batch(k, trials, members)
            members = self._last_batch(self.study.get_trials(deepcopy=False))[1]
        self._open(members)

    def _write_batch(self, k: int, trials: list, present: list) -> None:
        """Sample batch `k` and add to storage those of its trials not there yet, each in one write."""
        first = present[0].number if present else math.inf
        planned = self._sample(k, [t for t in trials if t.number < first and t.state.is_finished()])
        for stored, trial in zip(present, planned):
            if stored.params != trial.params:
                raise ConfigError(f"study={self.options.study!r}: trial {stored.number} of batch {k} is not the one "
                                  "this search samples there; another process wrote to the study. Run one search "
                                  "per study, or continue it under a new study name")
        for trial in planned[len(present):]:
            self.study.add_trial(trial)
        if self.surrogate is not None:  # sampling again screened the written ones a second time
            self.surrogate.screened_out = sum(bool(t.user_attrs.get("screened_out"))
                                              for t in self.study.get_trials(deepcopy=False))

    def _sample(self, k: int, before: list) -> list:
        """Batch `k` as a copy of the study in memory, holding `before` (the batches before it), asks it
        with a sampler seeded from (seed, k): its trials, RUNNING, or PRUNED where the predictor screened
        them out. Nothing is written to storage, so a kill here loses nothing, and sampling again gives
        the same trials."""
        o = self.options
        seed = int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0])
        copy = optuna.create_study(directions=self.study.directions, sampler=make_sampler(o.sampler, seed))
        copy.add_trials(before)
        used = {t.user_attrs.get("warm_start") for t in before}
        for source, levels in self._warm_starts():
            if source not in used:  # warm starts go first, into as many batches as they fill
                copy.enqueue_trial(dict(zip(self.names, levels.tolist())), user_attrs={"warm_start": source})
        count = min(o.batch, o.trials - len(self._measured(before)))
        screened = self.surrogate is not None and self.surrogate.ready
        asked = [copy.ask() for _ in range(count * (o.screen if screened else 1))]
        levels = [self._prepare(trial) for trial in asked]
        kept = range(len(asked))
        if screened:
            kept, predicted = self.surrogate.screen(features(self.problem.space, levels), count)
        for i, trial in enumerate(asked):
            trial.set_user_attr("batch", k)
            trial.set_user_attr("batch_size", len(asked))
            if screened:
                trial.set_user_attr("predicted_fitness", float(predicted[i]))
                if i not in kept:
                    trial.set_user_attr("screened_out", True)
                    copy.tell(trial, state=TrialState.PRUNED)
        return copy.get_trials()[len(before):]

    def _prepare(self, trial) -> np.ndarray:
        """Sample a trial's levels; repair them; record costs and the constraint."""
        problem = self.problem
        sampled = np.array([trial.suggest_int(name, 0, int(n) - 1)
                            for name, n in zip(self.names, problem.space.n_levels)])
        repaired = repair(problem, sampled, problem.errors)
        total = problem.costs.total(sampled)
        excess = max(total[m] / limit - 1 for m, limit in problem.limits.items())
        trial.set_constraint("budget", excess)
        ratios = problem.costs.ratios(repaired)
        trial.set_user_attr("levels", repaired.tolist())
        trial.set_user_attr("repaired", bool(excess > 0))
        trial.set_user_attr("allocation", problem.space.allocation_dict(repaired))
        trial.set_user_attr("costs", {f"{m}_ratio": ratios[m] for m in ratios})
        return repaired

    def _open(self, members: list) -> None:
        """Go on with the batch `members` (in trial order) from where storage says it stands: a first
        score (the trial's intermediate value) or a told trial is not measured again."""
        kept = [t for t in members if not t.user_attrs.get("screened_out")]
        self._trials = [optuna.trial.Trial(self.study, t._trial_id) for t in kept]
        self._levels = [np.array(t.user_attrs["levels"], dtype=np.int64) for t in kept]
        self._running = {i for i, t in enumerate(kept) if t.state == TrialState.RUNNING}
        self._asked, self._predicted = [], {}
        first = {i: t.intermediate_values[0] for i, t in enumerate(kept) if 0 in t.intermediate_values}
        for i in sorted(self._running):
            if self.surrogate is not None and "predicted_fitness" in kept[i].user_attrs:
                if i in first:  # its pair was made before the kill
                    self.surrogate.record(kept[i].user_attrs["predicted_fitness"], first[i])
                else:
                    self._predicted[i] = kept[i].user_attrs["predicted_fitness"]
        if self.options.prune is None:
            self._full_fidelity(sorted(self._running))
            return
        self._stage, self._fitness = 0, first
        self._pending = [i for i in range(len(kept)) if i not in first]
        if not self._pending:
            self._end_first_pass()

    def _end_first_pass(self) -> None:
        """Keep the best `keep` share of the batch by first score, tell the rest PRUNED."""
        n = len(self._trials)
        ranked = sorted(range(n), key=lambda i: (self._fitness[i], i))
        kept = math.ceil(self.options.keep * n)
        for i in ranked[kept:]:
            if i in self._running:
                self.study.tell(self._trials[i], state=TrialState.PRUNED)
                self._running.discard(i)
        self._full_fidelity([i for i in sorted(ranked[:kept]) if i in self._running])

    def _full_fidelity(self, pending: list[int]) -> None:
        self._stage, self._fitness, self._pending = 1, {}, pending
        if not pending:
            self._close_batch()

    def _close_batch(self) -> None:
        self._trials, self._levels, self._running, self._pending, self._fitness = [], [], set(), [], {}
        self._stage = 1
        if self.surrogate is not None:
            log.info("%d trials measured: predictor %s %s, %d screened out", self._finished(),
                     self.options.predictor, self.surrogate.correlation(), self.surrogate.screened_out)

    # -- ask / tell ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        if self._trials:
            return False
        trials = self.study.get_trials(deepcopy=False)
        return not self._is_open(self._last_batch(trials)[1]) and len(self._measured(trials)) >= self.options.trials

    @property
    def fidelity(self) -> float:
        return self.options.prune if self._stage == 0 else 1.0

    def progress(self) -> tuple[int, int, dict]:
        return self._finished(), self.options.trials, {"best": f"{self.best_fitness:.5g}"}

    def summary(self) -> dict:
        return screening_summary(self.surrogate)

    def ask(self, n: int) -> list[np.ndarray]:
        """Up to `n` allocations of the open batch's stage; a batch is opened when none is."""
        while not self._trials and not self.done:
            self._next_batch()
        asked, self._pending = self._pending[:n], self._pending[n:]
        self._asked += asked
        return [self._levels[i] for i in asked]

    def tell(self, allocations: list[np.ndarray], fitnesses: list[float]) -> None:
        """Store each score as it comes: a first score as the trial's intermediate value, a full one by
        telling the trial. A score told while no batch is open (the loop's start allocation) only
        competes for the best."""
        if not self._trials:
            self._outside += len(fitnesses)
            super().tell(allocations, fitnesses)
            return
        told, self._asked = self._asked[:len(fitnesses)], self._asked[len(fitnesses):]
        for i, fitness in zip(told, (float(f) for f in fitnesses)):
            self._fitness[i] = fitness
            if i in self._predicted:
                self.surrogate.record(self._predicted.pop(i), fitness)
            if self._stage == 0:
                self._trials[i].report(fitness, step=0)
                continue
            values = [fitness]
            if self.multi:
                values.append(self.problem.costs.ratios(self._levels[i])[self.cost_metric])
            self.study.tell(self._trials[i], values)
            self._running.discard(i)
        if self._stage == 1:
            super().tell(allocations, fitnesses)
            if self.surrogate is not None:
                self.surrogate.add(features(self.problem.space, allocations), fitnesses)
        if self._pending or self._asked:
            return  # the rest of this stage is still to be asked or told
        if self._stage == 0:
            self._end_first_pass()
        else:
            self._close_batch()

    def history(self) -> list[dict]:
        """Every measurement the study holds, in the order an uninterrupted run makes them: batch by
        batch, the first scores on `prune` of the tokens, then the full-fidelity ones (entries as the
        search loop's: levels, fidelity, fitness, round)."""
        batches: dict = {}
        for t in self.study.get_trials(deepcopy=False):
            batches.setdefault(t.user_attrs.get("batch", ("trial", t.number)), []).append(t)
        out = []
        for members in batches.values():
            if self.options.prune is not None:
                out += [{"levels": t.user_attrs["levels"], "fidelity": self.options.prune,
                         "fitness": t.intermediate_values[0], "round": 0}
                        for t in members if 0 in t.intermediate_values]
            out += [{"levels": t.user_attrs["levels"], "fidelity": 1.0, "fitness": t.values[0], "round": 0}
                    for t in members if t.state == TrialState.COMPLETE]
        return out

    def finish(self, result: Result) -> None:
        """Make the result's `history` and `evaluations` the whole study's (every run of it, not only this
        one), and record the best allocation and its held-out score on the study."""
        result.history = result.history[:self._outside] + self.history()
        result.evaluations = len(result.history)
        if self.best_levels is not None:
            self.study.set_user_attr("best_levels", np.asarray(self.best_levels).tolist())
            self.study.set_user_attr("best_fitness", float(self.best_fitness))
            if result.heldout is not None:
                self.study.set_user_attr("best_heldout", float(result.heldout))
                self.study.set_user_attr("dense_heldout", float(result.dense_heldout))
