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

from .errors import ConfigError
from .space import Unit


@dataclass
class LayerStats:
    """Calibration statistics of one linear layer's input, accumulated over tokens (float64)."""

    tokens: int = 0
    sq: torch.Tensor | None = None  # sum of x_j^2  # (in,)
    total: torch.Tensor | None = None  # sum of x_j  # (in,)
    gram: torch.Tensor | None = None  # sum of x x^T  # (in, in); consumers of structured units only

    def add(self, x: torch.Tensor, with_gram: bool) -> None:
        x = x.reshape(-1, x.shape[-1]).double()  # (tokens, in)
        sq, total = (x * x).sum(0), x.sum(0)
        self.sq = sq if self.sq is None else self.sq + sq
        self.total = total if self.total is None else self.total + total
        if with_gram:
            gram = x.T @ x
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


def lsq_refit(weight: torch.Tensor, bias: torch.Tensor | None, stats: LayerStats, columns: np.ndarray,
              damp: float) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Least-squares refit of the kept `columns` of an output projection (and its bias).

    Minimises sum_n ||W x_n + b - (W' x_n[K] + b')||^2 + lam ||W'||^2 over the calibration inputs
    x_n, using only their Gram matrix: W' = W G[:, K] (G[K, K] + lam I)^-1, with x augmented by a
    constant 1 when there is a bias. lam = damp * mean(diag G[K, K]). Returns (out, |K|) weights
    and the new bias, in the input dtype, and the reconstruction error sum_n ||W x_n + b - W' x_n[K] - b'||^2,
    which with B = W G[:, K] is tr(W G W^T) - sum(B * W') - lam ||W'||^2 (the refit's normal equations).
    """
    w = weight.double()  # (out, in)
    gram, cols = stats.gram, torch.from_numpy(columns)
    if bias is not None:  # augment x with a constant 1: the bias is refit too
        n = gram.shape[0]
        full = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        full[:n, :n], full[:n, n], full[n, :n], full[n, n] = gram, stats.total, stats.total, stats.tokens
        gram, w = full, torch.cat([w, bias.double()[:, None]], 1)
        cols = torch.cat([cols, torch.tensor([n])])
    a = gram[cols][:, cols].clone()  # (k, k)
    n_kept = len(columns)
    if n_kept:
        lam = damp * a.diagonal()[:n_kept].mean()
        a.diagonal()[:n_kept] += lam
    b = w @ gram[:, cols]  # (out, k)
    if len(cols) == 0:
        refit = b
    else:
        refit = torch.linalg.solve(a, b.T).T  # a is symmetric
    error = float(((w @ gram) * w).sum() - (b * refit).sum())
    if n_kept:
        error -= float(lam * (refit[:, :n_kept] ** 2).sum())
    if bias is not None:
        return refit[:, :-1].to(weight.dtype), refit[:, -1].to(weight.dtype), max(error, 0.0)
    return refit.to(weight.dtype), None, max(error, 0.0)


def sliced_error(weight: torch.Tensor, stats: LayerStats, removed: np.ndarray) -> float:
    """sum_n ||W[:, R] x_n[R]||^2: what removing the input columns R of a projection changes in its
    outputs, from the Gram matrix (no refit, bias kept)."""
    if len(removed) == 0:
        return 0.0
    cols = torch.from_numpy(removed)
    w = weight.double()[:, cols]  # (out, r)
    return float(((w @ stats.gram[cols][:, cols]) * w).sum())


def output_energy(weight: torch.Tensor, bias: torch.Tensor | None, stats: LayerStats) -> float:
    """sum_n ||W x_n + b||^2 over the calibration inputs; the diagonal of the Gram alone without one."""
    w = weight.double()
    if stats.gram is None:
        energy = float((w**2 @ stats.sq).sum())
    else:
        energy = float(((w @ stats.gram) * w).sum())
    if bias is not None:
        b = bias.double()
        energy += float(2 * (b @ (w @ stats.total)) + stats.tokens * (b @ b))
    return energy


def masked_errors(weight: torch.Tensor, stats: LayerStats, removal: torch.Tensor, n_levels: int) -> np.ndarray:
    """Per level, sum_ij W_ij^2 sum_n x_nj^2 over the weights removed at or below it: the output error of
    unstructured masks with the inputs taken as uncorrelated (Wanda's own assumption).  # (levels,)"""
    contribution = weight.double() ** 2 * stats.sq[None, :]  # (out, in)
    by_level = torch.bincount(removal.long().flatten(), weights=contribution.flatten(), minlength=n_levels + 1)
    return torch.cumsum(by_level[:n_levels], 0).numpy()


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
                          "for --granularity unstructured")
    return criterion
