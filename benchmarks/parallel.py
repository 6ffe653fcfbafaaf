"""Candidate evaluations per second: threads in one process against Ray workers, and worker memory.

Default model, structured (lsq), full fidelity, the same random candidates throughout. Ray starts
locally (include_dashboard=False, one logical CPU more than the workers hold); start-up (Ray itself,
then the actors loading the model and opening the caches) is timed apart. Results are identical for
any number of workers at one thread count (and differ in the last digits between thread counts).
Memory is read from /proc of the workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from allocsearch import InProcessRunner, RunConfig, Session
from allocsearch.model._torch import available_cores

from ._common import Report, table, timed


def memory(pid: int) -> dict[str, float]:
    """MB: the process's Rss and Pss."""
    sizes = {"rss": 0.0, "pss": 0.0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        fields = line.split()
        if fields[0] in ("Rss:", "Pss:"):
            sizes[fields[0][:-1].lower()] = float(fields[1]) / 1024
    return sizes


def run(args) -> Report:
    import ray

    from allocsearch.app.ray_runner import RayRunner

    cores = available_cores()
    rng = np.random.default_rng(0)
    rows, data, mem_rows, reference = [], {"runs": []}, [], {}
    baseline = None
    settings = [("in-process", 1, 1), ("in-process", 1, cores), ("Ray", 1, 1), ("Ray", 2, 1), ("Ray", cores, 1),
                ("Ray", 2, cores)]
    for kind, workers, threads in dict.fromkeys(settings):
        session = Session(RunConfig(threads=threads, cache_dir=args.cache), progress=False)
        if not reference:
            candidates = [rng.integers(1, session.space.n_levels) for _ in range(args.candidates)]
        runner = InProcessRunner(session.evaluator) if kind == "in-process" else RayRunner(session, workers=workers)
        values, seconds = timed(runner.evaluate, candidates)
        if threads in reference:
            assert values == reference[threads], "the same thread count must give the same fitnesses"
        reference.setdefault(threads, values)
        rate = args.candidates / seconds
        baseline = baseline or rate
        start = "" if kind == "in-process" else f"{runner.ray_seconds:.1f} / {runner.worker_seconds:.1f}"
        rows.append([kind, workers, threads, start, f"{rate:.2f}", f"{rate / baseline:.2f}"])
        data["runs"].append({"runner": kind, "workers": workers, "threads": threads, "rate": rate})
        if kind == "Ray" and workers == 2 and threads == 1:
            for pid in runner.pids:
                m = memory(pid)
                mem_rows.append([pid, f"{m['rss']:.0f}", f"{m['pss']:.0f}"])
        runner.close()
    ray.shutdown()
    text = table(["runner", "workers", "threads each", "Ray start / workers ready (s)", "evaluations / s",
                  "against in-process, 1 thread"], rows)
    text += "\n\nMemory of the two 1-thread workers:\n\n" + table(["worker pid", "RSS (MB)", "PSS (MB)"], mem_rows)
    return Report("parallel", f"Parallel evaluation: threads and Ray workers ({cores}-core machine)",
                  f"{args.candidates} random candidates, full fidelity, default model.", text, data)
