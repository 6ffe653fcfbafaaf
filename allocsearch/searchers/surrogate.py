"""A predictor of fitness from an allocation, to screen candidates before measuring them (after AMQ, 2025).

Evolution and studies draw `screen` times more candidates than they measure, predict each one's
fitness and measure only the best by prediction; the rest are never measured ("screened out").

- Features: the removed fraction of every unit, `space.fractions(levels)`, so a predictor fitted on
  one grid reads the allocations of a refined one. Target: `log(max(fitness, floor))`, since
  distortions span decades. Only full-fidelity measurements are fitted: scores on fewer tokens are
  not the same quantity.
- `rbf`: scipy's `RBFInterpolator` (thin-plate spline, a degree-1 polynomial, smoothing 1e-3). A
  degree-1 term is well posed only on points that span the space it is read in, and the measured
  allocations of an evolution lie near one parent: the features are first expressed in the affine
  span of the fitted points (their principal directions), so the fit works with fewer points than
  units. A candidate's part outside that span does not change its prediction.
- `gp`: a small numpy Gaussian process: squared-exponential kernel with length scale the median
  pairwise distance, signal variance the variance of the targets, noise 1e-6 times it, and their mean
  as the prior mean; the prediction is the posterior mean.

Both refit on every `predict` (an O(points^3) solve: a second at a few thousand points). Rank
correlation: `record(predicted, measured)` keeps the pair of every measured candidate that had a
prediction, and `correlation()` gives their Spearman and Kendall coefficients.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.interpolate import RBFInterpolator
from scipy.stats import kendalltau, spearmanr

from ..core.space import SearchSpace
from ..errors import ConfigError

KINDS = ("rbf", "gp")
MIN_POINTS = 8  # full-fidelity measurements before a predictor screens anything
SMOOTHING = 1e-3


def check_predictor(predictor: str, screen: int) -> None:
    """Raise `ConfigError` for an unknown `predictor` or a `screen` below 1."""
    if predictor != "none" and predictor not in KINDS:
        raise ConfigError(f"predictor={predictor!r} is unknown; choose one of none, {', '.join(KINDS)}")
    if not isinstance(screen, int) or screen < 1:
        raise ConfigError(f"screen={screen!r} must be a positive integer (candidates drawn per one measured)")


def features(space: SearchSpace, allocations: list[np.ndarray]) -> np.ndarray:
    """The removed fraction of every unit of every allocation.  # (allocations, units)"""
    levels = np.asarray(allocations, dtype=np.int64).reshape(-1, space.n_units)  # (n, units)
    return space.fraction_table[np.arange(space.n_units), levels]


def screening_summary(surrogate: Surrogate | None) -> dict:
    """What a searcher's predictor did: its kind, rank correlation and the candidates it screened out."""
    if surrogate is None:
        return {"predictor": "none", "spearman": None, "kendall": None, "pairs": 0, "screened_out": 0}
    return {"predictor": surrogate.kind, **surrogate.correlation(), "screened_out": surrogate.screened_out}


