"""DP frontier speed at 224 units x 41 levels x 10,000 buckets, Planner query latency, and the exact MILP
against the Lagrangian dp under two limits (FLOPs and params of independent random costs).

Synthetic tables (sorted random errors and costs) of the stated size; timings are the median of
repeated runs in this process.
"""

from __future__ import annotations

import time

import numpy as np

from allocsearch import CostModel, Planner, SearchSpace, Unit, dp_allocate, dp_allocate_constrained, dp_frontier
from allocsearch.solvers.milp import milp_allocate

from ._common import Report

UNITS, LEVELS, BUCKETS = 224, 41, 10_000


def tables(seed: int = 0):
    rng = np.random.default_rng(seed)
    errors = np.sort(rng.exponential(1, (UNITS, LEVELS)), axis=1)
    errors[:, 0] = 0
    costs = np.sort(rng.uniform(1, 100, (UNITS, LEVELS)), axis=1)[:, ::-1].copy()
    return errors, costs


def two_limits(units: int, levels: int, seed: int) -> tuple[dict, float, float, float, float]:
    """Lagrangian dp and MILP on one random two-limit problem: (figures, dp s, MILP s, dp error, MILP error)."""
    rng = np.random.default_rng(seed)
    errors = np.sort(rng.exponential(1, (units, levels)), axis=1)
    errors[:, 0] = 0
    costs = {m: np.sort(rng.uniform(1, 100, (units, levels)), axis=1)[:, ::-1].copy() for m in ("flops", "params")}
    limits = {m: rng.uniform(0.3, 0.7) * c[:, 0].sum() for m, c in costs.items()}
    start = time.perf_counter()
    lagrangian = dp_allocate_constrained(errors, costs, limits, primary="flops")
    dp_s = time.perf_counter() - start
    exact = milp_allocate(errors, costs, limits)
    idx = np.arange(units)
    return limits, dp_s, exact.seconds, float(errors[idx, lagrangian.levels].sum()), exact.objective


def milp_rows() -> tuple[list[str], dict]:
    """The MILP at full size (three seeds) and its gap to the Lagrangian dp on 20 smaller problems."""
    full = [two_limits(UNITS, LEVELS, seed)[1:] for seed in range(3)]
    gaps = np.array([(dp - ex) / ex for _, _, _, dp, ex in (two_limits(64, 21, s) for s in range(20))])
    rows = [f"| two limits, {UNITS} x {LEVELS}: Lagrangian dp / exact MILP (HiGHS), median of 3 seeds | "
            f"{np.median([f[0] for f in full]):.2f} s / {np.median([f[1] for f in full]):.2f} s | the dp's error "
            f"{np.median([(f[2] - f[3]) / f[3] for f in full]):.2%} above the MILP's |",
            f"| two limits, 64 x 21, 20 random problems: the Lagrangian dp's error above the MILP's | mean "
            f"{gaps.mean():.2%}, max {gaps.max():.2%} | MILP strictly lower on {(gaps > 1e-9).sum()} of 20 |"]
    return rows, {"milp_full": full, "milp_gaps": gaps.tolist()}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(args) -> Report:
    errors, costs = tables()
    budget = 0.5 * costs[:, 0].sum()
    frontier_s = median_seconds(lambda: dp_frontier(errors, costs, resolution=BUCKETS), 5)
    allocate_s = median_seconds(lambda: dp_allocate(errors, costs, budget, resolution=BUCKETS), 5)
    choice_bytes = UNITS * (BUCKETS + 1)  # one uint8 per unit and bucket for backtracking

    units = tuple(Unit(name=f"u{u}", kind="channels", block=u, groups=LEVELS - 1, counts=tuple(range(LEVELS)))
                  for u in range(UNITS))
    space = SearchSpace("synthetic", "causal_lm", "structured", units, {})
    zero = {"flops": 0.0, "params": 0.0, "bytes": 0.0}
    costs_model = CostModel({"flops": costs, "params": costs.copy(), "bytes": 2 * costs}, zero, 128, 2)
    start = time.perf_counter()
    planner = Planner(space, costs_model, errors, resolution=BUCKETS)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(1)
    for _ in range(1000):  # a search's worth of measured points
        planner.add(rng.integers(0, LEVELS, UNITS), float(rng.exponential()))
    budgets = rng.uniform(0.2, 0.95, 2000)
    planner.query(flops=0.5)  # the point arrays are made once, on the first query after adding
    latencies = []
    for b in budgets:
        start = time.perf_counter()
        planner.query(flops=float(b))
        latencies.append(time.perf_counter() - start)
    two_kinds = median_seconds(lambda: planner.query(flops=0.6, memory=float(0.7 * 2 * costs[:, 0].sum())), 200)
    lat = np.array(latencies) * 1e6
    rows = [
        f"| dp_frontier, {UNITS} x {LEVELS} x {BUCKETS:,} | {frontier_s:.3f} s | target < 0.5 s: "
        f"{frontier_s / 0.5:.2f} of it |",
        f"| dp_allocate, one budget, same size | {allocate_s:.3f} s | |",
        f"| backtracking table | {choice_bytes / 1e6:.2f} MB (uint8, units x buckets) | |",
        f"| Planner build (3 frontiers) | {build_s:.2f} s | |",
        f"| Planner.query(flops=...), 1,000 measured points | median {np.median(lat):.0f} us, p99 "
        f"{np.percentile(lat, 99):.0f} us | target < 1 ms: {np.median(lat) / 1000:.2f} of it |",
        f"| Planner.query(flops=..., memory=...) | median {two_kinds * 1e6:.0f} us | |",
    ]
    exact_rows, exact_data = milp_rows()
    rows += exact_rows
    data = {**exact_data, "frontier_seconds": frontier_s, "allocate_seconds": allocate_s, "backtracking_bytes": choice_bytes,
            "planner_build_seconds": build_s, "query_median_us": float(np.median(lat)),
            "query_p99_us": float(np.percentile(lat, 99)), "query_two_limits_us": two_kinds * 1e6}
    return Report("solvers", "Solvers and budget queries", "synthetic tables, medians in one process.",
                  "| what | figure | against the goal |\n|---|---|---|\n" + "\n".join(rows), data)
