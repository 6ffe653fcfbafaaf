"""Local pruning criteria: each builds every level of one unit in one pass.

A criterion scores the unit's groups (structured) or weights (unstructured, per row). Scores
give ONE removal order, so the masks of all levels are nested and a single small integer per group
or weight stores them all: the index of the first level at which it is removed
(`removal_levels`); it is kept at level k while that index is above k.

- `magnitude`: squared weights (structured: of the group's rows and columns); no data needed.
- `wanda`: |W_ij| * ||X_j|| (Sun et al. 2024), X the layer's calibration inputs; structured, summed
  over the group's output-projection columns.
- `lsq` (structured only): groups ranked by the output error their removal leaves once the bias
  absorbs the mean, ||W_:j||^2 * Var(X_j) (FLAP's fluctuation score), then the kept columns of the
  output projection refit by damped least squares on the calibration activations, as FLAP, SlimGPT
  and Tyr-the-Pruner do. Each level has its own projection weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.space import Unit
from ..errors import ConfigError


@dataclass
class LayerStats:
    """Calibration statistics of one linear layer's input, accumulated over tokens (float64)."""

    tokens: int = 0
    sq: torch.Tensor | None = None  # sum of x_j^2  # (in,)
    total: torch.Tensor | None = None  # sum of x_j  # (in,)
    gram: torch.Tensor | None = None  # sum of x x^T  # (in, in); consumers of structured units only

    def add(self, x: torch.Tensor, with_gram: bool) -> None:
        x = x.reshape(-1, x.shape[-1])  # (tokens, in)
        wide = x.double()
        sq, total = (wide * wide).sum(0), wide.sum(0)
        self.sq = sq if self.sq is None else self.sq + sq
        self.total = total if self.total is None else self.total + total
        if with_gram:  # each batch's product in float32 (twice as fast), summed in float64
            narrow = x.float()
            gram = (narrow.T @ narrow).double()
            self.gram = gram if self.gram is None else self.gram + gram
        self.tokens += x.shape[0]


