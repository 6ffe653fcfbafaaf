"""Signals of the dense model on calibration tokens, which the model-informed allocators read.

Names and shapes are those of `allocsearch.core.problem.SIGNALS`:

- `outlier_ratios` (OWL, Yin et al. 2024), `wanda_median` (DLP, Chen et al. 2025) and `wifv` (FLAP,
  An et al. 2024) read the weights and one pass of input statistics per prunable linear layer
  (`layer_inputs`), shared by the three;
- `block_angles` (CFSP, Wang et al. 2024): how far each block turns its hidden states;
- `zeroth_order` (ECoFLaP, Sung et al. 2024): a forward-only estimate of each block's gradient size.

Every function runs without gradients under a fixed thread count and is deterministic. The model
must be dense (a `Composer` at level 0 everywhere). Calibration windows are never padded (encoder
windows are whole CLS ... SEP windows), so every token counts; no attention mask enters a sum.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from ..core.space import SearchSpace
from ..errors import ConfigError
from ._modules import get_module, linear_weight
from ._torch import torch_threads
from .blockwise import Blockwise
from .dense import DensePass, next_tokens, token_chunks
from .pruners import LayerStats

log = logging.getLogger(__name__)


def modules_by_block(space: SearchSpace) -> list[list[str]]:
    """The prunable linear layers of each block (every `Unit.modules` path), sorted."""
    blocks = [set() for _ in range(max(u.block for u in space.units) + 1)]
    for unit in space.units:
        blocks[unit.block].update(unit.modules)
    return [sorted(paths) for paths in blocks]


def layer_inputs(model: nn.Module, space: SearchSpace, tokens: torch.Tensor, *, batch_size: int,
                 threads: int) -> dict[str, LayerStats]:
    """Sum, sum of squares and count of every prunable linear layer's inputs over `tokens`, in one pass."""
    stats = {p: LayerStats() for paths in modules_by_block(space) for p in paths}

    def hook(path):
        return lambda module, args: stats[path].add(args[0], with_gram=False)

    handles = [get_module(model, p).register_forward_pre_hook(hook(p)) for p in stats]
    blockwise = Blockwise(model, space)
    try:
        with torch.no_grad(), torch_threads(threads):
            for batch in tokens.split(batch_size):  # the blocks only: no head, no vocabulary-sized logits
                inputs = blockwise.embed(batch)
                blockwise.run(inputs.hidden, inputs, 0)
    finally:
        for h in handles:
            h.remove()
    return stats


def _wanda_scores(model: nn.Module, paths: list[str], stats: dict[str, LayerStats]) -> torch.Tensor:
    """|W_ij| * ||X_j|| of every weight of the layers `paths`, pooled.  # (weights,)"""
    with torch.no_grad():
        return torch.cat([(linear_weight(get_module(model, p)).double().abs() * stats[p].sq.sqrt()).flatten()
                          for p in paths])


def outlier_ratios(model: nn.Module, space: SearchSpace, stats: dict[str, LayerStats], *,
                   multiple: float = 5.0) -> np.ndarray:
    """OWL's D per block: the share of the block's Wanda scores above `multiple` x their mean.  # (blocks,)"""
    ratios = []
    for paths in modules_by_block(space):
        scores = _wanda_scores(model, paths, stats)  # (weights,)
        ratios.append(float((scores > multiple * scores.mean()).double().mean()))
    return np.array(ratios)


def wanda_median(model: nn.Module, space: SearchSpace, stats: dict[str, LayerStats]) -> np.ndarray:
    """DLP's per-block median of the Wanda scores |W_ij| * ||X_j|| of the block's layers.  # (blocks,)

    Taken by `numpy.median` (a selection, many times faster than torch's `kthvalue` on a CPU).
    """
    return np.array([np.median(_wanda_scores(model, paths, stats).cpu().numpy())
                     for paths in modules_by_block(space)])


def require_structured(space: SearchSpace) -> None:
    """Raise unless `space` is structured: `wifv` scores heads and channels."""
    if space.granularity != "structured":
        raise ConfigError(f"granularity={space.granularity!r}: flap's wifv scores heads and channels, which "
                          "an unstructured space has not; use granularity='structured'")


