from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from allocsearch import ConfigError
from allocsearch.searchers.surrogate import Surrogate, features, screening_summary

from ..tiny import synthetic_problem


def smooth(X):
    """A smooth positive function spanning a decade or so.  X: (n, 6)"""
    return np.exp(np.sin(3 * X[:, 0]) + X[:, 1] ** 2 - X[:, 2] + 0.5 * X[:, 3] * X[:, 4] + 0.2 * X[:, 5])


@pytest.mark.parametrize("kind", ["rbf", "gp"])
def test_fits_a_known_smooth_function(kind):
    rng = np.random.default_rng(0)
    train, held = rng.uniform(0, 1, (80, 6)), rng.uniform(0, 1, (200, 6))
    surrogate = Surrogate(kind)
    surrogate.add(train, smooth(train))
    assert surrogate.ready
    assert spearmanr(surrogate.predict(held), smooth(held)).statistic > 0.9
    assert surrogate.predict(train[:5]) == pytest.approx(smooth(train[:5]), rel=0.05)  # near-interpolates


@pytest.mark.parametrize("kind", ["rbf", "gp"])
def test_fewer_points_than_features_repeats_and_zeros(kind):
    """Points of an evolution lie near one parent: fewer than the units, some repeated, a fitness of 0."""
    rng = np.random.default_rng(1)
    X = np.repeat(rng.uniform(0, 1, (4, 12)), 2, axis=0)  # (8, 12), every point twice
    surrogate = Surrogate(kind)
    surrogate.add(X, np.r_[0.0, 0.0, rng.uniform(0.5, 2, 6)])
    predicted = surrogate.predict(rng.uniform(0, 1, (20, 12)))
    assert predicted.shape == (20,) and np.isfinite(predicted).all() and (predicted >= 0).all()


def test_correlation_is_within_bounds_and_none_without_pairs():
    surrogate = Surrogate("rbf")
    assert surrogate.correlation() == {"spearman": None, "kendall": None, "pairs": 0}
    for predicted, measured in ((1, 2), (2, 1), (3, 4), (4, 3), (5, 6)):
        surrogate.record(predicted, measured)
    found = surrogate.correlation()
    assert found["pairs"] == 5 and 0 < found["spearman"] <= 1 and -1 <= found["kendall"] <= 1
    assert found["spearman"] == pytest.approx(spearmanr([1, 2, 3, 4, 5], [2, 1, 4, 3, 6]).statistic)
    surrogate.screened_out = 7
    assert screening_summary(surrogate) == {"predictor": "rbf", **found, "screened_out": 7}


def test_state_round_trip_and_features():
    problem = synthetic_problem(0)
    levels = [np.zeros(6, dtype=int), problem.space.n_levels - 1]
    X = features(problem.space, levels)  # (2, units)
    assert X.shape == (2, 6) and (X[0] == 0).all() and np.allclose(X[1], problem.space.fractions(levels[1]))
    surrogate = Surrogate("gp")
    surrogate.add(X, [0.5, 2.0])
    surrogate.record(0.4, 0.5)
    copy = Surrogate("gp")
    copy.load_state(surrogate.state())
    assert copy.state() == surrogate.state()


def test_unknown_kinds_are_refused():
    with pytest.raises(ConfigError, match="predictor='mlp' is unknown; choose one of none, rbf, gp"):
        Surrogate("mlp")
    with pytest.raises(ConfigError, match="predictor='none' makes no surrogate"):
        Surrogate("none")
