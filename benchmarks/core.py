"""Core pipeline figures on the embedded default model, all taken in one run.

- supernet build time, and cache bytes on disk per prunable weight: lsq in float32 and in bfloat16
  (refit weights are stored in the evaluation dtype), wanda (one byte per weight);
- evaluation overhead: a candidate's evaluation (compose, forward from its first pruned block,
  score) against a bare whole-model forward of the same candidate over the same tokens, for a
  candidate pruned from the first block and one pruned in the last block only;
- uniform allocations at FLOPs budgets 0.3 / 0.5 / 0.7: calibration and held-out KL, perplexity.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from allocsearch import RunConfig, Session, search
from allocsearch.model._torch import torch_threads

from ._common import Report, table, timed


def build(cache: Path, model_dir: str, **options) -> tuple[Session, float]:
    session = Session(RunConfig(model=model_dir, cache_dir=str(cache), **options), progress=False)
    _ = session.costs, session.weights_key, session.build_tokens
    return session, timed(lambda: session.supernet)[1]


def bare_forward(session: Session) -> float:
    """Seconds of whole-model forwards over the calibration tokens, in the evaluation's batches."""
    def forward() -> None:
        with torch.no_grad(), torch_threads(session.config.threads):
            for batch in session.calib_tokens.split(session.config.batch_size):
                if session.space.task == "causal_lm":
                    session.model(input_ids=batch, use_cache=False)
                else:
                    session.model(input_ids=batch)
    return timed(forward)[1]


def overhead(session: Session, levels: np.ndarray, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of a fresh evaluation of `levels`, and of a bare forward of the composed candidate."""
    evaluator, evaluate, bare = session.evaluator, [], []
    for _ in range(repeats):
        evaluator._memo.clear()  # noqa: SLF001 - a fresh evaluation each time
        evaluator._anchor = None  # noqa: SLF001
        evaluate.append(timed(evaluator.fitness, levels)[1])
        bare.append(bare_forward(session))  # the model is still composed at `levels`
    return float(np.median(evaluate)), float(np.median(bare))


def run(args) -> Report:
    from allocsearch.model.default_model import default_model_dir

    model_dir = str(default_model_dir(args.cache))
    rows, data = [], {"builds": [], "evaluation": []}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for label, options in (("structured, lsq, float32", {}), ("structured, lsq, bfloat16", {"dtype": "bfloat16"}),
                               ("unstructured, wanda, float32", {"granularity": "unstructured"})):
            session, seconds = build(Path(tmp), model_dir, **options)
            sessions[label] = session
            weights = float(session.costs.tables["params"][:, 0].sum())
            per_weight = session.supernet.disk_bytes() / weights
            rows.append([label, f"{seconds:.2f}", f"{per_weight:.2f}"])
            data["builds"].append({"case": label, "seconds": seconds, "bytes_per_weight": per_weight})
        text = table(["cache", "build (s)", "bytes on disk / prunable weight"], rows)
        session = sessions["structured, lsq, float32"]
        rng = np.random.default_rng(0)
        early = rng.integers(1, session.space.n_levels)  # every unit pruned: every block runs
        late = np.zeros(session.space.n_units, dtype=int)
        late[-2:] = early[-2:]  # the last block only
        rows = []
        for label, levels in (("pruned from the first block", early), ("pruned in the last block only", late)):
            evaluate, bare = overhead(session, levels)
            rows.append([label, f"{evaluate * 1e3:.1f}", f"{bare * 1e3:.1f}", f"{evaluate / bare:.2f}x"])
            data["evaluation"].append({"candidate": label, "evaluation_seconds": evaluate, "bare_forward_seconds": bare})
        text += "\n\nEvaluation of one candidate over the calibration tokens, against a bare whole-model forward of " \
                "the same candidate (medians of 5):\n\n" + table(
                    ["candidate", "evaluation (ms)", "bare forward (ms)", "evaluation / bare forward"], rows)
        rows = []
        for budget in (0.3, 0.5, 0.7):
            r = search(f"flops={budget}", method="uniform", seed=0, session=session, progress=False)
            rows.append([budget, f"{r.cost['flops_ratio']:.3f}", f"{r.cost['params_ratio']:.3f}", f"{r.fitness:.4f}",
                         f"{r.heldout_fitness:.4f}", f"{r.heldout:.3f}"])
            data.setdefault("uniform", []).append({"budget": budget, "fitness": r.fitness,
                                                   "heldout_fitness": r.heldout_fitness, "heldout": r.heldout})
        text += f"\n\nUniform, structured (lsq); dense held-out perplexity {session.evaluator.dense_heldout:.3f}:\n\n" + \
            table(["FLOPs budget", "FLOPs ratio", "params ratio", "calib KL", "held-out KL", "held-out ppl"], rows)
    return Report("core", "Core pipeline on the default model", "builds in a fresh cache; torch threads as defaulted "
                  f"({session.config.threads}).", text, data)