def wifv(model: nn.Module, space: SearchSpace, stats: dict[str, LayerStats]) -> np.ndarray:
    """FLAP's weighted input feature variance per group, standardised within each unit.  # (units, max groups)

    For each input channel j of a unit's output projection W: F_j * ||W_:,j||^2, F_j the variance of
    x_j over the calibration tokens (population variance, from the float64 sums). The unit's channel
    scores are z-scored (population standard deviation; all equal: all 0), and a group (head or
    channel) scores the mean of its channels. Unlike FLAP, which standardises attention and MLP
    scores jointly over the whole model, each unit is standardised on its own, as the allocators
    compare groups within a unit. NaN past a unit's groups.
    """
    require_structured(space)
    out = np.full((space.n_units, max(u.groups for u in space.units)), np.nan)
    for u, unit in enumerate(space.units):
        consumer, s = unit.consumer, stats[unit.consumer.module]
        columns = torch.from_numpy(consumer.indices(np.arange(unit.groups))).to(s.sq.device)  # (groups * width,)
        mean = s.total[columns] / s.tokens
        fluctuation = (s.sq[columns] / s.tokens - mean * mean).clamp(min=0)  # (groups * width,)
        weight = linear_weight(get_module(model, consumer.module)).detach()[:, columns]  # (out, groups * width)
        score = fluctuation * (weight.double() ** 2).sum(0)  # (groups * width,)
        std = score.std(correction=0)
        z = (score - score.mean()) / (std if std > 0 else 1)
        out[u, : unit.groups] = z.reshape(unit.groups, consumer.width).mean(1).cpu().numpy()
    return out


def block_angles(model: nn.Module, space: SearchSpace, tokens: torch.Tensor, *, batch_size: int,
                 threads: int) -> np.ndarray:
    """CFSP's per-block angle arccos(cos(x_in, x_out)) / pi, averaged over tokens, in float64.  # (blocks,)

    x_in is what the block receives, x_out what it returns (for the last block, before `final`).
    The paper sums over tokens; the mean (its sum over the token count) keeps the scores in [0, 1],
    which CFSP's sigmoid of the centred scores needs: summed over the 16k tokens of our default
    calibration set, the scores' spread saturates the sigmoid and every block's share becomes 0 or 1.
    """
    blockwise = Blockwise(model, space)
    angles = torch.zeros(blockwise.n_blocks, dtype=torch.float64)
    with torch.no_grad(), torch_threads(threads):
        for batch in tokens.split(batch_size):
            inputs = blockwise.embed(batch)
            hidden = inputs.hidden  # (batch, seq, hidden)
            for b in range(blockwise.n_blocks):
                out = blockwise.run(hidden, inputs, b, b + 1)  # (batch, seq, hidden)
                cosine = torch.cosine_similarity(hidden.double(), out.double(), dim=-1).clamp(-1, 1)  # (batch, seq)
                angles[b] += (torch.arccos(cosine) / math.pi).sum().cpu()
                hidden = out
    return angles.numpy() / tokens.numel()


