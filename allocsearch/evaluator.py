"""Scoring candidates against the dense model.

The dense reference is computed once: next-token log-probabilities for language models (the top-k
and the mass of the rest when the vocabulary is large), final hidden states for encoders.

- fitness (lower is better), on calibration tokens: KL(dense || candidate) per token for language
  models; ||h - h_dense||^2 / ||h_dense||^2 of the final hidden states for encoders.
- held-out score, on held-out tokens: perplexity for language models (lower is better); mean cosine
  similarity of mean-pooled embeddings to the dense model's for encoders (higher is better).

`fidelity` in (0, 1] scores on the first share of the calibration sequences (multi-step selection).
Every forward runs with a fixed torch thread count, so scores do not depend on the machine's cores.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ._torch import torch_threads
from .compose import Composer
from .data import tokens_hash
from .errors import ConfigError


@dataclass(frozen=True)
class EvaluatorConfig:
    """Args:
        batch_size: sequences per forward.
        threads: torch threads for every forward.
        topk: next-token probabilities kept per position for the reference; None keeps the whole
            distribution up to a vocabulary of 4096 and the top 256 above it.
    """

    batch_size: int = 16
    threads: int = 1
    topk: int | None = None


class Evaluator:
    """Composes candidates on a model and scores them.

    Example:
        >>> evaluator = Evaluator(composer, calib_tokens, heldout_tokens, task="causal_lm")
        >>> evaluator.fitness(levels)           # KL to the dense model, per token
        0.0412
        >>> evaluator.heldout(levels)           # held-out perplexity
        6.31
    """

    def __init__(self, composer: Composer, calib: torch.Tensor, heldout: torch.Tensor | None = None, *,
                 task: str, config: EvaluatorConfig = EvaluatorConfig(), key: str = "") -> None:
        self.composer, self.task, self.config = composer, task, config
        self.model = composer.model
        self.device = next(self.model.parameters()).device
        self.calib, self.heldout_tokens = calib, heldout
        self.evaluations = 0
        self.key = hashlib.sha256(json.dumps(
            [key, task, tokens_hash(calib), tokens_hash(heldout) if heldout is not None else None, asdict(config)]
        ).encode()).hexdigest()[:16]
        self.compose(np.zeros(composer.space.n_units, dtype=int))
        with torch.no_grad(), torch_threads(config.threads):
            self._reference = [self._reference_of(self._output(b)) for b in self._batches(calib)]
            self._heldout_reference = None
            if heldout is not None and task == "encoder":
                self._heldout_reference = [_pooled(self._output(b)) for b in self._batches(heldout)]
        self.dense_heldout = self.heldout(np.zeros(composer.space.n_units, dtype=int)) if heldout is not None else None

    def compose(self, levels: np.ndarray) -> torch.nn.Module:
        """The model, brought to the allocation `levels`."""
        self.composer.apply(levels)
        return self.model

    def fitness(self, levels: np.ndarray, fidelity: float = 1.0) -> float:
        """Distortion of the candidate on the first `fidelity` share of calibration sequences."""
        if not 0 < fidelity <= 1:
            raise ConfigError(f"fidelity={fidelity!r} must lie in (0, 1]; 1 uses every calibration token")
        n = max(1, math.ceil(fidelity * len(self.calib)))
        self.compose(levels)
        total = weight = 0.0
        with torch.no_grad(), torch_threads(self.config.threads):
            for batch, reference in zip(self._batches(self.calib[:n]), self._reference):
                reference = tuple(r[: len(batch)] for r in reference)
                out = self._output(batch)
                if self.task == "causal_lm":
                    total += float(_kl(reference, out).double().sum())
                    weight += out.shape[0] * out.shape[1]
                else:
                    total += float(((out - reference[0]) ** 2).double().sum())
                    weight += float((reference[0].double() ** 2).sum())
        self.evaluations += 1
        return total / weight

    def heldout(self, levels: np.ndarray) -> float:
        """Held-out perplexity (language models) or mean embedding cosine to dense (encoders)."""
        if self.heldout_tokens is None:
            raise ConfigError("this evaluator has no held-out tokens; pass heldout= to score them")
        self.compose(levels)
        total, count = 0.0, 0
        with torch.no_grad(), torch_threads(self.config.threads):
            for i, batch in enumerate(self._batches(self.heldout_tokens)):
                out = self._output(batch)
                if self.task == "causal_lm":
                    logp = torch.log_softmax(out[:, :-1].float(), -1)
                    target = batch[:, 1:].to(logp.device)
                    total -= float(logp.gather(-1, target[..., None]).double().sum())
                    count += target.numel()
                else:
                    total += float(torch.cosine_similarity(_pooled(out), self._heldout_reference[i], dim=-1).double().sum())
                    count += len(batch)
        return math.exp(total / count) if self.task == "causal_lm" else total / count

    def _batches(self, tokens: torch.Tensor):
        return tokens.split(self.config.batch_size)

    def _output(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if self.task == "causal_lm":
            return self.model(input_ids=batch, use_cache=False).logits
        return self.model(input_ids=batch).last_hidden_state

    def _reference_of(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.task != "causal_lm":
            return (out.float(),)
        logp = torch.log_softmax(out.float(), -1)  # (batch, seq, vocab)
        topk = self.config.topk or (None if logp.shape[-1] <= 4096 else 256)
        if topk is None or topk >= logp.shape[-1]:
            return (logp,)
        values, index = logp.topk(topk, dim=-1)  # (batch, seq, k)
        tail = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-6))  # (batch, seq)
        return values, index.to(torch.int32), tail


def _kl(reference: tuple[torch.Tensor, ...], logits: torch.Tensor) -> torch.Tensor:
    """KL(dense || candidate) per position.  # (batch, seq)"""
    logq = torch.log_softmax(logits.float(), -1)
    if len(reference) == 1:
        logp = reference[0]
        return (logp.exp() * (logp - logq)).sum(-1)
    values, index, tail = reference
    logq_top = logq.gather(-1, index.long())
    logq_tail = torch.log1p(-logq_top.exp().sum(-1).clamp(max=1 - 1e-6))
    return (values.exp() * (values - logq_top)).sum(-1) + tail.exp() * (tail - logq_tail)


def _pooled(hidden: torch.Tensor) -> torch.Tensor:
    """Mean over positions.  # (batch, hidden)"""
    return hidden.float().mean(1)
