"""Error tables: what each kind costs per cell against a full forward, and how good its dp allocation is.

For each case (model, granularity, budgets), every table kind is built fresh on the same supernet and
dense pass, and dp allocates from it at each budget. Reported per kind:

- cost: the table's wall time, and per cell of the table (every unit at every level) as a share of one
  full forward over all calibration tokens (what a cell cost before suffix evaluation: the whole model
  on every token); the block work, counted: blocks run x sequences per cell, over blocks x sequences
  of a full forward;
- quality: dp's calibration KL, held-out KL (with the paired noise against the exact table's
  allocation: two standard errors of the per-batch difference) and held-out perplexity; the rank
  correlation of the table's cells with the exact table's.

The exact table of the real 135M model is measured on 32 calibration sequences (570 cells of 4
batches, about 40 minutes here); its other tables use the same 32 sequences, and the default setting
(128 sequences, proxy) is shown beside them.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from allocsearch import RunConfig, Session, search

from ._common import Report, table, timed

KINDS = (("exact", 1.0), ("fast", 1 / 8), ("fast", 1 / 16), ("proxy", 1 / 16))


class _Counter:
    """Counts sequences through blocks (and calls of the head) while attached."""

    def __init__(self, session: Session) -> None:
        self.block_sequences = 0
        blockwise = session.evaluator.blockwise
        self.handles = [b.register_forward_pre_hook(self._block) for b in blockwise.blocks]

    def _block(self, module, args) -> None:
        self.block_sequences += args[0].shape[0]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def full_forward_seconds(session: Session, repeats: int = 2) -> float:
    """One whole-model evaluation over every calibration token: what a table cell cost before."""
    evaluator = session.evaluator
    levels = np.zeros(session.space.n_units, dtype=int)
    evaluator.compose(levels)
    best = np.inf
    for r in range(repeats):
        candidate = levels.copy()
        candidate[0] = 1 + r % (session.space.n_levels[0] - 1)  # pruned in block 0: every block runs
        evaluator._memo.clear()  # noqa: SLF001 - measure a fresh evaluation
        best = min(best, timed(evaluator.fitness, candidate)[1])
    return best


def run_case(label: str, config: dict, budgets: list[str], extra: dict | None = None,
             table_kinds=KINDS) -> tuple[str, dict]:
    """Every kind of `table_kinds` on `config`, then the default table on `extra` settings when given."""
    runs = [(kind, fidelity, config) for kind, fidelity in table_kinds]
    if extra is not None:
        runs.append((RunConfig.table, RunConfig.table_fidelity, extra))
    rows, kinds, exact, exact_held, forwards = [], [], None, {}, {}
    for kind, fidelity, settings in runs:
        session = Session(RunConfig(**settings, table=kind, table_fidelity=fidelity), progress=False)
        _ = session.supernet, session.evaluator
        key = id(settings)
        if key not in forwards:
            forwards[key] = full_forward_seconds(session)
        forward, n_cells = forwards[key], int((session.space.n_levels - 1).sum())
        path = session.cache_dir / "tables" / f"{session.table_key()}.npz"
        reuse = kind == "exact" and path.is_file() and settings.get("model") is not None
        if not reuse:
            path.unlink(missing_ok=True)
        counter = _Counter(session)
        errors, seconds = timed(session.error_table)
        counter.close()
        work = None
        if reuse:  # the real model's exact table takes most of an hour: timed on a sample of its cells
            seconds = _sampled_exact_seconds(session, n_cells)
        else:
            work = counter.block_sequences / n_cells / (session.evaluator.blockwise.n_blocks * len(session.calib_tokens))
        if exact is None:
            exact = errors
        finite = np.isfinite(exact) & (exact > 0) & np.isfinite(errors)
        rho = float(spearmanr(exact[finite], errors[finite]).statistic)
        name = "exact" if kind == "exact" else f"{kind} ({fidelity:.3g})"
        if settings is not config:
            name += f", default: {session.config.calib_sequences} calibration sequences"
        entry = {"kind": kind, "fidelity": fidelity, "calib_sequences": session.config.calib_sequences,
                 "seconds": seconds, "forward_seconds": forward, "cells": n_cells,
                 "per_cell_share": seconds / n_cells / forward, "block_work_per_cell": work, "spearman": rho,
                 "budgets": {}}
        for budget in budgets:
            r = search(budget, method="dp", seed=0, session=session, progress=False)
            held = session.evaluator.heldout(session.space.levels_from_dict(r.levels))
            if kind == "exact":
                exact_held[budget] = np.array(held.batches)
            diff = np.array(held.batches) - exact_held[budget]
            noise = 2 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
            metric = budget.split("=")[0]
            entry["budgets"][budget] = {"calib_kl": r.fitness, "heldout_kl": r.heldout_fitness, "heldout": r.heldout,
                                        "difference": float(diff.mean()), "noise": float(noise),
                                        "ratio": r.cost[f"{metric}_ratio"], "levels": r.levels}
            rows.append([name, budget, f"{seconds:.1f}", f"{seconds / n_cells / forward:.4f}",
                         "" if work is None else f"{work:.4f}", f"{rho:.4f}", f"{r.fitness:.5g}",
                         f"{r.heldout_fitness:.5g}", "" if kind == "exact" else f"{diff.mean():+.2g} ± {noise:.2g}",
                         f"{r.heldout:.4g}"])
        kinds.append(entry)
    header = ["table", "budget", "table (s)", "time per cell / full forward", "block work per cell / full forward",
              "rank corr. with exact", "calib KL", "held-out KL", "held-out KL - exact's (± 2 se)", "held-out score"]
    n_cells, forward = kinds[0]["cells"], kinds[0]["forward_seconds"]
    text = (f"### {label}\n\n{n_cells} cells; one full forward over the calibration tokens: {forward:.2f} s.\n\n"
            + table(header, rows))
    return text, {"kinds": kinds}


def _sampled_exact_seconds(session: Session, n_cells: int, sample: int = 12) -> float:
    """The exact table's time, from `sample` cells spread over the units, measured afresh."""
    evaluator = session.evaluator
    units = np.linspace(0, session.space.n_units - 1, sample).astype(int)
    seconds = 0.0
    for u in units:
        levels = np.zeros(session.space.n_units, dtype=int)
        levels[u] = max(1, (session.space.n_levels[u] - 1) // 2)
        evaluator._memo.clear()  # noqa: SLF001 - measure a fresh evaluation
        seconds += timed(evaluator.fitness, levels)[1]
    return seconds / sample * n_cells


def run(args) -> Report:
    from .realmodel import real_model_dir

    parts, data = [], {}
    cases = [
        ("Default model, structured (lsq)", {"cache_dir": args.cache}, ["flops=0.3", "flops=0.5", "flops=0.7"], None,
         KINDS),
        ("Default model, unstructured (wanda)", {"cache_dir": args.cache, "granularity": "unstructured"},
         ["params=0.3", "params=0.5", "params=0.7"], None, KINDS),
    ]
    if not args.quick:
        model = str(real_model_dir(args.cache))
        cases.append(("SmolLM2-135M, structured (lsq), 32 calibration sequences",
                      {"cache_dir": args.cache, "model": model, "calib_sequences": 32}, ["flops=0.5", "flops=0.8"],
                      {"cache_dir": args.cache, "model": model},
                      KINDS[:2] + KINDS[3:]))  # 4 batches of 32 sequences: 1/8 and 1/16 are both one batch
    for label, config, budgets, extra, table_kinds in cases:
        text, case = run_case(label, config, budgets, extra, table_kinds)
        parts.append(text)
        data[label] = case
    how = ("dp at each budget on each table, seed 0; held-out scores on 128 held-out sequences. "
           "Table kinds: exact (every cell on every calibration token), fast (every cell on a share of the "
           "batches), proxy (the build's local errors, fitted per unit to two measured cells on a share).")
    return Report("tables", "Error tables: cost per cell and allocation quality", how, "\n\n".join(parts), data)
