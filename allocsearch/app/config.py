"""`RunConfig`: every setting that shapes a run but the budget, method and seed; saved with each result.

It is flat on purpose: each field is one keyword of `search()` and one CLI flag, and a result's
`config` is this dataclass as a dict. The model-layer configurations are read from it
(`supernet_config()`, `evaluator_config()`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..core.space import GRANULARITIES, LevelGrid
from ..errors import ConfigError, InputFileError
from ..model._torch import available_cores
from ..model.evaluator import EvaluatorConfig, check_objective
from ..model.pruners import CRITERIA
from ..model.spec import load_spec
from ..model.supernet import SupernetConfig
from .tables import check_table

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_cache_dir() -> Path:
    """`$ALLOCSEARCH_CACHE`, else `~/.cache/allocsearch`."""
    return Path(os.environ.get("ALLOCSEARCH_CACHE") or Path.home() / ".cache" / "allocsearch")


def device_problem(device: str) -> str | None:
    """Why this machine's torch cannot use `device` (`auto`, `cpu`, `cuda`, `cuda:1`, ...); None when it can.

    For example::

        device_problem("cpu")  # None
        device_problem("cuda")  # "this machine's torch has no cuda device" on a CPU-only build
    """
    if device == "auto":
        return None
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return "it is not a torch device"
    if kind.type == "cpu":
        return None
    backend = torch.backends.mps if kind.type == "mps" else getattr(torch, kind.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        built = kind.type != "cuda" or torch.backends.cuda.is_built()
        return f"this machine's torch has no {kind.type} device{'' if built else ' (it is built without CUDA)'}"
    count = getattr(backend, "device_count", lambda: 1)()
    if kind.index is not None and kind.index >= count:
        return f"this machine has {count} {kind.type} device(s), numbered from 0"
    return None


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run but the budget, method and seed.

    Args:
        model: hub id or local directory; None uses the embedded default model.
        granularity: `structured` (heads and channels) or `unstructured` (weights of each layer).
        space: a family name or a YAML file; None picks the family from the model's type.
        criterion: `magnitude`, `wanda` or `lsq`; None: `lsq` structured, `wanda` unstructured.
        grid_step, max_level, channel_multiple: the level grid (see `LevelGrid`).
        fit: an export format every level must have the shapes of: `decilm` (NVIDIA's Nemotron-NAS,
            which vLLM loads) keeps attention whole or removes it, and MLP widths on multiples of
            256; Llama and Mistral models only. None: any shape. It changes the space and its id.
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
        objective: what fitness measures: `kl` or `topk_kl` for language models, `nmse`, `pooled` or
            `cls` for encoders (see `allocsearch.model.evaluator`); None: the task's default
            (`DEFAULT_OBJECTIVE`).
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
    fit: str | None = None
    calib: str | None = None
    heldout: str | None = None
    calib_sequences: int = 128
    heldout_sequences: int = 128
    seq_len: int = 128
    build_sequences: int | None = None
    calib_from: float | None = None
    damp: float = 0.01
    objective: str | None = None
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
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r} must be one of {', '.join(GRANULARITIES)}")
        if self.criterion is not None and self.criterion not in CRITERIA:
            raise ConfigError(f"criterion={self.criterion!r} is unknown; choose one of {', '.join(CRITERIA)}, "
                              "or None for the default")
        problem = device_problem(self.device)
        if problem is not None:
            raise ConfigError(f"device={self.device!r}: {problem}; use auto (a GPU when there is one) or cpu")
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
        if not (isinstance(self.damp, (int, float)) and math.isfinite(self.damp) and self.damp >= 0):
            raise ConfigError(f"damp={self.damp!r} must be a finite number >= 0, e.g. 0.01")
        self.supernet_config()  # checks calib_from
        check_table(self.table, self.table_fidelity)
        check_objective(self.objective)  # against every task's; the Session checks the model's task
        self.grid()  # checks the grid fields
        if self.space is not None:
            load_spec(self.space, None)  # a known family, or a readable YAML file

    def check_files(self) -> None:
        """Refuse missing text files (`calib`, `heldout`) before any model is loaded; a search calls it.

        For example::

            RunConfig(calib="notes.txt").check_files()  # InputFileError when notes.txt is missing
        """
        for name in ("calib", "heldout"):
            path = getattr(self, name)
            if path is not None and not Path(path).expanduser().is_file():
                raise InputFileError(f"{name}={str(path)!r}: no such file; pass a UTF-8 text file, one document "
                                     "per line")

    def grid(self) -> LevelGrid:
        return LevelGrid(self.grid_step, self.max_level, self.channel_multiple, self.fit)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def supernet_config(self) -> SupernetConfig:
        return SupernetConfig(criterion=self.criterion, damp=self.damp, calib_from=self.calib_from,
                              batch_size=self.batch_size, threads=self.threads)

    def evaluator_config(self) -> EvaluatorConfig:
        return EvaluatorConfig(threads=self.threads, objective=self.objective, topk=self.topk)


BUILD_TOKENS_PER_INPUT = 16
