"""Error tables `E[u, k]`: the fitness with only unit u pruned, at level k; dp, admm and the Planner read them.

Three kinds, from the most measured to the cheapest:

- `exact`: every cell measured on every calibration batch. A cell runs only the blocks from its
  unit's block on, from the dense pass's input there: a suffix of the model, not all of it.
- `fast`: every cell measured on the first `fidelity` share of the calibration batches.
- `proxy`: the build's local output error of every cell (||W x - W' x'||^2 / ||W x||^2 of the unit's
  output projection, or of its layer when unstructured, computed from the calibration Gram matrix
  with no forward at all), mapped per unit onto the model's distortion by a power law E = a * P^b
  through two measured cells, those nearest a quarter and three quarters removed (on the
  `fidelity` share). The local error orders a unit's levels; the measured cells give the unit its
  weight in the model's output and how fast distortion grows with it (faster than linearly: b is
  about 1.1 to 1.2 on the default model).

Level 0 is 0 and cells past a unit's levels are inf.
"""

from __future__ import annotations

import numpy as np

from .._progress import progress_bar
from ..errors import ConfigError
from .runners import Runner

TABLES = ("exact", "fast", "proxy")
PROXY_POINTS = (0.25, 0.75)  # removed fractions of the two measured cells per unit of a proxy table


def check_table(kind: str, fidelity: float) -> None:
    if kind not in TABLES:
        raise ConfigError(f"table={kind!r} is unknown; choose one of {', '.join(TABLES)}")
    if not 0 < fidelity <= 1:
        raise ConfigError(f"table_fidelity={fidelity!r} must lie in (0, 1]: the share of calibration batches "
                          "a measured cell is scored on")


def measure_cells(runner: Runner, n_levels: np.ndarray, cells: list[tuple[int, int]], *, fidelity: float = 1.0,
                  chunk: int = 16, progress: bool = True, desc: str = "error table") -> list[float]:
    """The fitness of each single-unit candidate (unit u at level k, every other unit dense), in order.

    Cells go unit by unit, so consecutive candidates differ in one or two units.
    """
    values: list[float] = []
    bar = progress_bar(total=len(cells), desc=desc, enabled=progress)
    for start in range(0, len(cells), chunk):
        part = cells[start : start + chunk]
        allocations = []
        for u, k in part:
            levels = np.zeros(len(n_levels), dtype=int)
            levels[u] = k
            allocations.append(levels)
        values += runner.evaluate(allocations, fidelity)
        bar.update(len(part))
    bar.close()
    return values


def error_table(runner: Runner, n_levels: np.ndarray, *, fidelity: float = 1.0, chunk: int = 16,
                progress: bool = True) -> np.ndarray:
    """`E[u, k]` with every cell measured at `fidelity` (the exact table at 1).  # (units, max_levels)"""
    table = _empty(n_levels)
    cells = [(u, k) for u in range(len(n_levels)) for k in range(1, int(n_levels[u]))]
    for (u, k), value in zip(cells, measure_cells(runner, n_levels, cells, fidelity=fidelity, chunk=chunk,
                                                   progress=progress)):
        table[u, k] = value
    return table


def proxy_table(local: np.ndarray, fractions: np.ndarray, runner: Runner, *, fidelity: float,
                points: tuple[float, ...] = PROXY_POINTS, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`E[u, k]` from the local errors `local` (units, max_levels) and two measured cells per unit.

    Per unit, the cells at the levels nearest the removed fractions `points` are measured (on the
    `fidelity` share of the batches) and the power law E = a * local^b through them gives every
    level (b kept within [1/2, 2]; with one usable cell b = 1). A unit with no usable cell (no local
    error where it was measured) takes b = 1 and the median a of the others. Returns the table and
    each unit's (a, b).  # (units, max_levels), (units, 2)
    """
    n_levels = np.isfinite(fractions).sum(1)
    cells = []
    for u in range(len(local)):
        if n_levels[u] > 1:
            nearest = {1 + int(np.argmin(np.abs(fractions[u, 1 : n_levels[u]] - f))) for f in points}
            cells += [(u, k) for k in sorted(nearest)]
    measured: dict[int, list[tuple[float, float]]] = {}
    for (u, k), value in zip(cells, measure_cells(runner, n_levels, cells, fidelity=fidelity, progress=progress,
                                                   desc="proxy table")):
        if local[u, k] > 0 and value > 0:
            measured.setdefault(u, []).append((local[u, k], value))
    fit = np.full((len(local), 2), np.nan)  # (a, b) per unit
    for u, pairs in measured.items():
        (p0, e0), (p1, e1) = pairs[0], pairs[-1]
        b = float(np.clip(np.log(e1 / e0) / np.log(p1 / p0), 0.5, 2.0)) if p1 != p0 else 1.0
        fit[u] = e0 / p0**b, b
    unknown = np.isnan(fit[:, 0])
    fit[unknown] = (np.median(fit[~unknown, 0]) if (~unknown).any() else 1.0), 1.0
    table = _empty(n_levels)
    for u in range(len(local)):
        table[u, 1 : n_levels[u]] = fit[u, 0] * local[u, 1 : n_levels[u]] ** fit[u, 1]
    return table, fit


def _empty(n_levels: np.ndarray) -> np.ndarray:
    table = np.full((len(n_levels), int(np.max(n_levels))), np.inf)
    table[:, 0] = 0.0
    return table
