"""Evolution on the embedded default model: quality against uniform and dp, sample efficiency, and a profile.

1. uniform, dp and evolution (started from dp) at flops=0.5 (structured, lsq) and params=0.3
   (unstructured, wanda): fitness, held-out scores, evaluations and wall time, seed 0.
2. Sample efficiency, structured flops=0.5: evolution started from uniform runs its generations; the
   run started from dp is then read for the first evaluation at which its best full-fidelity fitness
   is at least as good as the uniform start's final one. Evaluations count every candidate scored,
   at any fidelity; "full-equivalents" weighs each by its share of the calibration tokens.
3. A profile (cProfile) of one generation, structured flops=0.5: where its time goes.
"""

from __future__ import annotations

import cProfile
import pstats
import time

import numpy as np

from allocsearch import RunConfig, Session, search

from ._common import Report, table

CASES = (("structured", "flops=0.5"), ("unstructured", "params=0.3"))


def running_best(history: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per evaluation: best full-fidelity fitness so far, evaluations so far, full-equivalents so far."""
    fidelity = np.array([h["fidelity"] for h in history])
    fitness = np.array([h["fitness"] if h["fidelity"] == 1.0 else np.inf for h in history])
    return np.minimum.accumulate(fitness), np.arange(1, len(history) + 1), np.cumsum(fidelity)


class _ProfiledRunner:
    """Runs every evaluation after the first (the start allocation) under a profiler."""

    def __init__(self, runner, profiler: cProfile.Profile) -> None:
        self.runner, self.profiler, self.calls, self.seconds, self.evaluations = runner, profiler, 0, 0.0, 0

    def evaluate(self, allocations, fidelity: float = 1.0):
        self.calls += 1
        if self.calls == 1:
            return self.runner.evaluate(allocations, fidelity)
        start = time.perf_counter()
        values = self.profiler.runcall(self.runner.evaluate, allocations, fidelity)
        self.seconds += time.perf_counter() - start
        self.evaluations += len(allocations)
        return values

    def close(self) -> None:
        pass


def profile_generation(session: Session) -> tuple[float, int, list[list]]:
    """One generation's evaluations (64 offspring on 1/16 of the batches, 8 on 1/4, 2 on all) under cProfile,
    after the start allocation: seconds, evaluations, and the functions taking most of the time."""
    from allocsearch import InProcessRunner

    search("flops=0.5", method="evolution", seed=0, session=session, progress=False,
           method_options={"generations": 1})  # warm: caches built, the start measured once
    profiler = cProfile.Profile()
    runner = _ProfiledRunner(InProcessRunner(session.evaluator), profiler)
    search("flops=0.5", method="evolution", seed=1, session=session, progress=False,
           method_options={"generations": 1}, runner=runner)
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in pstats.Stats(profiler).stats.items():
        if cumulative >= 0.02 * runner.seconds and name != "runcall":
            rows.append([f"{name} ({path.rsplit('/', 1)[-1]}:{line})", calls, own, cumulative])
    rows.sort(key=lambda r: -r[3])
    return runner.seconds, runner.evaluations, [[n, c, f"{o:.2f}", f"{cu:.2f}", f"{cu / runner.seconds:.0%}"]
                                                 for n, c, o, cu in rows[:16]]


def run(args) -> Report:
    options = {"generations": args.generations}
    parts, histories, data = [], {}, {}
    for granularity, budget in CASES:
        session = Session(RunConfig(granularity=granularity, cache_dir=args.cache), progress=False)
        session.error_table()  # measured once and cached; not part of any method's time
        rows = [["dense", 0, 0, f"{session.evaluator.dense_heldout:.3f}", "", ""]]
        for method in ("uniform", "dp", "evolution"):
            r = search(budget, method=method, seed=0, session=session, progress=False,
                       method_options=options if method == "evolution" else None)
            rows.append([f"{method}{' (from dp)' if method == 'evolution' else ''}", f"{r.fitness:.4f}",
                         f"{r.heldout_fitness:.4f}", f"{r.heldout:.3f}", r.evaluations, f"{r.seconds:.1f}"])
            data[f"{granularity}/{method}"] = {"fitness": r.fitness, "heldout_fitness": r.heldout_fitness,
                                               "heldout": r.heldout, "evaluations": r.evaluations, "seconds": r.seconds}
            if method == "evolution":
                histories[(granularity, "dp")] = r.history
        parts.append(f"### {granularity}, {budget}\n\n" + table(
            ["method", "calib KL", "held-out KL", "held-out ppl", "evaluations", "wall time (s)"], rows))
        if granularity == "structured":
            r = search(budget, method="evolution", seed=0, session=session, progress=False,
                       method_options={**options, "init": "uniform"})
            histories[(granularity, "uniform")] = r.history
            for threads in sorted({1, session.config.threads}):
                profiled = Session(RunConfig(cache_dir=args.cache, threads=threads), progress=False)
                seconds, evaluations, profile = profile_generation(profiled)
                data.setdefault("generation", []).append({"threads": threads, "seconds": seconds,
                                                          "evaluations": evaluations, "profile": profile})
    from_uniform, n_uniform, eq_uniform = running_best(histories[("structured", "uniform")])
    from_dp, n_dp, eq_dp = running_best(histories[("structured", "dp")])
    target = from_uniform[-1]
    reached = int(np.argmax(from_dp <= target)) if (from_dp <= target).any() else None
    if reached is None:
        efficiency = "the dp start never reached the uniform start's final fitness"
    else:
        efficiency = table(["", "uniform start", "dp start"], [
            ["final best fitness", f"{target:.5f}", f"{from_dp[-1]:.5f}"],
            [f"evaluations to reach {target:.5f}", f"{n_uniform[-1]} (all)", n_dp[reached]],
            ["full-equivalents to reach it", f"{eq_uniform[-1]:.0f}", f"{eq_dp[reached]:.0f}"],
            ["ratio (dp / uniform), evaluations", "", f"{n_dp[reached] / n_uniform[-1]:.4f}"]])
        data["efficiency_ratio"] = float(n_dp[reached] / n_uniform[-1])
    parts.append(f"### Sample efficiency, structured flops=0.5, {args.generations} generations per run\n\n"
                 + efficiency)
    for generation in data["generation"]:
        parts.append(f"### One generation, profiled (structured flops=0.5, {generation['threads']} torch thread(s)): "
                     f"{generation['seconds']:.2f} s for {generation['evaluations']} evaluations\n\n"
                     "The evaluations of one generation after its measured start: 64 offspring on 1/16 of the "
                     "calibration batches, 8 on 1/4, 2 on all of them (cProfile; functions above 2% of the time).\n\n"
                     + table(["function", "calls", "own (s)", "cumulative (s)", "share"], generation["profile"]))
    return Report("evolution", "Evolution on the default model",
                  f"seed 0, {args.generations} generations x 64 offspring, selection 1/16 -> 1/4 -> 1 of the "
                  "calibration batches keeping 8 -> 2 -> 1; the error table is cached beforehand.",
                  "\n\n".join(parts), data)
