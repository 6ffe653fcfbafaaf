"""Error tables `E[u, k]`: the fitness with only unit u pruned, at level k; dp, admm and the Planner read them.

Three kinds, from the most measured to the cheapest:

- `exact`: every cell measured on every calibration batch. A cell runs only the blocks from its
  unit's block on, from the dense pass's input there: a suffix of the model, not all of it.
- `fast`: every cell measured on the first `fidelity` share of the calibration batches.
- `proxy`: the build's local output error of every cell (||W x - W' x'||^2 / ||W x||^2 of the unit's
  output projection, or of its layer when unstructured: no forward at all), scaled per unit so
  that one measured cell, the one nearest half removed (on the `fidelity` share), matches: the
  proxy gives each unit's shape across levels, the measured cell its weight in the model's output.

Level 0 is 0 and cells past a unit's levels are inf.
"""

from __future__ import annotations

import numpy as np

from ._progress import progress_bar
from .errors import ConfigError
from .runners import Runner

TABLES = ("exact", "fast", "proxy")


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
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`E[u, k]` from the local errors `local` (units, max_levels), each unit's row scaled to match one
    measured cell, the level nearest half removed. Returns the table and the per-unit scales.

    A unit whose measured cell has no local error to scale (0) takes the median scale of the others.
    # (units, max_levels), (units,)
    """
    n_levels = np.isfinite(local).sum(1)
    cells = []
    for u in range(len(local)):
        if n_levels[u] > 1:
            k = 1 + int(np.argmin(np.abs(fractions[u, 1 : n_levels[u]] - 0.5)))
            cells.append((u, k))
    measured = measure_cells(runner, n_levels, cells, fidelity=fidelity, progress=progress, desc="proxy table")
    scales = np.full(len(local), np.nan)
    for (u, k), value in zip(cells, measured):
        if local[u, k] > 0:
            scales[u] = value / local[u, k]
    known = scales[np.isfinite(scales)]
    scales[~np.isfinite(scales)] = np.median(known) if len(known) else 1.0
    table = _empty(n_levels)
    for u in range(len(local)):
        table[u, 1 : n_levels[u]] = scales[u] * local[u, 1 : n_levels[u]]
    return table, scales


def _empty(n_levels: np.ndarray) -> np.ndarray:
    table = np.full((len(n_levels), int(np.max(n_levels))), np.inf)
    table[:, 0] = 0.0
    return table