def direction(shape: torch.Size, seed: int, matrix: int, batch: int) -> torch.Tensor:
    """The z ~ N(0, I) of one weight matrix and batch, drawn on the CPU from a seed derived from all three."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, matrix, batch]).generate_state(1)[0]))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def zeroth_order(model: nn.Module, space: SearchSpace, tokens: torch.Tensor, dense: DensePass, *, batches: int,
                 threads: int, eps: float = 1e-3, seed: int = 0) -> np.ndarray:
    """ECoFLaP's zeroth-order importance per block, from forward passes only.  # (blocks,)

    For every block g and each of the first `batches` batches of `tokens` (the batches of `dense`,
    the dense pass over `tokens`): g = (L(W_g + eps z) - L(W_g - eps z)) / 2 eps, where W_g is every
    prunable weight matrix of the block, each moved along its own z = `direction(...)`; the block's
    score is the sum over batches of |g|. Each perturbed loss runs the blocks from g on, starting
    from the dense pass's input there.

    The paper (and our issue) perturbs one matrix at a time and sums the matrices' |g| per block. We
    perturb a block's matrices together: the estimate of the block's gradient norm (E|g| =
    sqrt(2/pi) ||grad_g L||) instead of the sum of its matrices' norms, for a seventh of the forward
    passes on a Llama block (two suffix runs per block and batch instead of fourteen). Per matrix,
    SmolLM2-135M took an estimated 50 minutes on this project's 2-core CPU machine. L is a language model's mean next-token negative log-likelihood; an
    encoder has no loss, and its L is (our departure from the paper) the mean over tokens of
    <h, h_dense> / ||h_dense||^2 of the final hidden states, which, unlike a distance to h_dense,
    is not at a minimum at the dense point. It is stationary there all the same where the encoder
    ends in a LayerNorm of unit scale and zero shift (a freshly initialised BERT: the hidden states'
    norm is fixed and <h, h_dense> is largest at h_dense); then the estimate is float32 rounding
    noise. A trained LayerNorm's scale and shift make it non-stationary.

    The perturbation replaces the parameter by reference and puts the original object back, so the
    model's (possibly memory-mapped) weights are never written. Meant for float32 models; in a
    16-bit dtype, eps is close to the weights' resolution.
    """
    blockwise = Blockwise(model, space)
    if next(model.parameters()).dtype != torch.float32:
        log.warning("zeroth_order on a %s model: eps=%g is near its weights' resolution; use dtype='float32'",
                     next(model.parameters()).dtype, eps)
    by_block = modules_by_block(space)
    importance = np.zeros(len(by_block))
    first = np.cumsum([0] + [len(paths) for paths in by_block])  # (blocks + 1,) each block's first matrix index
    with torch.no_grad(), torch_threads(threads):
        for i, batch in enumerate(tokens.split(dense.batch_size)[:batches]):
            inputs = blockwise.embed(batch)
            reference = None if blockwise.task == "causal_lm" else dense.reference(i)["hidden"].to(inputs.hidden.device)
            for b, paths in enumerate(by_block):
                start = inputs.hidden if b == 0 else dense.block_input(b, i).to(inputs.hidden.device)
                modules = [get_module(model, path) for path in paths]
                originals = [module.weight for module in modules]
                directions = [direction(w.shape, seed, first[b] + j, i).to(w.device) for j, w in enumerate(originals)]
                losses = []
                try:
                    for sign in (1, -1):
                        for module, w, z in zip(modules, originals, directions):
                            module.weight = nn.Parameter((w.float() + sign * eps * z).to(w.dtype), requires_grad=False)
                        hidden = blockwise.final(blockwise.run(start, inputs, b))  # (batch, seq, hidden)
                        losses.append(_loss(blockwise, hidden, batch, reference))
                finally:
                    for module, w in zip(modules, originals):
                        module.weight = w
                importance[b] += abs(losses[0] - losses[1]) / (2 * eps)
    return importance


def _loss(blockwise: Blockwise, hidden: torch.Tensor, batch: torch.Tensor, reference: torch.Tensor | None) -> float:
    """The mean next-token NLL of `batch` (the head on chunks of tokens), or an encoder's mean
    <h, h_dense> / ||h_dense||^2 against `reference`, summed in float64."""
    if reference is not None:
        inner = (hidden.double() * reference.double()).sum(-1) / (reference.double() ** 2).sum(-1)  # (batch, seq)
        return float(inner.mean())
    flat = hidden.reshape(-1, hidden.shape[-1])  # (tokens, hidden)
    targets = next_tokens(batch).to(flat.device)  # (tokens,)
    nll = 0.0
    for chunk in token_chunks(len(flat), blockwise.head.out_features):
        logp = torch.log_softmax(blockwise.head(flat[chunk]).float(), -1)  # (chunk, vocab)
        target = targets[chunk]
        known = target >= 0
        nll -= float(logp[known].gather(-1, target[known][:, None]).double().sum())
    return nll / int((targets >= 0).sum())
