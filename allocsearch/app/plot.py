"""Plots: the budget frontier against uniform pruning, and an allocation unit by unit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure

from .paths import check_output_file

LABELS = {"flops": "FLOPs per token", "params": "parameters", "memory": "memory (bytes)"}
IMAGE_SUFFIXES = tuple(dict.fromkeys(f".{kind}" for kind in ("png", "pdf", "svg",  # the common ones first
                                                               *sorted(FigureCanvasBase.get_supported_filetypes()))))


def check_image_path(name: str, out: str | Path) -> Path:
    """`out` as a `Path` when an image can be written there (a suffix matplotlib writes, a writable
    folder); else a `ConfigError` naming `name`. Called before any model is loaded.

    For example::

        check_image_path("plot", "allocation.png")  # Path('allocation.png')
    """
    return check_output_file(name, out, suffixes=IMAGE_SUFFIXES)


def plot_frontier(planner, metric: str, out: str | Path) -> Path:
    """Predicted error (sum of the error table) against cost for the DP frontier and for uniform,
    with measured fitness where searches evaluated those allocations."""
    frontier, uniform = planner.frontier(metric), planner.uniform_curve(metric)
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    points = planner.points(metric)
    if len(points["ratio"]):
        ax.scatter(points["ratio"], points["measured_fitness"], color="0.6", s=8, label="evaluated (measured)")
    ax.plot(frontier["ratio"], frontier["predicted_error"], label="dp frontier (predicted)", color="C0")
    ax.plot(uniform["ratio"], uniform["predicted_error"], label="uniform (predicted)", color="C1", linestyle="--")
    for curve, color, name in ((frontier, "C0", "dp"), (uniform, "C1", "uniform")):
        seen = np.isfinite(curve["measured_fitness"])
        if seen.any():
            ax.scatter(curve["ratio"][seen], curve["measured_fitness"][seen], color=color, marker="o", s=18,
                       label=f"{name} (measured)")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel(f"{LABELS[metric]}, fraction of dense")
    ax.set_ylabel("error (KL to dense)" if planner.space.task == "causal_lm" else "error (NMSE to dense)")
    ax.set_title(f"{planner.space.family}, {planner.space.granularity}: error against {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_allocation(result, out: str | Path) -> Path:
    """A bar per unit: the removed fraction of a `Result`'s allocation, block by block (heads and
    channels side by side for structured spaces, every layer for unstructured ones)."""
    names, fractions = list(result.allocation), np.array(list(result.allocation.values()))
    kinds = [re.split(r"\.\d+\.", name, maxsplit=1)[-1] for name in names]  # the unit's name within its block
    order = list(dict.fromkeys(kinds))
    width = 0.8 / len(order)
    fig = Figure(figsize=(max(7.0, 0.12 * len(names)), 4), dpi=120)
    ax = fig.subplots()
    per_kind = {kind: [f for f, k in zip(fractions, kinds) if k == kind] for kind in order}
    for j, kind in enumerate(order):
        values = per_kind[kind]
        ax.bar(np.arange(len(values)) + (j - (len(order) - 1) / 2) * width, values, width, label=kind)
    ax.set_ylim(0, 1)
    ax.set_xlabel("block")
    ax.set_ylabel("removed fraction")
    cost = result.cost.get("flops_ratio")
    ax.set_title(f"{result.method}: {', '.join(f'{m}={v:g}' for m, v in result.budget.items())}; "
                 f"FLOPs ratio {cost:.3f}, fitness {result.fitness:.4g}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=min(len(order), 7), fontsize=8)
    return _save(fig, out)


def _save(fig: Figure, out: str | Path) -> Path:
    """Write `fig` to `out`, its folder made when missing (a `Figure` of its own: no pyplot state)."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