def removal_levels(scores: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
    """First level at which each entry is removed, lowest scores first, per row of `scores`.

    `scores` is (groups,) or (rows, groups); entries never removed get `len(counts)`.
    """
    order = torch.argsort(scores.double().cpu(), dim=-1, stable=True)  # position -> entry
    level_at_position = torch.searchsorted(torch.tensor(counts), torch.arange(scores.shape[-1]), right=True)
    levels = torch.empty_like(order)
    levels.scatter_(-1, order, level_at_position.expand_as(order).contiguous())
    return levels.to(torch.uint8 if len(counts) < 255 else torch.int16)


def _rows_cols(unit: Unit, weights: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per group: the producer rows (each slice as (groups, width, in)) and the consumer columns (groups, out, width)."""
    groups = np.arange(unit.groups)
    rows = [weights[s.module][torch.from_numpy(s.indices(groups))].reshape(unit.groups, s.width, -1)
            for s in unit.producers]
    w_out = weights[unit.consumer.module]
    cols = w_out[:, torch.from_numpy(unit.consumer.indices(groups))].reshape(w_out.shape[0], unit.groups, -1)
    return rows, cols.transpose(0, 1)


def _consumer_column_sum(unit: Unit, per_column: torch.Tensor) -> torch.Tensor:
    """Sum a per-input-column score of the output projection over each group's columns.  # (groups,)"""
    idx = torch.from_numpy(unit.consumer.indices(np.arange(unit.groups)))
    return per_column[idx].reshape(unit.groups, -1).sum(1)


def magnitude_groups(unit: Unit, weights: dict[str, torch.Tensor], stats: dict[str, LayerStats]) -> torch.Tensor:
    rows, cols = _rows_cols(unit, weights)
    return sum((r.double() ** 2).sum((1, 2)) for r in rows) + (cols.double() ** 2).sum((1, 2))


def wanda_groups(unit: Unit, weights: dict[str, torch.Tensor], stats: dict[str, LayerStats]) -> torch.Tensor:
    w_out = weights[unit.consumer.module].double()
    norms = stats[unit.consumer.module].sq.sqrt()
    return _consumer_column_sum(unit, w_out.abs().sum(0) * norms)


def lsq_groups(unit: Unit, weights: dict[str, torch.Tensor], stats: dict[str, LayerStats]) -> torch.Tensor:
    w_out = weights[unit.consumer.module].double()
    s = stats[unit.consumer.module]
    mean = s.total / s.tokens
    variance = (s.sq / s.tokens - mean**2).clamp_min(0)
    return _consumer_column_sum(unit, (w_out**2).sum(0) * variance)


def magnitude_weights(weight: torch.Tensor, stats: LayerStats | None) -> torch.Tensor:
    return weight.double() ** 2


def wanda_weights(weight: torch.Tensor, stats: LayerStats | None) -> torch.Tensor:
    return weight.double().abs() * stats.sq.sqrt()[None, :]


class LsqRefit:
    """Least-squares refits of one output projection's kept columns (and its bias), for any set of them.

    For kept columns K, minimises sum_n ||W x_n + b - (W' x_n[K] + b')||^2 + lam ||W'||^2 over the
    calibration inputs x_n, using only their Gram matrix G: W' = W G[:, K] (G[K, K] + lam I)^-1, with x
    augmented by a constant 1 when there is a bias. lam = damp * mean(diag G[K, K]). The
    reconstruction error sum_n ||W x_n + b - W' x_n[K] - b'||^2 follows from the normal equations:
    with B = W G[:, K], it is tr(W G W^T) - sum(B * W') - lam ||W'||^2. W G and tr(W G W^T) are
    computed once for all levels.

    For example::

        refit = LsqRefit(weight, bias, stats, damp=0.01)
        new_weight, new_bias, error = refit(kept_columns)
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stats: LayerStats, damp: float) -> None:
        self.dtype, self.damp, self.has_bias = weight.dtype, damp, bias is not None
        w, gram = weight.double(), stats.gram  # (out, in), (in, in)
        self.n = gram.shape[0]
        if bias is not None:  # augment x with a constant 1: the bias is refit too
            full = torch.zeros(self.n + 1, self.n + 1, dtype=torch.float64)
            full[: self.n, : self.n], full[: self.n, self.n], full[self.n, : self.n] = gram, stats.total, stats.total
            full[self.n, self.n] = stats.tokens
            gram, w = full, torch.cat([w, bias.double()[:, None]], 1)
        self.gram = gram
        self.wg = w @ gram  # (out, in [+1])
        self.energy = float((self.wg * w).sum())  # sum_n ||W x_n + b||^2

    def __call__(self, columns: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(out, |K|) weights and the new bias, in the weight's dtype, and the reconstruction error."""
        cols = torch.from_numpy(columns)
        if self.has_bias:
            cols = torch.cat([cols, torch.tensor([self.n])])
        a = self.gram[cols][:, cols]  # (k, k)
        b = self.wg[:, cols]  # (out, k)
        n_kept = len(columns)
        lam = self.damp * float(a.diagonal()[:n_kept].mean()) if n_kept else 0.0
        a.diagonal()[:n_kept] += lam
        if len(cols) == 0:
            refit = b
        else:
            factor, info = torch.linalg.cholesky_ex(a)
            refit = torch.cholesky_solve(b.T, factor).T if int(info) == 0 else torch.linalg.solve(a, b.T).T
        error = self.energy - float((b * refit).sum()) - lam * float((refit[:, :n_kept] ** 2).sum())
        if self.has_bias:
            return refit[:, :-1].to(self.dtype), refit[:, -1].to(self.dtype), max(error, 0.0)
        return refit.to(self.dtype), None, max(error, 0.0)


def sliced_error(weight: torch.Tensor, stats: LayerStats, removed: np.ndarray) -> float:
    """sum_n ||W[:, R] x_n[R]||^2: what removing the input columns R of a projection changes in its
    outputs, from the Gram matrix (no refit, bias kept)."""
    if len(removed) == 0:
        return 0.0
    cols = torch.from_numpy(removed)
    w = weight.double()[:, cols]  # (out, r)
    return float(((w @ stats.gram[cols][:, cols]) * w).sum())


def output_energy(weight: torch.Tensor, bias: torch.Tensor | None, stats: LayerStats) -> float:
    """sum_n ||W x_n + b||^2 over the calibration inputs, from their Gram matrix."""
    w = weight.double()
    energy = float(((w @ stats.gram) * w).sum())
    if bias is not None:
        b = bias.double()
        energy += float(2 * (b @ (w @ stats.total)) + stats.tokens * (b @ b))
    return energy


def masked_errors(weight: torch.Tensor, stats: LayerStats, removal: torch.Tensor, n_levels: int) -> list[float]:
    """Per level, sum_n ||(W - W_k) x_n||^2 for the unstructured mask of that level (W_k keeps the weights
    removed above it), from the Gram matrix: sum((D G) * D) with D = W * (removal <= k).  # (levels,)"""
    w, gram = weight.float(), stats.gram.float()  # float32 products, float64 sums
    errors = [0.0]
    for k in range(1, n_levels):
        removed = w * (removal <= k)  # (out, in)
        errors.append(float(((removed @ gram) * removed).double().sum()))
    return errors


@dataclass(frozen=True)
class Criterion:
    """How one criterion scores units; `reconstructs` criteria store per-level weights."""

    name: str
    group_scores: Callable | None  # structured
    weight_scores: Callable | None  # unstructured
    needs_data: bool
    reconstructs: bool = False


CRITERIA = {
    "magnitude": Criterion("magnitude", magnitude_groups, magnitude_weights, needs_data=False),
    "wanda": Criterion("wanda", wanda_groups, wanda_weights, needs_data=True),
    "lsq": Criterion("lsq", lsq_groups, None, needs_data=True, reconstructs=True),
}
DEFAULT_CRITERION = {"structured": "lsq", "unstructured": "wanda"}


def get_criterion(name: str | None, granularity: str) -> Criterion:
    """The criterion named `name` (None: the granularity's default), checked against the granularity."""
    name = name or DEFAULT_CRITERION[granularity]
    if name not in CRITERIA:
        raise ConfigError(f"criterion={name!r} is unknown; choose one of {', '.join(CRITERIA)}")
    criterion = CRITERIA[name]
    if granularity == "unstructured" and criterion.weight_scores is None:
        raise ConfigError(f"criterion={name!r} works on structured units only; use magnitude or wanda "
                          "for granularity='unstructured'")
    return criterion
