"""Evolution on the embedded default model: quality against uniform and dp, and sample efficiency.

Usage: python benchmarks/evolution.py [--generations N] [--markdown BENCHMARKS.md]

1. uniform, dp and evolution (started from dp) at flops=0.5 (structured, lsq) and params=0.3
   (unstructured, wanda): fitness, held-out perplexity, evaluations and wall time, seed 0.
2. Sample efficiency, structured flops=0.5: evolution started from uniform runs its generations; the
   run started from dp is then read for the first evaluation at which its best full-fidelity fitness
   is at least as good as the uniform start's final one. Evaluations count every candidate scored,
   at any fidelity; "full-equivalents" weighs each by its share of the calibration tokens.
"""

from __future__ import annotations

import argparse

import numpy as np
from _markdown import publish

from allocsearch import RunConfig, Session, search

CASES = (("structured", "flops=0.5"), ("unstructured", "params=0.3"))


def running_best(history: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per evaluation: best full-fidelity fitness so far, evaluations so far, full-equivalents so far."""
    fidelity = np.array([h["fidelity"] for h in history])
    fitness = np.array([h["fitness"] if h["fidelity"] == 1.0 else np.inf for h in history])
    return np.minimum.accumulate(fitness), np.arange(1, len(history) + 1), np.cumsum(fidelity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=50)
    parser.add_argument("--markdown", help="write the tables to this file")
    args = parser.parse_args()
    options = {"generations": args.generations}
    parts, histories = [], {}
    for granularity, budget in CASES:
        session = Session(RunConfig(granularity=granularity), progress=False)
        session.error_table()  # measured once and cached; not part of any method's time
        rows = [f"### {granularity}, {budget}", "",
                "| method | KL to dense | held-out ppl | evaluations | wall time (s) |", "|---|---|---|---|---|",
                f"| dense | 0 | {session.evaluator.dense_heldout:.3f} | | |"]
        for method in ("uniform", "dp", "evolution"):
            r = search(budget, method=method, seed=0, session=session, progress=False,
                       method_options=options if method == "evolution" else None)
            rows.append(f"| {method}{' (from dp)' if method == 'evolution' else ''} | {r.fitness:.4f} | "
                        f"{r.heldout:.3f} | {r.evaluations} | {r.seconds:.1f} |")
            if method == "evolution":
                histories[(granularity, "dp")] = r.history
        parts.append("\n".join(rows))
        if granularity == "structured":
            r = search(budget, method="evolution", seed=0, session=session, progress=False,
                       method_options={**options, "init": "uniform"})
            histories[(granularity, "uniform")] = r.history
    from_uniform, n_uniform, eq_uniform = running_best(histories[("structured", "uniform")])
    from_dp, n_dp, eq_dp = running_best(histories[("structured", "dp")])
    target = from_uniform[-1]
    reached = int(np.argmax(from_dp <= target)) if (from_dp <= target).any() else None
    if reached is None:
        efficiency = "the dp start never reached the uniform start's final fitness"
    else:
        efficiency = (f"| | uniform start | dp start |\n|---|---|---|\n"
                      f"| final best fitness | {target:.5f} | {from_dp[-1]:.5f} |\n"
                      f"| evaluations to reach {target:.5f} | {n_uniform[-1]} (all) | {n_dp[reached]} |\n"
                      f"| full-equivalents to reach it | {eq_uniform[-1]:.0f} | {eq_dp[reached]:.0f} |\n"
                      f"| ratio (dp / uniform), evaluations | | {n_dp[reached] / n_uniform[-1]:.4f} |")
    parts.append(f"### Sample efficiency, structured flops=0.5, {args.generations} generations per run\n\n"
                 + efficiency)
    publish("\n\n".join(parts), args.markdown, "evolution", "Evolution on the default model",
            f"seed 0, {args.generations} generations x 64 offspring, selection 1/16 -> 1/4 -> 1 of the "
            "calibration tokens keeping 8 -> 2 -> 1; the error table is cached beforehand.")


if __name__ == "__main__":
    main()
