"""Scoring candidates against the dense model.

- fitness (lower is better), on calibration tokens: the run's objective (`OBJECTIVES`), a distortion
  to the dense model. Language models: `kl`, KL(dense || candidate) per token over next-token
  distributions, or `topk_kl`, the same KL over the dense model's top-k tokens only, both distributions
  renormalised over them. Encoders: `nmse`, ||h - h_dense||^2 / ||h_dense||^2 of the final hidden
  states; `pooled`, 1 - cosine of mean-pooled embeddings; `cls`, 1 - cosine of the first position's
  final state. The task's default is `DEFAULT_OBJECTIVE`, measured by `python -m benchmarks encoder`.
- held-out scores, on held-out tokens: the same objective, and perplexity for language models
  (lower is better) or the mean cosine of mean-pooled embeddings to the dense model's for encoders
  (higher is better). Calibration and held-out distortion side by side show how much a search fits
  its calibration text.

Every objective is a sum over a batch and a weight (tokens, squared norms or sequences), so batches
add up: a fidelity's value is the summed sums over the summed weights of its batches.

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
OBJECTIVES = {"causal_lm": ("kl", "topk_kl"), "encoder": ("nmse", "pooled", "cls")}
# Each task's default: the objective whose best allocation scored best held-out in `python -m benchmarks
# encoder` (BENCHMARKS.md, "Objectives"; structured lsq, uniform/admm/dp). all-MiniLM-L6-v2, best held-out
# 1 - pooled cosine at flops=0.5 / 0.6: cls 0.117 / 0.084, pooled 0.121 / 0.081, nmse 0.122 / 0.089.
# The default LM (a 256-token vocabulary, so top-256 is every token): kl and topk_kl tie at ppl 7.970.
DEFAULT_OBJECTIVE = {"causal_lm": "kl", "encoder": "cls"}
TOPK = 256  # the top-k of `topk_kl` where the reference keeps every probability and no topk is given


def check_objective(objective: str | None, task: str | None = None) -> str | None:
    """The objective a run of `task` minimises: `objective`, or the task's default when it is None.

    Without a task (before the model is loaded) the name is checked against every task's objectives.

    Raises:
        ConfigError: `objective` is not one of the task's (or of any task's) objectives.
    """
    choices = OBJECTIVES[task] if task is not None else tuple(o for names in OBJECTIVES.values() for o in names)
    if objective is None:
        return DEFAULT_OBJECTIVE[task] if task is not None else None
    if objective not in choices:
        kind = {"causal_lm": "a language model", "encoder": "an encoder"}.get(task, "any model")
        defaults = ", ".join(f"{name} for {t}" for t, name in DEFAULT_OBJECTIVE.items())
        raise ConfigError(f"objective={objective!r} is not an objective of {kind}; choose one of "
                          f"{', '.join(choices)}, or None for the task's default ({defaults})")
    return objective


@dataclass(frozen=True)
class EvaluatorConfig:
    """Args:
        threads: torch threads for every forward.
        anchor_memory: bytes of block inputs kept for the best full-fidelity candidate; None: a quarter
            of the model's weights.
        objective: what fitness measures (`OBJECTIVES` of the model's task); None: `DEFAULT_OBJECTIVE`.
        topk: the tokens `topk_kl` keeps where the reference holds the whole distribution (a small
            vocabulary); None: 256. Elsewhere it keeps the reference's own top-k.
    """

    threads: int = 1
    anchor_memory: int | None = None
    objective: str | None = None
    topk: int | None = None


@dataclass(frozen=True)
class HeldOut:
    """Held-out scores of one allocation: `score` is perplexity (language models) or the mean cosine of
    mean-pooled embeddings to dense (encoders); `fitness` the run's objective on held-out tokens, and
    `batches` that objective on each held-out batch (its spread is the held-out score's noise)."""

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
        evaluator.fitness(levels)           # the objective (default: KL to the dense model, per token)
        # 0.0412
        evaluator.heldout(levels)           # held-out perplexity and objective
        # HeldOut(score=6.31, fitness=0.0433)
    """

    def __init__(self, composer: Composer, calib_pass: DensePass, calib: torch.Tensor,
                 heldout_pass: DensePass | None = None, heldout: torch.Tensor | None = None, *,
                 config: EvaluatorConfig = EvaluatorConfig()) -> None:
        self.composer, self.config = composer, config
        self.space, self.model = composer.space, composer.model
        self.blockwise = Blockwise(self.model, self.space)
        self.task = self.space.task
        self.objective = check_objective(config.objective, self.task)
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
        return self._distortion(hidden, self.calib_pass.reference(i))[:2]

    def _distortion(self, hidden: torch.Tensor, reference: dict,
                    batch: torch.Tensor | None = None) -> tuple[float, float, float | None]:
        """(summed objective, its weight, the held-out score's sum) of one batch's final hidden states;
        the score's sum (summed next-token negative log-likelihood of `batch`, or 1 - pooled cosine) only
        with `batch`: calibration scoring never reads it."""
        if self.task == "causal_lm":
            return self._lm_scores(hidden, reference, batch)
        ref = reference["hidden"].to(hidden.device)
        mask = torch.ones(hidden.shape[:2], device=hidden.device)  # token_windows fills every window with text
        value, weight = encoder_distortion(self.objective, hidden, ref, mask)
        if batch is None:
            return value, weight, None
        cosine_loss = value if self.objective == "pooled" else encoder_distortion("pooled", hidden, ref, mask)[0]
        return value, weight, cosine_loss

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

    def _lm_scores(self, hidden: torch.Tensor, reference: dict,
                   batch: torch.Tensor | None) -> tuple[float, int, float | None]:
        """The objective summed over positions, the number of positions, and with `batch` the summed
        negative log-likelihood of its next tokens; the head runs on chunks of positions."""
        flat = hidden.reshape(-1, hidden.shape[-1])  # (tokens, hidden)
        targets = next_tokens(batch).to(flat.device) if batch is not None else None  # (tokens,)
        distortion, nll = 0.0, None if batch is None else 0.0
        for chunk in token_chunks(len(flat), self.blockwise.head.out_features):
            logq = torch.log_softmax(self.blockwise.head(flat[chunk]).float(), -1)  # (chunk, vocab)
            part = {name: r[chunk].to(logq.device) for name, r in reference.items()}
            if self.objective == "kl":
                distortion += float(kl_to_reference(part, logq).double().sum())
            else:
                distortion += float(topk_kl(part, logq, self.config.topk or TOPK).double().sum())
            if targets is not None:
                target = targets[chunk]
                known = target >= 0
                nll -= float(logq[known].gather(-1, target[known][:, None]).double().sum())
        return distortion, len(flat), nll

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
                part, part_weight, loss = self._distortion(hidden, self.heldout_pass.reference(i), batch)
                score += loss  # summed negative log-likelihood, or summed 1 - pooled cosine
                count += int((next_tokens(batch) >= 0).sum()) if lm else len(batch)
                distortion, weight = distortion + part, weight + part_weight
                per_batch.append(part / part_weight)
        held = HeldOut(math.exp(score / count) if lm else 1 - score / count, distortion / weight, tuple(per_batch))
        self._held = (levels.tobytes(), held)
        return held


def topk_kl(reference: dict[str, torch.Tensor], logq: torch.Tensor, k: int) -> torch.Tensor:
    """KL(dense || candidate) over the dense model's top-k tokens, both distributions renormalised over
    them: the reference's own top-k, or the top `k` where it keeps every probability.  # (tokens,)"""
    if "logp" in reference:
        values, index = reference["logp"].topk(min(k, reference["logp"].shape[-1]), dim=-1)  # (tokens, k)
    else:
        values, index = reference["values"], reference["index"].long()  # (tokens, k)
    logp = values - values.logsumexp(-1, keepdim=True)  # (tokens, k)
    logq_top = logq.gather(-1, index)
    logq_top = logq_top - logq_top.logsumexp(-1, keepdim=True)  # (tokens, k)
    return (logp.exp() * (logp - logq_top)).sum(-1)


def encoder_distortion(objective: str, hidden: torch.Tensor, reference: torch.Tensor,
                       mask: torch.Tensor) -> tuple[float, float]:
    """(summed distortion, its weight) of one batch's final hidden states `hidden` (batch, seq, width)
    to the dense model's `reference`: squared error over squared norm (`nmse`), or 1 - cosine summed
    over sequences and their count (`pooled`: of embeddings mean-pooled over `mask`; `cls`: of the
    first position's states)."""
    hidden = hidden.float()
    if objective == "nmse":
        return float(((hidden - reference) ** 2).double().sum()), float((reference.double() ** 2).sum())
    if objective == "pooled":
        a, b = pooled(hidden, mask), pooled(reference, mask)  # (batch, width)
    else:
        a, b = hidden[:, 0], reference[:, 0]  # (batch, width)
    return float((1 - torch.cosine_similarity(a, b, dim=-1)).double().sum()), float(len(hidden))


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where the attention mask (batch, seq) is 1.  # (batch, width)"""
    weights = mask.to(torch.float32)[..., None]  # (batch, seq, 1)
    return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
