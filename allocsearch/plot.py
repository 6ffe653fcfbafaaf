"""Plots: the budget frontier against uniform pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = {"flops": "FLOPs per token", "params": "parameters", "memory": "memory (bytes)"}


def plot_frontier(planner, metric: str, out: str | Path) -> Path:
    """Predicted error (sum of the error table) against cost for the DP frontier and for uniform,
    with measured fitness where searches evaluated those allocations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frontier, uniform = planner.frontier(metric), planner.uniform_curve(metric)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
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
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
