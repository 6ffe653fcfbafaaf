"""An Optuna study on the embedded default model against uniform, dp and evolution at equal evaluations.

Structured (lsq), flops=0.5, seed 0. The study (TPE, batches of 8, dp and admm warm starts) lives in
a temporary storage; evolution is stopped at the same number of candidate evaluations.
"""

from __future__ import annotations

import tempfile

from allocsearch import RunConfig, Session, search

from ._common import Report, table


def run(args) -> Report:
    session = Session(RunConfig(cache_dir=args.cache), progress=False)
    session.error_table()  # cached; not part of any method's time
    rows, data = [["dense", 0, 0, f"{session.evaluator.dense_heldout:.3f}", 1, "", ""]], {}
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
            rows.append([label, f"{r.fitness:.5f}", f"{r.heldout_fitness:.5f}", f"{r.heldout:.3f}",
                         f"{r.cost['flops_ratio']:.3f}", r.evaluations, f"{r.seconds:.1f}"])
            data[method] = {"fitness": r.fitness, "heldout_fitness": r.heldout_fitness, "heldout": r.heldout,
                            "evaluations": r.evaluations, "seconds": r.seconds}
    return Report("study", "An Optuna study at flops=0.5 (structured)",
                  "seed 0; evolution counts every candidate it scores, at any fidelity.",
                  table(["method", "calib KL", "held-out KL", "held-out ppl", "FLOPs ratio", "evaluations",
                         "wall time (s)"], rows), data)
