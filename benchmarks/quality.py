"""Allocation quality of every method, on the default model and on a pretrained 135M language model.

For each model, granularity and two budgets (structured flops=0.6 and 0.5 with lsq, unstructured
params=0.5 and 0.3 with wanda), every registered method runs with seed 0 on one session, and
evolution and the Optuna study once more with the predictor (an RBF surrogate screening 4x as many
candidates). Reported per method: calibration fitness (what the search minimised), the same distortion
on held-out text, the held-out score (perplexity), the held-out perplexity excess over dense as a
multiple of uniform's, the real FLOPs and parameter ratios, evaluations and wall time. The error table
(read by dp, admm, spdy and the starts of evolution and the study) is built once per case and timed
apart. The iterative methods run on small budgets on the 135M model (see LARGE): one full evaluation
there costs seconds, not a fraction of one.

Beside each table: the rank correlation (Spearman) between calibration and held-out fitness over the
study's full-fidelity trials, and the predictor's own rank correlation with the fitness it predicted.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict

import numpy as np
from scipy.stats import spearmanr

from allocsearch import ConfigError, RunConfig, Session, search
from allocsearch.app.plot import plot_allocation
from allocsearch.searchers import SEARCHERS

from ._common import RESULTS, Report, table, timed
from .realmodel import real_model_dir

CASES = (("structured", ("flops=0.6", "flops=0.5")), ("unstructured", ("params=0.5", "params=0.3")))
PREDICTED = {"evolution+rbf": ("evolution", {"predictor": "rbf"}), "optuna+rbf": ("optuna", {"predictor": "rbf"})}
# The iterative methods' own budgets: seconds per evaluation on the default model, ~5 s on the 135M one.
SMALL = {"evolution": {"generations": 10}, "optuna": {"trials": 32, "batch": 8}, "random": {"samples": 32},
         "spdy": {"starts": 16, "steps": 16}}
LARGE = {"evolution": {"generations": 2, "offspring": 8}, "optuna": {"trials": 8, "batch": 4},
         "random": {"samples": 8}, "spdy": {"starts": 4, "steps": 4}}
REAL = {"calib_sequences": 32, "heldout_sequences": 32}  # on SmolLM2-135M: windows of 128 tokens


def methods() -> dict[str, tuple[str, dict]]:
    """Label -> (method, its own options): every registered method, and the predictor variants."""
    return {**{name: (name, {}) for name in SEARCHERS}, **PREDICTED}


def run_case(session: Session, budget: str, scale: dict, tmp: str) -> tuple[list[list], dict, object]:
    """Every method at `budget` on `session`: table rows, JSON data and the result best on held-out text."""
    dense = session.evaluator.dense_heldout
    rows, data, uniform_excess, best = [], {}, None, None
    for label, (method, options) in methods().items():
        options = {**scale.get(method, {}), **options}
        if method == "optuna":
            options |= {"study": label.replace("+", "-"), "storage": f"sqlite:///{tmp}/{label}.db"}
        try:
            r = search(budget, method=method, seed=0, session=session, progress=False, method_options=options)
        except ConfigError as error:  # a method for the other granularity: flap scores heads and channels
            rows.append([label, f"not for {session.config.granularity} spaces"] + [""] * 7)
            data[label] = {"refused": str(error)}
            continue
        excess = r.heldout - dense
        uniform_excess = excess if label == "uniform" else uniform_excess
        entry = {"fitness": r.fitness, "heldout_fitness": r.heldout_fitness, "heldout": r.heldout,
                 "excess_vs_uniform": excess / uniform_excess, "cost": r.cost, "evaluations": r.evaluations,
                 "seconds": r.seconds, "details": getattr(r, "details", {})}
        if method == "optuna":
            entry["calib_heldout_spearman"] = calib_heldout_correlation(session, r.history)
        data[label] = entry
        rows.append([label, f"{r.fitness:.4g}", f"{r.heldout_fitness:.4g}", f"{r.heldout:.3f}",
                     f"{entry['excess_vs_uniform']:.2f}", f"{r.cost['flops_ratio']:.3f}",
                     f"{r.cost['params_ratio']:.3f}", r.evaluations, f"{r.seconds:.1f}"])
        best = r if best is None or r.heldout < best.heldout else best
    return rows, data, best


def calib_heldout_correlation(session: Session, history: list[dict]) -> float | None:
    """Spearman correlation of calibration and held-out fitness over a study's distinct full-fidelity trials."""
    seen = {}
    for h in history:
        if h["fidelity"] == 1.0:
            seen.setdefault(tuple(h["levels"]), h["fitness"])
    if len(seen) < 3:
        return None
    held = [session.evaluator.heldout(np.array(levels)).fitness for levels in seen]
    return float(spearmanr(list(seen.values()), held).statistic)


