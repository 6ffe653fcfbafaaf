"""An Optuna study on the embedded default model against uniform, dp and evolution at equal evaluations.

Usage: python benchmarks/study.py [--trials 200] [--markdown BENCHMARKS.md]
Structured (lsq), flops=0.5, seed 0. The study (TPE, batches of 8, dp and admm warm starts) lives in
a temporary storage; evolution is stopped at the same number of candidate evaluations.
"""

from __future__ import annotations

import argparse
import tempfile

from _markdown import publish

from allocsearch import RunConfig, Session, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--markdown", help="write the table to this file")
    args = parser.parse_args()
    session = Session(RunConfig(), progress=False)
    session.error_table()  # cached; not part of any method's time
    rows = ["| method | KL to dense | held-out ppl | FLOPs ratio | evaluations | wall time (s) |",
            "|---|---|---|---|---|---|", f"| dense | 0 | {session.evaluator.dense_heldout:.3f} | 1 | | |"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            ("uniform", "uniform", {}),
            ("dp", "dp", {}),
            (f"optuna (tpe, {args.trials} trials)", "optuna",
             {"trials": args.trials, "study": "bench", "storage": f"sqlite:///{tmp}/bench.db"}),
            (f"evolution (to the generation passing {args.trials} evaluations)", "evolution",
             {"max_evaluations": args.trials}),
        ]
        for label, method, options in runs:
            r = search("flops=0.5", method=method, seed=0, session=session, progress=False, method_options=options)
            rows.append(f"| {label} | {r.fitness:.5f} | {r.heldout:.3f} | {r.cost['flops_ratio']:.3f} | "
                        f"{r.evaluations} | {r.seconds:.1f} |")
    publish("\n".join(rows), args.markdown, "study", "An Optuna study at flops=0.5 (structured)",
            "seed 0; evolution counts every candidate it scores, at any fidelity.")


if __name__ == "__main__":
    main()
