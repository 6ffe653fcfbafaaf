"""Scoring candidates against the dense model.

- fitness (lower is better), on calibration tokens: KL(dense || candidate) per token for language
  models; ||h - h_dense||^2 / ||h_dense||^2 of the final hidden states for encoders.
- held-out scores, on held-out tokens: the same distortion (KL or NMSE), and perplexity for
  language models (lower is better) or the mean cosine of mean-pooled embeddings to the dense
  model's for encoders (higher is better). Calibration and held-out distortion side by side show
  how much a search fits its calibration text.

The dense model's pass over the calibration tokens is computed once (`DensePass`): its reference
scores and the input of every block. A candidate runs from its first pruned block only, on the
dense input of that block. Two more shortcuts give the same numbers as a fresh evaluation:

- a batch's score is remembered per (allocation, batch), so raising a candidate's fidelity
  (multi-step selection) scores only the batches it has not been scored on;
- the block inputs of the best candidate scored at full fidelity (on its first batches, within
  `anchor_memory`) are kept: a candidate that matches it up to block l starts there (the offspring
  of an evolution parent).

Batches are fixed (batch i is sequences [i * batch_size, (i + 1) * batch_size)); `fidelity` in (0, 1]
scores on the first share of them, rounded up to whole batches. Every forward runs with a fixed torch
thread count, so scores do not depend on the machine's cores or on which shortcut was taken.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ._torch import torch_threads
from .blockwise import Blockwise
from .compose import Composer
from .dense import DensePass, kl_to_reference, next_tokens, token_chunks

MEMO_ENTRIES = 200_000  # remembered batch scores


@dataclass(frozen=True)
class EvaluatorConfig:
    """Args:
        threads: torch threads for every forward.
        anchor_memory: bytes of block inputs kept for the best full-fidelity candidate; None: a quarter
            of the model's weights.
    """

    threads: int = 1
    anchor_memory: int | None = None


@dataclass(frozen=True)
class HeldOut:
    """Held-out scores of one allocation: `score` is perplexity (language models) or embedding cosine
    to dense (encoders); `fitness` the distortion to dense on held-out tokens (KL or NMSE), and
    `batches` that distortion on each held-out batch (its spread is the held-out score's noise)."""

    score: float
    fitness: float
    batches: tuple[float, ...] = ()


class _Anchor:
    """The block inputs of one candidate for its first batches, from its first pruned block on."""

    def __init__(self, levels: np.ndarray, fitness: float, start: int) -> None:
        self.levels, self.fitness, self.start = levels, fitness, start
        self.states: dict[int, list[torch.Tensor]] = {}  # batch -> inputs of blocks start..L-1


class Evaluator:
    """Composes candidates on a model and scores them.

    For example::

        evaluator = Evaluator(composer, calib_pass, calib_tokens, heldout_pass, heldout_tokens)
        evaluator.fitness(levels)           # KL to the dense model, per token
        # 0.0412
        evaluator.heldout(levels)           # held-out perplexity and KL
        # HeldOut(score=6.31, fitness=0.0433)
    """

    def __init__(self, composer: Composer, calib_pass: DensePass, calib: torch.Tensor,
                 heldout_pass: DensePass | None = None, heldout: torch.Tensor | None = None, *,
                 config: EvaluatorConfig = EvaluatorConfig()) -> None:
        self.composer, self.config = composer, config
        self.space, self.model = composer.space, composer.model
        self.blockwise = Blockwise(self.model, self.space)
        self.task = self.space.task
        self.calib_pass, self.heldout_pass = calib_pass, heldout_pass
        self.calib, self.heldout_tokens = calib, heldout
        self.batch_size = calib_pass.batch_size
        self.evaluations = 0
        self._unit_block = np.array([u.block for u in self.space.units])
        self._memo: OrderedDict[tuple[bytes, int], tuple[float, float]] = OrderedDict()
        self._anchor: _Anchor | None = None
        self._held: tuple[bytes, HeldOut] | None = None
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self._state_bytes = next(self.model.parameters()).element_size()
        self._anchor_bytes = config.anchor_memory if config.anchor_memory is not None else weights // 4
        self.dense_heldout = heldout_pass.dense_score if heldout_pass is not None else None

    @property
    def n_batches(self) -> int:
        return self.calib_pass.n_batches

    def batches_at(self, fidelity: float) -> int:
        """Calibration batches scored at `fidelity`: its share of them, rounded up."""
        if not 0 < fidelity <= 1:
            raise ConfigError(f"fidelity={fidelity!r} must lie in (0, 1]; 1 uses every calibration token")
        return max(1, math.ceil(fidelity * self.n_batches - 1e-9))

    def compose(self, levels: np.ndarray) -> torch.nn.Module:
        """The model, brought to the allocation `levels`."""
        self.composer.apply(levels)
        return self.model

    def first_block(self, levels: np.ndarray, other: np.ndarray | None = None) -> int:
        """The first block holding a unit whose level differs from `other` (default: dense), or L."""
        differs = levels != (0 if other is None else other)
        return int(self._unit_block[differs].min()) if differs.any() else self.blockwise.n_blocks

    def fitness(self, levels: np.ndarray, fidelity: float = 1.0) -> float:
        """Distortion of the candidate on the first `fidelity` share of the calibration batches."""
        levels = np.asarray(levels, dtype=np.int64)
        n = self.batches_at(fidelity)
        self.compose(levels)
        key = levels.tobytes()
        start = min(self.first_block(levels), self.blockwise.n_blocks - 1)
        record = None
        if fidelity >= 1.0 and start < self.blockwise.n_blocks - 1:
            record = _Anchor(levels.copy(), np.inf, start)
        total = weight = 0.0
        with torch.no_grad(), torch_threads(self.config.threads):
            for i in range(n):
                scores = self._memo.get((key, i))
                if scores is None:
                    scores = self._score_batch(levels, i, start, record)
                    self._remember((key, i), scores)
                else:
                    self._memo.move_to_end((key, i))
                total, weight = total + scores[0], weight + scores[1]
            value = total / weight
            if record is not None and value < (self._anchor.fitness if self._anchor else np.inf):
                self._promote(record, value)
        self.evaluations += 1
        return value

    def _promote(self, record: _Anchor, value: float) -> None:
        """Make a new best candidate the anchor, its first batches' block inputs complete: a batch
        scored before (at a lower fidelity) runs once more to give them."""
        first = self.calib[: self.batch_size]
        for i in range(self.n_batches):
            if i not in record.states:
                if not self._may_record(i, record.start, first):
                    break
                self._score_batch(record.levels, i, record.start, record)
        if record.states:
            record.fitness, self._anchor = value, record

    def _remember(self, key: tuple[bytes, int], scores: tuple[float, float]) -> None:
        self._memo[key] = scores
        if len(self._memo) > MEMO_ENTRIES:
            self._memo.popitem(last=False)

    def _score_batch(self, levels: np.ndarray, i: int, start: int, record: _Anchor | None) -> tuple[float, float]:
        """(summed distortion, its weight) of calibration batch i for the composed candidate."""
        batch = self.calib[i * self.batch_size : (i + 1) * self.batch_size]
        inputs = self.blockwise.embed(batch)
        hidden, begin = self._start_state(levels, i, start, inputs)
        states = [] if record is not None and self._may_record(i, start, batch) else None
        if states is not None and begin > start:  # the anchor's own inputs cover blocks start..begin-1
            states += self._anchor.states[i][: begin - start]
        hidden = self.blockwise.final(self.blockwise.run(hidden, inputs, begin, states=states))
        if states is not None:
            record.states[i] = states
        reference = self.calib_pass.reference(i)
        if self.task == "causal_lm":
            kl, count, _ = self._lm_scores(hidden, reference, None)
            return kl, count
        ref = reference["hidden"].to(hidden.device)
        return float(((hidden.float() - ref) ** 2).double().sum()), float((ref.double() ** 2).sum())

    def _start_state(self, levels: np.ndarray, i: int, start: int, inputs) -> tuple[torch.Tensor, int]:
        """Where batch i of the candidate starts: the anchor's input of the first block where they
        differ, when it has one past `start`; else the dense input of `start`."""
        anchor = self._anchor
        if anchor is not None and i in anchor.states:
            begin = min(self.first_block(levels, anchor.levels), self.blockwise.n_blocks - 1)
            if begin > max(start, anchor.start):
                return anchor.states[i][begin - anchor.start], begin
        if start == 0:
            return inputs.hidden, 0
        return self.calib_pass.block_input(start, i).to(inputs.hidden.device), start

    def _may_record(self, i: int, start: int, batch: torch.Tensor) -> bool:
        """Whether batch i's block inputs, and those of every batch before it, fit in `anchor_memory`."""
        hidden = self.blockwise.embed_width * batch.numel() * self._state_bytes
        return (i + 1) * (self.blockwise.n_blocks - start) * hidden <= self._anchor_bytes

    def _lm_scores(self, hidden: torch.Tensor, reference: dict, batch: torch.Tensor | None) -> tuple[float, int, float]:
        """KL to the reference summed over positions, the number of positions, and with `batch` the
        summed negative log-likelihood of its next tokens; the head runs on chunks of positions."""
        flat = hidden.reshape(-1, hidden.shape[-1])  # (tokens, hidden)
        targets = next_tokens(batch).to(flat.device) if batch is not None else None
        kl = nll = 0.0
        for chunk in token_chunks(len(flat), self.blockwise.head.out_features):
            logq = torch.log_softmax(self.blockwise.head(flat[chunk]).float(), -1)
            part = {name: r[chunk].to(logq.device) for name, r in reference.items()}
            kl += float(kl_to_reference(part, logq).double().sum())
            if targets is not None:
                target = targets[chunk]
                known = target >= 0
                nll -= float(logq[known].gather(-1, target[known][:, None]).double().sum())
        return kl, len(flat), nll

    def heldout(self, levels: np.ndarray) -> HeldOut:
        """Held-out scores of the allocation (see `HeldOut`); the last one is remembered."""
        if self.heldout_tokens is None or self.heldout_pass is None:
            raise ConfigError("this evaluator has no held-out tokens; pass heldout= to score them")
        levels = np.asarray(levels, dtype=np.int64)
        if self._held is not None and self._held[0] == levels.tobytes():
            return self._held[1]
        self.compose(levels)
        lm = self.task == "causal_lm"
        distortion = weight = score = 0.0
        count = 0
        per_batch = []
        with torch.no_grad(), torch_threads(self.config.threads):
            for i, batch in enumerate(self.heldout_tokens.split(self.batch_size)):
                inputs = self.blockwise.embed(batch)
                hidden = self.blockwise.final(self.blockwise.run(inputs.hidden, inputs, 0))
                reference = self.heldout_pass.reference(i)
                if lm:
                    part, part_weight, nll = self._lm_scores(hidden, reference, batch)
                    score, count = score + nll, count + int((next_tokens(batch) >= 0).sum())
                else:
                    ref = reference["hidden"].to(hidden.device)
                    part = float(((hidden.float() - ref) ** 2).double().sum())
                    part_weight = float((ref.double() ** 2).sum())
                    cosine = torch.cosine_similarity(_pooled(hidden), _pooled(ref), dim=-1)
                    score, count = score + float(cosine.double().sum()), count + len(batch)
                distortion, weight = distortion + part, weight + part_weight
                per_batch.append(part / part_weight)
        held = HeldOut(math.exp(score / count) if lm else score / count, distortion / weight, tuple(per_batch))
        self._held = (levels.tobytes(), held)
        return held


def _pooled(hidden: torch.Tensor) -> torch.Tensor:
    """Mean over positions.  # (batch, hidden)"""
    return hidden.float().mean(1)
