"""The pipeline end to end: model -> space -> costs -> supernet -> evaluator -> searcher -> result.

`RunConfig` holds every setting that shapes a run (saved with each result); `Session` builds the
pieces lazily from it, once each; `search()` runs a searcher through a runner and returns a `Result`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from . import _io
from ._modules import get_module, linear_shape
from ._stages import stage
from ._torch import available_cores, weights_hash
from .blockwise import Blockwise
from .budget import Budget, within
from .compose import Composer
from .cost import CostModel
from .data import builtin_documents, read_documents, token_windows
from .dense import DensePass
from .errors import ConfigError
from .evaluator import Evaluator, EvaluatorConfig
from .models import load_model, load_tokenizer
from .outliers import outlier_ratios
from .result import Result
from .runners import InProcessRunner, Runner
from .run import checkpoint_seed, fingerprint, run_search
from .searchers import get_searcher
from .space import LevelGrid, SearchSpace
from .supernet import Supernet, SupernetConfig
from .tables import check_table, error_table, proxy_table


log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_cache_dir() -> Path:
    """`$ALLOCSEARCH_CACHE`, else `~/.cache/allocsearch`."""
    return Path(os.environ.get("ALLOCSEARCH_CACHE") or Path.home() / ".cache" / "allocsearch")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run but the budget, method and seed.

    Args:
        model: hub id or local directory; None uses the embedded default model.
        granularity: `structured` (heads and channels) or `unstructured` (weights of each layer).
        space: a family name or a YAML file; None picks the family from the model's type.
        criterion: `magnitude`, `wanda` or `lsq`; None: `lsq` structured, `wanda` unstructured.
        grid_step, max_level, channel_multiple: the level grid (see `LevelGrid`).
        calib, heldout: text files, one document per line; None uses the built-in text.
        calib_sequences, heldout_sequences, seq_len: how much text scores candidates, in windows of
            `seq_len` tokens; FLOPs are counted per token at `seq_len`.
        build_sequences: windows of calibration text the supernet build learns from (its statistics
            and least-squares refits); None: the calibration windows, or more where a structured
            space's widest output projection needs them: `BUILD_TOKENS_PER_INPUT` tokens per input
            column, so that every refit is well over-determined.
        calib_from: None feeds each block dense activations while building the cache; a fraction
            feeds it those of the model pruned uniformly at that level.
        damp: damping of the least-squares refit.
        table: the error table dp, admm and the Planner read: `exact`, `fast` or `proxy` (see
            `allocsearch.tables`).
        table_fidelity: the share of calibration batches a `fast` or `proxy` table's measured cells
            are scored on.
        threads: torch threads of every build and evaluation; None takes this machine's cores (the
            number is recorded: CPU results differ with it, in the last digits).
        batch_size: sequences per forward; fidelities round up to whole batches.
        topk: next-token probabilities a language model's reference keeps per position; None keeps
            the whole distribution up to a vocabulary of 4096 and the top 256 above it.
        device: `auto` (a GPU when there is one), `cpu`, `cuda`, ...
        dtype: `float32`, `bfloat16` or `float16`: the weights' type while evaluating and exporting
            (and of the block inputs and refit weights the caches hold).
        cache_dir: where caches live; None: `$ALLOCSEARCH_CACHE` or `~/.cache/allocsearch`.
    """

    model: str | None = None
    granularity: str = "structured"
    space: str | None = None
    criterion: str | None = None
    grid_step: float = 1 / 16
    max_level: float | None = None
    channel_multiple: int = 1
    calib: str | None = None
    heldout: str | None = None
    calib_sequences: int = 128
    heldout_sequences: int = 128
    seq_len: int = 128
    build_sequences: int | None = None
    calib_from: float | None = None
    damp: float = 0.01
    table: str = "proxy"
    table_fidelity: float = 1 / 16
    threads: int | None = None
    batch_size: int = 8
    topk: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} must be one of {', '.join(DTYPES)}")
        if self.threads is None:
            object.__setattr__(self, "threads", available_cores())
        for name in ("calib_sequences", "heldout_sequences", "seq_len", "threads", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        for name in ("build_sequences", "topk"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}={value!r} must be a positive integer, or None for the default")
        check_table(self.table, self.table_fidelity)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


BUILD_TOKENS_PER_INPUT = 16


class Session:
    """The pieces of one run, each built on first use and kept.

    Example:
        >>> session = Session(RunConfig(granularity="structured"))
        >>> session.space.n_units, session.costs.dense["flops"]
        (12, 2.4e6)
    """

    def __init__(self, config: RunConfig = RunConfig(), *, progress: bool = True) -> None:
        self.config, self.progress = config, progress
        self.stages: dict[str, dict] = {}  # stage -> {seconds, peak_mb}

    @cached_property
    def cache_dir(self) -> Path:
        return Path(self.config.cache_dir).expanduser() if self.config.cache_dir else default_cache_dir()

    @cached_property
    def model_path(self) -> str:
        if self.config.model is not None:
            return self.config.model
        from .default_model import default_model_dir

        return str(default_model_dir(self.cache_dir, progress=self.progress))

    @cached_property
    def device(self) -> torch.device:
        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.config.device)
        except RuntimeError:
            raise ConfigError(f"device={self.config.device!r} is not a torch device; use auto, cpu or cuda") from None

    @cached_property
    def model(self) -> torch.nn.Module:
        """The model, dense until the composer changes it."""
        model, _ = load_model(self.model_path, space=self.config.space, dtype=DTYPES[self.config.dtype])
        return model.to(self.device)

    @cached_property
    def weights_key(self) -> str:
        """A hash of the dense model's weights, taken before anything changes them."""
        return weights_hash(self.model)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.model_path)

    @cached_property
    def space(self) -> SearchSpace:
        grid = LevelGrid(self.config.grid_step, self.config.max_level, self.config.channel_multiple)
        return SearchSpace.from_model(self.model, granularity=self.config.granularity, space=self.config.space,
                                      grid=grid)

    @cached_property
    def seq_len(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)
        if limit is not None and self.config.seq_len > limit:
            raise ConfigError(f"seq_len={self.config.seq_len} exceeds the model's {limit} positions; lower it")
        return self.config.seq_len

    @cached_property
    def costs(self) -> CostModel:
        return CostModel.from_model(self.model, self.space, seq_len=self.seq_len)

    def _tokens(self, path: str | None, split: str, count: int, argument: str) -> torch.Tensor:
        documents = read_documents(path, argument=argument) if path else builtin_documents(split)
        return token_windows(documents, self.tokenizer, seq_len=self.seq_len, count=count,
                             encoder=self.space.task == "encoder", argument=argument)

    @cached_property
    def calib_tokens(self) -> torch.Tensor:
        return self._tokens(self.config.calib, "calib", self.config.calib_sequences, "--calib")

    @cached_property
    def heldout_tokens(self) -> torch.Tensor:
        return self._tokens(self.config.heldout, "heldout", self.config.heldout_sequences, "--heldout")

    @cached_property
    def build_tokens(self) -> torch.Tensor:
        """The calibration windows the supernet build learns from (see `RunConfig.build_sequences`)."""
        widest = max((linear_shape(get_module(self.model, u.consumer.module))[1]
                      for u in self.space.units if u.consumer is not None), default=0)
        count = self.config.build_sequences
        if count is None:
            count = max(self.config.calib_sequences, math.ceil(BUILD_TOKENS_PER_INPUT * widest / self.seq_len))
        tokens = self._tokens(self.config.calib, "calib", count, "--calib")
        if tokens.numel() < 2 * widest:
            log.warning("the build learns from %d tokens, fewer than twice the %d inputs of the widest output "
                        "projection, so its refits fit the calibration text closely; give more text (--calib) "
                        "or more --build-sequences", tokens.numel(), widest)
        return tokens

    @cached_property
    def supernet(self) -> Supernet:
        config = SupernetConfig(criterion=self.config.criterion, damp=self.config.damp,
                                calib_from=self.config.calib_from, batch_size=self.config.batch_size,
                                threads=self.config.threads)
        _ = self.costs, self.weights_key  # read the dense model before the build composes it
        with stage(self.stages, "build", self.device):
            return Supernet.build_or_load(self.model, self.space, self.build_tokens.to(self.device),
                                          cache_dir=self.cache_dir, config=config, progress=self.progress,
                                          weights=self.weights_key)

    @cached_property
    def composer(self) -> Composer:
        """Changes the model; what reads the dense model (costs, cache keys, dense passes) is built before it."""
        _ = self.costs, self.supernet, self.calib_pass, self.heldout_pass
        return Composer(self.model, self.space, self.supernet)

    def _dense_pass(self, tokens: torch.Tensor, *, heldout: bool) -> DensePass:
        if "composer" in self.__dict__:
            self.composer.apply(np.zeros(self.space.n_units, dtype=int))
        spec = self.space.spec
        key_parts = {"weights": self.weights_key, "task": spec["task"], "blocks": spec["blocks"],
                     "final": spec["final"], "device": self.device.type}
        with stage(self.stages, "reference", self.device):
            return DensePass.build_or_load(Blockwise(self.model, self.space), tokens, cache_dir=self.cache_dir,
                                           key_parts=key_parts, batch_size=self.config.batch_size,
                                           threads=self.config.threads, topk=self.config.topk,
                                           states=not heldout, heldout=heldout, progress=self.progress)

    @cached_property
    def calib_pass(self) -> DensePass:
        """The dense model on the calibration tokens: its reference scores and every block's input."""
        return self._dense_pass(self.calib_tokens, heldout=False)

    @cached_property
    def heldout_pass(self) -> DensePass:
        """The dense model on the held-out tokens: its reference scores and its own held-out score."""
        return self._dense_pass(self.heldout_tokens, heldout=True)

    def for_space(self, space: SearchSpace) -> Session:
        """A session on another grid of the same model (coarse-to-fine), sharing the loaded model and
        data. The model is left dense first; from then on only the new session may change it."""
        if "composer" in self.__dict__:
            self.composer.apply(np.zeros(self.space.n_units, dtype=int))
        child = Session(self.config, progress=self.progress)
        shared = ("cache_dir", "model_path", "device", "model", "weights_key", "tokenizer", "seq_len", "calib_tokens",
                  "heldout_tokens", "build_tokens", "calib_pass", "heldout_pass", "outlier_ratios")
        child.__dict__.update({name: self.__dict__[name] for name in shared if name in self.__dict__})
        child.__dict__["space"] = space
        child.stages = self.stages
        return child

    @cached_property
    def outlier_ratios(self) -> np.ndarray:
        """OWL's per-block outlier ratios on the dense model.  # (blocks,)"""
        self.composer.apply(np.zeros(self.space.n_units, dtype=int))
        return outlier_ratios(self.model, self.space, self.calib_tokens, batch_size=self.config.batch_size,
                              threads=self.config.threads)

    @cached_property
    def evaluator(self) -> Evaluator:
        config = EvaluatorConfig(threads=self.config.threads)
        return Evaluator(self.composer, self.calib_pass, self.calib_tokens, self.heldout_pass, self.heldout_tokens,
                         config=config)

    def table_key(self) -> str:
        """What an error table depends on: the supernet, the calibration pass, the kind and its fidelity."""
        kind, fidelity = self.config.table, self.config.table_fidelity
        parts = [self.supernet.key, self.calib_pass.manifest["key"], kind, None if kind == "exact" else fidelity]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def error_table(self, runner: Runner | None = None) -> np.ndarray:
        """`E[u, k]` of the configured kind (see `allocsearch.tables`), cached.  # (units, max_levels)"""
        path = self.cache_dir / "tables" / f"{self.table_key()}.npz"
        table = _read_table(path)
        if table is not None:
            log.info("error table read from %s", path)
            return table
        kind, fidelity = self.config.table, self.config.table_fidelity
        runner = runner or InProcessRunner(self.evaluator)
        with stage(self.stages, "table", self.device):
            if kind == "proxy":
                log.info("proxy error table: two measured cells per unit on %.3g of the calibration batches",
                         fidelity)
                table, _ = proxy_table(self.supernet.local_errors(), self.space.fraction_table, runner,
                                       fidelity=fidelity, progress=self.progress)
            else:
                fidelity = 1.0 if kind == "exact" else fidelity
                log.info("%s error table: %d single-unit candidates on %.3g of the calibration batches", kind,
                         int((self.space.n_levels - 1).sum()), fidelity)
                table = error_table(runner, self.space.n_levels, fidelity=fidelity, progress=self.progress)
        _io.write_npz(path, {"kind": kind, "sha256": hashlib.sha256(table.tobytes()).hexdigest()}, {"table": table})
        return table