def _figure(value: float | None) -> str:
    return "n/a (too few pairs)" if value is None else f"{value:.3f}"


def run_model(label: str, settings: dict, scale: dict) -> tuple[str, dict, list]:
    """Both granularities, both budgets each, on one model: markdown, JSON data and the best allocations' plots."""
    parts, data, plots = [], {}, []
    for granularity, budgets in CASES:
        session = Session(RunConfig(**settings, granularity=granularity), progress=False)
        _, table_seconds = timed(session.error_table)
        dense = session.evaluator.dense_heldout
        for budget in budgets:
            with tempfile.TemporaryDirectory() as tmp:
                rows, case, best = run_case(session, budget, scale, tmp)
            key = f"{granularity} {budget}"
            name = f"quality-{label.split()[0].lower()}-{granularity}-{budget.replace('=', '')}"
            (RESULTS / f"{name}.json").write_text(json.dumps(
                {k: v for k, v in asdict(best).items() if k != "history"}, indent=2, default=float) + "\n")
            plots.append(plot_allocation(best, RESULTS / f"{name}.png"))
            data[key] = {"dense_heldout": dense, "table_seconds": table_seconds, "methods": case}
            notes = [f"dense held-out ppl {dense:.3f}; error table {table_seconds:.0f} s (cached after the first)"]
            for name in ("optuna", "optuna+rbf"):
                notes.append(f"{name}: calib/held-out fitness Spearman over its trials "
                             f"{_figure(case[name]['calib_heldout_spearman'])}")
            for name in PREDICTED:
                d = case[name].get("details", {})
                notes.append(f"{name}: predictor Spearman {_figure(d.get('spearman'))}, Kendall "
                             f"{_figure(d.get('kendall'))} over {d.get('pairs', 0)} measured candidates, "
                             f"{d.get('screened_out', 0)} screened out unmeasured")
            parts.append(f"### {label}, {granularity} ({session.supernet.criterion}), {budget}\n\n"
                         + "; ".join(notes) + ".\n\n" + table(
                             ["method", "calib fitness", "held-out fitness", "held-out ppl",
                              "ppl excess / uniform's", "FLOPs ratio", "params ratio", "evaluations", "seconds"],
                             rows))
    return "\n\n".join(parts), data, plots


def compare_objectives(settings: dict, budget: str = "flops=0.5") -> tuple[str, dict]:
    """dp and admm minimising kl and topk_kl on one structured budget: which finds the lower held-out ppl."""
    rows, data = [], {}
    for objective in ("kl", "topk_kl"):
        session = Session(RunConfig(**settings, objective=objective), progress=False)
        for method in ("dp", "admm"):
            r = search(budget, method=method, seed=0, session=session, progress=False)
            data[f"{objective}/{method}"] = {"fitness": r.fitness, "heldout_fitness": r.heldout_fitness,
                                             "heldout": r.heldout, "evaluations": r.evaluations}
            rows.append([objective, method, f"{r.fitness:.4g}", f"{r.heldout_fitness:.4g}", f"{r.heldout:.3f}"])
    return (f"### SmolLM2-135M, structured, {budget}: the objective a search minimises\n\n" + table(
        ["objective", "method", "calib fitness", "held-out fitness", "held-out ppl"], rows)), data


def run(args) -> Report:
    models = [("Default model", {"cache_dir": args.cache}, SMALL)]
    if not args.quick:
        models.append(("SmolLM2-135M", {"model": str(real_model_dir(args.cache)), "cache_dir": args.cache,
                                        **REAL}, LARGE))
    parts, data, plots = [], {}, []
    for label, settings, scale in models:
        markdown, model_data, model_plots = run_model(label, settings, scale)
        parts.append(markdown)
        data[label] = model_data
        plots += model_plots
    if not args.quick:
        markdown, data["objectives"] = compare_objectives(models[-1][1])
        parts.append(markdown)
    return Report("quality", "Allocation quality of every method (default model and SmolLM2-135M)",
                  "seed 0; fitness is the run's objective (KL to the dense model) on the calibration windows, "
                  "held-out on held-out windows; seconds exclude the cached supernet, dense passes and error "
                  "table, and are short where a method proposed allocations an earlier one in the session had "
                  "measured (the evaluator remembers them: dp after admm, the predictor runs after the plain "
                  "ones). On SmolLM2-135M: 32 calibration and 32 held-out windows of 128 tokens, and the "
                  "iterative methods on small budgets: " + ", ".join(
                      f"{m} {o}" for m, o in LARGE.items()) + "; on the default model: " + ", ".join(
                      f"{m} {o}" for m, o in SMALL.items()) + ".", "\n\n".join(parts), data, plots)
