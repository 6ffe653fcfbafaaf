"""Measured quality of the quick methods (uniform, owl, admm, dp) on the default model, one budget each.

Usage: python benchmarks/quality.py [--markdown BENCHMARKS.md]
The same as `allocsearch compare --budget flops=0.5` (structured, lsq) and
`allocsearch compare --granularity unstructured --budget params=0.3` (wanda), seed 0.
"""

from __future__ import annotations

import argparse

from _markdown import publish

from allocsearch import RunConfig, Session, search
from allocsearch.searchers import QUICK

CASES = (("structured", "flops=0.5"), ("unstructured", "params=0.3"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", help="write the tables to this file")
    args = parser.parse_args()
    parts = []
    for granularity, budget in CASES:
        session = Session(RunConfig(granularity=granularity), progress=False)
        rows = [f"### {granularity}, {budget} (criterion {session.supernet.criterion})", "",
                "| method | KL to dense | held-out ppl | FLOPs ratio | params ratio | evaluations | seconds |",
                "|---|---|---|---|---|---|---|",
                f"| dense | 0 | {session.evaluator.dense_heldout:.3f} | 1 | 1 | | |"]
        for method in QUICK:
            r = search(budget, method=method, seed=0, session=session, progress=False)
            rows.append(f"| {method} | {r.fitness:.4f} | {r.heldout:.3f} | {r.cost['flops_ratio']:.3f} | "
                        f"{r.cost['params_ratio']:.3f} | {r.evaluations} | {r.seconds:.1f} |")
        parts.append("\n".join(rows))
    publish("\n\n".join(parts), args.markdown, "quality", "Quality of the quick methods on the default model",
            "seed 0; seconds exclude the cached error table and supernet. Evolution and Optuna have their "
            "own sections below.")


if __name__ == "__main__":
    main()
