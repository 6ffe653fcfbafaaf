"""Measured quality of the quick methods (uniform, owl, admm, dp) on the default model, one budget each.

The same as `allocsearch compare --budget flops=0.5` (structured, lsq) and
`allocsearch compare --granularity unstructured --budget params=0.3` (wanda), seed 0. Each result's
allocation is drawn beside it, and the dp frontier of each case.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from allocsearch import Planner, RunConfig, Session, search
from allocsearch.app.plot import plot_allocation, plot_frontier
from allocsearch.searchers import QUICK

from ._common import RESULTS, Report, table

CASES = (("structured", "flops=0.5"), ("unstructured", "params=0.3"))


def run(args) -> Report:
    parts, data, plots = [], {}, []
    for granularity, budget in CASES:
        session = Session(RunConfig(granularity=granularity, cache_dir=args.cache), progress=False)
        rows = [["dense", 0, 0, f"{session.evaluator.dense_heldout:.3f}", 1, 1, "", ""]]
        planner = Planner.from_session(session)
        for method in QUICK:
            r = search(budget, method=method, seed=0, session=session, progress=False)
            planner.add_result(r)
            rows.append([method, f"{r.fitness:.4f}", f"{r.heldout_fitness:.4f}", f"{r.heldout:.3f}",
                         f"{r.cost['flops_ratio']:.3f}", f"{r.cost['params_ratio']:.3f}", r.evaluations,
                         f"{r.seconds:.1f}"])
            data[f"{granularity}/{method}"] = {"fitness": r.fitness, "heldout_fitness": r.heldout_fitness,
                                               "heldout": r.heldout, "cost": r.cost, "evaluations": r.evaluations}
            name = f"quality-{granularity}-{method}"
            summary = {k: v for k, v in asdict(r).items() if k != "history"}
            (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
            plots.append(plot_allocation(r, RESULTS / f"{name}.png"))
        metric = budget.split("=")[0]
        plots.append(plot_frontier(planner, metric, RESULTS / f"quality-{granularity}-frontier.png"))
        parts.append(f"### {granularity}, {budget} (criterion {session.supernet.criterion}, table "
                     f"{session.config.table})\n\n" + table(
                         ["method", "calib KL", "held-out KL", "held-out ppl", "FLOPs ratio", "params ratio",
                          "evaluations", "seconds"], rows))
    return Report("quality", "Quality of the quick methods on the default model", "seed 0; seconds exclude the "
                  "cached supernet, dense passes and error table. Evolution and Optuna have their own sections.",
                  "\n\n".join(parts), data, plots)
