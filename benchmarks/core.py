"""Core pipeline figures on the embedded default model, all taken in one run.

- supernet build time and cache size on disk per prunable weight (structured lsq, unstructured wanda);
- time per candidate evaluation against a bare forward over the same calibration tokens;
- the error table's size and time;
- uniform's fitness and held-out perplexity at FLOPs budgets 0.3 / 0.5 / 0.7.

Usage: python benchmarks/core.py [--cache DIR] [--markdown BENCHMARKS.md]
A fresh cache directory is used for the builds (the default model itself comes from --cache).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _markdown import publish

from allocsearch import RunConfig, Session, search
from allocsearch._torch import torch_threads
from allocsearch.pipeline import default_cache_dir


def build(granularity: str, model_dir: str, cache: Path) -> tuple[Session, float]:
    session = Session(RunConfig(model=model_dir, granularity=granularity, cache_dir=str(cache), device="cpu"),
                      progress=False)
    _ = session.costs, session.calib_tokens
    start = time.perf_counter()
    _ = session.supernet
    return session, time.perf_counter() - start


def evaluation_timing(session: Session, repeats: int = 20) -> tuple[float, float, float]:
    """Seconds per candidate evaluation (compose + forward + score), per bare forward of the same
    composed candidates, and per bare dense forward, all over the same calibration tokens."""
    evaluator, rng = session.evaluator, np.random.default_rng(0)
    evaluate = bare = 0.0

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad(), torch_threads(session.config.threads):
            for batch in session.calib_tokens.split(session.config.batch_size):
                session.model(input_ids=batch, use_cache=False)
        return time.perf_counter() - start

    for _ in range(repeats):
        levels = rng.integers(0, session.space.n_levels)
        start = time.perf_counter()
        evaluator.fitness(levels)
        evaluate += time.perf_counter() - start
        bare += forward()  # the model is still composed at `levels`
    evaluator.compose(np.zeros(session.space.n_units, dtype=int))
    dense = sum(forward() for _ in range(repeats))
    return evaluate / repeats, bare / repeats, dense / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(default_cache_dir()), help="where the default model is cached")
    parser.add_argument("--markdown", help="write the table to this file")
    args = parser.parse_args()
    from allocsearch.default_model import default_model_dir

    model_dir = str(default_model_dir(args.cache))
    training = json.loads((Path(model_dir) / "training.json").read_text())
    rows = [f"Default model: {training['recipe']['n_layer']} blocks x {training['recipe']['n_embd']} wide, "
            f"trained in {training['train_seconds']} s; held-out perplexity {training['heldout_perplexity']} "
            f"vs unigram {training['unigram_perplexity']}.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        rows += ["| granularity | criterion | build (s) | cache bytes / prunable weight | evaluation / candidate (ms) "
                 "| bare forward, same candidate (ms) | overhead | bare dense forward (ms) |",
                 "|---|---|---|---|---|---|---|---|"]
        sessions = {}
        for granularity in ("structured", "unstructured"):
            session, seconds = build(granularity, model_dir, Path(tmp))
            sessions[granularity] = session
            weights = sum(session.costs.tables["params"][u, 0] for u in range(session.space.n_units))
            evaluate, bare, dense = evaluation_timing(session)
            rows.append(f"| {granularity} | {session.supernet.criterion} | {seconds:.2f} | "
                        f"{session.supernet.disk_bytes() / weights:.2f} | {evaluate * 1e3:.1f} | {bare * 1e3:.1f} | "
                        f"{evaluate / bare:.2f}x | {dense * 1e3:.1f} |")
        session = sessions["structured"]
        start = time.perf_counter()
        table = session.error_table()
        rows += ["", f"Error table, structured: {int(np.isfinite(table[:, 1:]).sum())} single-unit evaluations in "
                     f"{time.perf_counter() - start:.1f} s."]
        rows += ["", f"Uniform, structured (lsq), dense held-out perplexity {session.evaluator.dense_heldout:.3f}:", "",
                 "| FLOPs budget | FLOPs ratio | params ratio | fitness (KL) | held-out ppl |", "|---|---|---|---|---|"]
        for budget in (0.3, 0.5, 0.7):
            result = search(f"flops={budget}", method="uniform", seed=0, session=session, progress=False)
            rows.append(f"| {budget} | {result.cost['flops_ratio']:.3f} | {result.cost['params_ratio']:.3f} | "
                        f"{result.fitness:.4f} | {result.heldout:.3f} |")
    publish("\n".join(rows), args.markdown, "core", "Core pipeline", "2-core CPU, 1 torch thread per evaluation.")


if __name__ == "__main__":
    main()