class Surrogate:
    """Predicts fitness from features; fitted on every measured allocation it is given.

    Args:
        kind: "rbf" or "gp".
        floor: fitnesses below it count as it before the log.

    Example:
        >>> s = Surrogate("gp")
        >>> s.add(np.linspace(0, 1, 9)[:, None], np.exp(np.linspace(0, 1, 9)))
        >>> bool(s.predict(np.array([[0.1], [0.9]]))[0] < 1.5)
        True
    """

    def __init__(self, kind: str, *, floor: float = 1e-12) -> None:
        check_predictor(kind, 1)
        if kind == "none":
            raise ConfigError("predictor='none' makes no surrogate; choose one of " + ", ".join(KINDS))
        self.kind, self.floor = kind, floor
        self.X: list[list[float]] = []  # (points, features)
        self.y: list[float] = []  # (points,), log fitness
        self.pairs: list[tuple[float, float]] = []  # (prediction made before measuring, measured fitness)
        self.screened_out = 0

    @property
    def ready(self) -> bool:
        """True once it holds enough points to screen."""
        return len(self.y) >= MIN_POINTS

    def add(self, X: np.ndarray, fitnesses) -> None:
        """Fit these measured points too.  X: (n, features), fitnesses: (n,)"""
        self.X += np.asarray(X, dtype=np.float64).tolist()
        self.y += np.log(np.maximum(np.asarray(fitnesses, dtype=np.float64), self.floor)).tolist()

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted fitness of each row of X, fitted on every point added so far.  # (n,)"""
        points, inverse = np.unique(np.asarray(self.X), axis=0, return_inverse=True)  # (m, d): repeats merged
        inverse = inverse.ravel()
        y = np.bincount(inverse, weights=self.y) / np.bincount(inverse)  # (m,) mean target per point
        fit = _rbf if self.kind == "rbf" else _gp
        return np.exp(fit(points, y, np.asarray(X, dtype=np.float64)))

    def screen(self, X: np.ndarray, count: int) -> tuple[list[int], np.ndarray]:
        """The `count` rows of best predicted fitness, in row order, and every row's prediction; the
        other rows count as screened out.  X: (n, features) -> (kept indices, predictions (n,))"""
        predicted = self.predict(X)  # (n,)
        kept = sorted(np.argsort(predicted, kind="stable")[:count].tolist())
        self.screened_out += len(predicted) - len(kept)
        return kept, predicted

    def record(self, predicted: float, measured: float) -> None:
        self.pairs.append((float(predicted), float(measured)))

    def correlation(self) -> dict:
        """Spearman's rho and Kendall's tau of predictions against measurements (None below 2 pairs,
        or when either side is constant)."""
        out = {"spearman": None, "kendall": None, "pairs": len(self.pairs)}
        if len(self.pairs) >= 2:
            predicted, measured = np.array(self.pairs).T  # (pairs,) each
            with warnings.catch_warnings():  # constant input: NaN, reported as None
                warnings.simplefilter("ignore")
                for name, test in (("spearman", spearmanr), ("kendall", kendalltau)):
                    value = float(test(predicted, measured).statistic)
                    out[name] = None if np.isnan(value) else value
        return out

    def state(self) -> dict:
        """JSON data to continue from (checkpoints)."""
        return {"X": self.X, "y": self.y, "pairs": self.pairs, "screened_out": self.screened_out}

    def load_state(self, state: dict) -> None:
        self.X, self.y = [list(map(float, x)) for x in state["X"]], [float(v) for v in state["y"]]
        self.pairs = [(float(p), float(m)) for p, m in state["pairs"]]
        self.screened_out = int(state["screened_out"])


def _rbf(points: np.ndarray, y: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Thin-plate spline on the principal coordinates of `points`.  points: (m, d), y: (m,), query: (n, d)"""
    mean = points.mean(axis=0)  # (d,)
    _, s, vt = np.linalg.svd(points - mean, full_matrices=False)  # s: (r0,), vt: (r0, d)
    basis = vt[s > 1e-9 * max(s.max(initial=0.0), 1e-300)]  # (r, d), r <= m - 1
    if not len(basis):
        return np.full(len(query), y.mean())
    interpolator = RBFInterpolator((points - mean) @ basis.T, y, kernel="thin_plate_spline",
                                   smoothing=SMOOTHING, degree=1)
    return interpolator((query - mean) @ basis.T)  # (n,)


def _gp(points: np.ndarray, y: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Posterior mean of a squared-exponential Gaussian process.  points: (m, d), y: (m,), query: (n, d)"""
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)  # (m, m)
    upper = distances[np.triu_indices(len(points), k=1)]
    scale = float(np.median(upper)) if len(upper) and np.median(upper) > 0 else 1.0
    prior, variance = y.mean(), (y.var() if y.var() > 0 else 1.0)
    K = variance * np.exp(-0.5 * (distances / scale) ** 2) + 1e-6 * variance * np.eye(len(points))  # (m, m)
    alpha = np.linalg.solve(K, y - prior)  # (m,)
    across = np.linalg.norm(query[:, None] - points[None], axis=-1)  # (n, m)
    return prior + variance * np.exp(-0.5 * (across / scale) ** 2) @ alpha  # (n,)