def _read_table(path: Path) -> np.ndarray | None:
    """A cached table whose checksum matches, else None (a corrupt one is rebuilt)."""
    if not path.is_file():
        return None
    try:
        meta, arrays = _io.read_npz(path)
        table = arrays["table"]
        if hashlib.sha256(table.tobytes()).hexdigest() == meta["sha256"]:
            return table
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.warning("error table %s is corrupt; measuring it again", path)
    return None


def _checked_init(session: Session, limits: dict[str, float], init) -> np.ndarray | None:
    if init is None:
        return None
    levels = session.space.levels_from_dict(init) if isinstance(init, dict) else np.asarray(init, dtype=np.int64)
    session.space.check(levels)
    total = session.costs.total(levels)
    over = [m for m, limit in limits.items() if total[m] > limit]
    if over:
        raise ConfigError(f"init allocation exceeds the budget on {', '.join(over)}; start from one within it")
    return levels


def _draw_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**31))


def search(budget: Budget | str | list[str], *, method: str = "dp", seed: int | None = None,
           config: RunConfig | None = None, runner: Runner | Callable[[Session], Runner] | None = None,
           out: str | Path | None = None, export_dir: str | Path | None = None, progress: bool = True,
           session: Session | None = None, init: np.ndarray | dict[str, int] | None = None,
           method_options: dict | None = None, checkpoint: str | Path | None = None, resume: bool = False,
           workers: int = 1, ray_address: str | None = None, **options) -> Result:
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
        out: write the result JSON here.
        export_dir: write the pruned model here.
        session: reuse a `Session` (its config wins over `config` and `options`).
        init: a known allocation (level indices, or `{unit: level}`) to start from; it is evaluated
            first and the result is never worse than it.
        method_options: the searcher's own options (e.g. `{"generations": 100}` for evolution).
        checkpoint: write a checkpoint here at every generation boundary; removed when done.
        resume: continue from `checkpoint` when it holds this very search.

    Example:
        >>> result = allocsearch.search("flops=0.5", method="dp", seed=0)
        >>> result.cost["flops_ratio"], result.heldout
    """
    start = time.perf_counter()
    if export_dir is not None:
        from .export import check_export_dir

        check_export_dir(export_dir)
    if session is None:
        if config is not None and options:
            raise ConfigError(f"give either config= or keyword options, not both (got {sorted(options)})")
        session = Session(config or RunConfig(**options), progress=progress)
    budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
    if seed is None and resume and checkpoint and Path(checkpoint).is_file():
        seed = checkpoint_seed(Path(checkpoint))  # the drawn seed of the search being resumed
    seed = _draw_seed() if seed is None else int(seed)
    method_options = dict(method_options or {})
    searcher_class = get_searcher(method)
    limits = budget.limits(session.costs)
    init_levels = _checked_init(session, limits, init)
    if runner is None:
        from .ray_runner import runner_factory

        factory = runner_factory(workers, ray_address)
    elif hasattr(runner, "evaluate"):
        if method_options.get("rounds", 1) > 1:
            raise ConfigError("a search over refined grids (rounds > 1) needs runner= as a function of the session")
        factory = lambda s: runner  # noqa: E731
    else:
        factory = runner
    identity = fingerprint(method=method, options=method_options, seed=seed, limits=limits,
                           config=asdict(session.config), space=session.space.id,
                           init=None if init_levels is None else init_levels.tolist())
    session.stages = {}  # what this search spends; what an earlier one built is reused, not counted again
    _ = session.supernet, session.evaluator  # the build, then the dense passes: each its own stage
    outcome = run_search(session, searcher_class, limits=limits, seed=seed, options=method_options,
                         runner_factory=factory, init=init_levels,
                         checkpoint=Path(checkpoint) if checkpoint else None, resume=resume, identity=identity,
                         progress=progress)
    final = outcome.session
    if not within(final.costs, outcome.levels, limits):
        raise RuntimeError(f"searcher {method} returned an allocation outside the limits")
    with stage(session.stages, "heldout", session.device):
        result = make_result(final, method, budget, outcome.levels, outcome.fitness, seed, outcome.history,
                             time.perf_counter() - start, base=session, rounds=outcome.rounds, options=method_options)
    result.stages = dict(session.stages)
    outcome.searcher.finish(result.heldout, result.dense_heldout)
    if out is not None:
        result.save(out)
    if checkpoint and Path(checkpoint).is_file():
        os.unlink(checkpoint)  # the search is complete: nothing is left to resume
    if export_dir is not None:
        from .export import export_levels

        with stage(session.stages, "export", session.device):
            export_levels(final, outcome.levels, export_dir, result)
        result.stages = dict(session.stages)
        if out is not None:
            result.save(out)
    return result


def make_result(session: Session, method: str, budget: Budget, levels: np.ndarray, fitness: float, seed: int,
                history: list[dict], seconds: float, *, base: Session | None = None,
                rounds: list | None = None, options: dict | None = None) -> Result:
    """The result of `levels` on `session`; `base` is the session the search began on, when a later
    round moved to a refined grid (`rounds` lists every round's grid)."""
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
        options=dict(options or {}),
    )


