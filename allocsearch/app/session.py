"""`Session`: the pieces of one run (model, space, costs, supernet, dense passes, evaluator, error
table), each built from a `RunConfig` on first use and kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .. import _io
from ..core.cost import CostModel
from ..core.space import LevelGrid, SearchSpace
from ..errors import ConfigError
from ..model._modules import get_module, linear_shape
from ..model._torch import weights_hash
from ..model.blockwise import Blockwise
from ..model.build import costs_from_model, space_from_model
from ..model.compose import Composer
from ..model.data import builtin_documents, read_documents, token_windows
from ..model.default_model import default_model_dir
from ..model.dense import DensePass
from ..model.evaluator import Evaluator, check_objective
from ..model.export import write_pruned
from ..model.loading import load_model, load_tokenizer
from ..model.signals import (
    block_angles,
    layer_inputs,
    outlier_ratios,
    require_structured,
    wanda_median,
    wifv,
    zeroth_order,
)
from ..model.supernet import Supernet
from .config import BUILD_TOKENS_PER_INPUT, DTYPES, RunConfig, default_cache_dir
from .runners import InProcessRunner, Runner
from .stages import stage
from .tables import error_table, proxy_table

log = logging.getLogger(__name__)
TABLE_FORMAT = 2  # of a cached error table: an .npz whose array checksums read_npz checks


class Session:
    """The pieces of one run, each built on first use and kept.

    The pieces that read the dense model (its weights' hash, the costs, the dense passes) are read
    before the composer is made, since the composer changes the model in place (`_read_dense`).

    For example::

        session = Session(RunConfig(granularity="structured"))
        session.space.n_units, session.costs.dense["flops"]  # 12, 2.4e6
    """

    # Built once per model, shared by the sessions of its other grids (`on_grid`).
    SHARED = ("cache_dir", "model_path", "device", "model", "weights_key", "tokenizer", "seq_len", "calib_tokens",
              "heldout_tokens", "build_tokens", "calib_pass", "heldout_pass")

    def __init__(self, config: RunConfig = RunConfig(), *, progress: bool = True) -> None:
        self.config, self.progress = config, progress
        self.stages: dict[str, dict] = {}  # stage -> {seconds, peak_mb}
        self.signals: dict[str, np.ndarray] = {}  # name -> a measured signal, shared with `on_grid` sessions

    @cached_property
    def cache_dir(self) -> Path:
        return Path(self.config.cache_dir).expanduser() if self.config.cache_dir else default_cache_dir()

    @cached_property
    def model_path(self) -> str:
        if self.config.model is not None:
            return self.config.model
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
        return space_from_model(self.model, granularity=self.config.granularity, space=self.config.space,
                                grid=self.config.grid())

    @cached_property
    def seq_len(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)
        if limit is not None and self.config.seq_len > limit:
            raise ConfigError(f"seq_len={self.config.seq_len} exceeds the model's {limit} positions; lower it")
        return self.config.seq_len

    @cached_property
    def costs(self) -> CostModel:
        return costs_from_model(self.model, self.space, seq_len=self.seq_len)

    def _tokens(self, path: str | None, split: str, count: int, argument: str) -> torch.Tensor:
        documents = read_documents(path, argument=argument) if path else builtin_documents(split)
        return token_windows(documents, self.tokenizer, seq_len=self.seq_len, count=count,
                             encoder=self.space.task == "encoder", argument=argument)

    @cached_property
    def calib_tokens(self) -> torch.Tensor:
        return self._tokens(self.config.calib, "calib", self.config.calib_sequences, "calib")

    @cached_property
    def heldout_tokens(self) -> torch.Tensor:
        return self._tokens(self.config.heldout, "heldout", self.config.heldout_sequences, "heldout")

    @cached_property
    def build_tokens(self) -> torch.Tensor:
        """The calibration windows the supernet build learns from (see `RunConfig.build_sequences`)."""
        widest = max((linear_shape(get_module(self.model, u.consumer.module))[1]
                      for u in self.space.units if u.consumer is not None), default=0)
        count = self.config.build_sequences
        if count is None:
            count = max(self.config.calib_sequences, math.ceil(BUILD_TOKENS_PER_INPUT * widest / self.seq_len))
        tokens = self._tokens(self.config.calib, "calib", count, "calib")
        if tokens.numel() < 2 * widest:
            log.warning("the build learns from %d tokens, fewer than twice the %d inputs of the widest output "
                        "projection, so its refits fit the calibration text closely; give more text (calib=) "
                        "or more build_sequences=", tokens.numel(), widest)
        return tokens

    @cached_property
    def supernet(self) -> Supernet:
        _ = self.costs, self.weights_key  # read the dense model before the build composes it
        with stage(self.stages, "build", self.device):
            return Supernet.build_or_load(self.model, self.space, self.build_tokens.to(self.device),
                                          cache_dir=self.cache_dir, config=self.config.supernet_config(),
                                          progress=self.progress, weights=self.weights_key)

    def _read_dense(self) -> None:
        """Build everything that reads the dense model, before the composer may change it."""
        _ = self.costs, self.supernet, self.calib_pass, self.heldout_pass

    @cached_property
    def composer(self) -> Composer:
        """Changes the model in place (see `_read_dense`)."""
        self._read_dense()
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

    def on_grid(self, counts: list[list[int]], grid: LevelGrid) -> Session:
        """The session of another grid of the same model: `counts[u]` removed groups per level of unit
        u (a coarse-to-fine round's, or a saved one). It shares the loaded model and data; the model is
        left dense first, and from then on only the new session may change it. The same grid: this
        session."""
        if self.space.counts == [list(c) for c in counts] and grid == self.space.grid:
            return self
        if "composer" in self.__dict__:
            self.composer.apply(np.zeros(self.space.n_units, dtype=int))
        child = Session(self.config, progress=self.progress)
        child.__dict__.update({name: self.__dict__[name] for name in self.SHARED if name in self.__dict__})
        child.__dict__["space"] = self.space.with_counts(counts, grid)
        child.stages, child.signals = self.stages, self.signals
        return child

    def signal(self, name: str) -> np.ndarray:
        """A signal of the dense model on the calibration tokens (see `allocsearch.core.problem.SIGNALS`),
        measured on first use and kept.

        One pass of layer-input statistics gives `outlier_ratios`, `wanda_median` and (structured
        spaces) `wifv` together; `zeroth_order` runs on the first max(1, ceil(0.125 x calibration
        batches)) batches of the calibration pass.
        """
        if name not in self.signals:
            self.composer.apply(np.zeros(self.space.n_units, dtype=int))
            model, space, tokens, threads = self.model, self.space, self.calib_tokens, self.config.threads
            if name in ("outlier_ratios", "wanda_median", "wifv"):
                if name == "wifv":
                    require_structured(space)
                stats = layer_inputs(model, space, tokens, batch_size=self.config.batch_size, threads=threads)
                self.signals["outlier_ratios"] = outlier_ratios(model, space, stats)
                self.signals["wanda_median"] = wanda_median(model, space, stats)
                if space.granularity == "structured":
                    self.signals["wifv"] = wifv(model, space, stats)
            elif name == "block_angles":
                self.signals[name] = block_angles(model, space, tokens, batch_size=self.config.batch_size,
                                                  threads=threads)
            elif name == "zeroth_order":
                batches = max(1, math.ceil(0.125 * self.calib_pass.n_batches))
                self.signals[name] = zeroth_order(model, space, tokens, self.calib_pass, batches=batches,
                                                  threads=threads)
            else:
                raise ConfigError(f"signal {name!r} is unknown; the signals are outlier_ratios, wanda_median, "
                                  "wifv, block_angles and zeroth_order")
        return self.signals[name]

    @cached_property
    def evaluator(self) -> Evaluator:
        return Evaluator(self.composer, self.calib_pass, self.calib_tokens, self.heldout_pass, self.heldout_tokens,
                         config=self.config.evaluator_config())

    def export(self, levels: np.ndarray, out_dir: str | Path, result=None, *, export_format: str = "hf") -> Path:
        """Write the model pruned to `levels` to `out_dir` in `export_format` (see `allocsearch.model.export`)."""
        return write_pruned(self.composer, self.costs, self.tokenizer, levels, out_dir, result,
                            export_format=export_format)

    def table_key(self) -> str:
        """What an error table depends on: the supernet, the calibration pass, the kind, its fidelity and
        the objective its cells measure."""
        kind, fidelity = self.config.table, self.config.table_fidelity
        parts = [self.supernet.key, self.calib_pass.manifest["key"], kind, None if kind == "exact" else fidelity,
                 check_objective(self.config.objective, self.space.task)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def error_table(self, runner: Runner | None = None) -> np.ndarray:
        """`E[u, k]` of the configured kind (see `allocsearch.tables`), cached.  # (units, max_levels)"""
        path = self.cache_dir / "tables" / f"{self.table_key()}.npz"
        table = _read_table(path)
        if table is not None:
            log.info("error table read from %s", path)
            return table
        with _io.locked(path):  # a second process on the same table waits, then reads the first one's
            table = _read_table(path, quiet=True)
            if table is None:
                table = self._measure_table(runner)
                _io.write_npz(path, {"format": TABLE_FORMAT, "kind": self.config.table}, {"table": table})
        return table

    def _measure_table(self, runner: Runner | None) -> np.ndarray:
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
        return table


def _read_table(path: Path, quiet: bool = False) -> np.ndarray | None:
    """A cached table that verifies (see `_io.read_npz`), else None: a corrupt one is measured again."""
    if not path.is_file():
        return None
    try:
        meta, arrays = _io.read_npz(path)
        if meta.get("format") == TABLE_FORMAT:
            return arrays["table"]
    except (OSError, ValueError, KeyError):
        pass
    if not quiet:
        log.warning("error table %s is corrupt or of an older format; measuring it again", path)
    return None
