"""Candidate evaluations per second on 1 and 2 Ray workers, Ray's start-up cost, and worker memory.

Usage: python benchmarks/parallel.py [--candidates 48] [--markdown BENCHMARKS.md]
Default model, structured (lsq), full fidelity, 1 torch thread per evaluator. The same candidates
go through the in-process runner, one Ray worker and two; start-up (Ray itself, then the actors
loading the model and opening the cache) is timed apart. Memory is read from /proc of the two
workers: their resident and proportional set sizes, and those of the supernet cache's mapped
files, which the workers share.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _markdown import publish

from allocsearch import InProcessRunner, RunConfig, Session
from allocsearch.ray_runner import RayRunner


def timed(runner, candidates) -> tuple[float, list[float]]:
    start = time.perf_counter()
    values = runner.evaluate(candidates)
    return time.perf_counter() - start, values


def memory(pid: int, cache_dir: Path) -> dict[str, float]:
    """MB: the process's Rss/Pss, and the Rss/Pss of its mappings of files under the cache."""
    sizes = {"rss": 0.0, "pss": 0.0, "cache_rss": 0.0, "cache_pss": 0.0}
    in_cache = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: address range ... path
            in_cache = len(fields) >= 6 and fields[5].startswith(str(cache_dir))
        elif fields[0] in ("Rss:", "Pss:"):
            key = fields[0][:-1].lower()
            kb = float(fields[1]) / 1024
            sizes[key] += kb
            if in_cache:
                sizes[f"cache_{key}"] += kb
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=48)
    parser.add_argument("--markdown", help="write the table to this file")
    args = parser.parse_args()
    session = Session(RunConfig(threads=1), progress=False)
    rng = np.random.default_rng(0)
    candidates = [rng.integers(0, session.space.n_levels) for _ in range(args.candidates)]
    in_process, reference = timed(InProcessRunner(session.evaluator), candidates)
    rows = ["| runner | Ray start (s) | workers ready (s) | evaluations / s | speed-up over in-process |",
            "|---|---|---|---|---|", f"| in-process, 1 thread | | | {args.candidates / in_process:.2f} | 1.00 |"]
    mem_rows = []
    for workers in (1, 2):
        runner = RayRunner(session, workers=workers)
        seconds, values = timed(runner, candidates)
        assert values == reference, "Ray workers must give the in-process fitnesses exactly"
        rows.append(f"| Ray, {workers} worker{'s' * (workers > 1)} x 1 thread | {runner.ray_seconds:.1f} | "
                    f"{runner.worker_seconds:.1f} | {args.candidates / seconds:.2f} | {in_process / seconds:.2f} |")
        if workers == 2:
            cache = session.supernet.path
            disk = sum(f.stat().st_size for f in cache.iterdir()) / 2**20
            mem_rows = ["| worker | RSS (MB) | PSS (MB) | cache mapped, RSS (MB) | cache mapped, PSS (MB) |",
                        "|---|---|---|---|---|"]
            for pid in runner.pids:
                m = memory(pid, cache)
                mem_rows.append(f"| pid {pid} | {m['rss']:.0f} | {m['pss']:.0f} | {m['cache_rss']:.1f} | "
                                f"{m['cache_pss']:.1f} |")
            mem_rows.append(f"\nThe supernet cache is {disk:.1f} MB on disk; each worker maps it (memory-mapped "
                            "safetensors), and the PSS of those pages is their RSS divided among the processes "
                            "mapping them: one copy in memory, not one per worker.")
        runner.close()
    text = "\n".join(rows) + "\n\nResults were identical to the in-process runner's.\n\n" + "\n".join(mem_rows)
    publish(text, args.markdown, "parallel", "Parallel evaluation on Ray (2-core machine)",
            f"{args.candidates} random candidates, full fidelity; Ray starts locally (include_dashboard=False, one "
            "logical CPU more than the workers hold, so the 2-worker row restarts it), then each runner's workers "
            "load the model, open the cache and score the dense reference.")


if __name__ == "__main__":
    import ray

    main()
    ray.shutdown()
