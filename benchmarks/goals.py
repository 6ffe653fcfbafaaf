"""The speed, memory and quality goals against the figures the other parts wrote (results/*.json).

Reads only: run it after the parts it quotes. A goal whose part did not run says so.
"""

from __future__ import annotations

import json

from ._common import RESULTS, Report, table

# The quality tables of the release before suffix evaluation and proxy tables (exact tables, one torch
# thread): (calibration KL, held-out perplexity) per method.
BEFORE = {
    "structured": {"uniform": (0.0334, 8.353), "owl": (0.0721, 8.791), "admm": (0.0020, 7.965), "dp": (0.0021, 7.966)},
    "unstructured": {"uniform": (0.2122, 10.156), "owl": (0.7824, 18.026), "admm": (0.0405, 8.428),
                     "dp": (0.0466, 8.426)},
}


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _best(methods: dict, key: str) -> tuple[str, dict]:
    label = min((m for m in methods if key in methods[m]), key=lambda m: methods[m][key])
    return label, methods[label]


def quality_goals(quality: dict | None) -> list[list]:
    """Default model against the release before; the real model's best method against uniform and OWL."""
    if quality is None:
        return [["allocation quality (default model, SmolLM2-135M)", "", "not measured"]]
    rows = []
    default = quality.get("Default model", {})
    for (granularity, methods), case in zip(BEFORE.items(), ("structured flops=0.5", "unstructured params=0.3")):
        now = default.get(case, {}).get("methods", {})
        cells = [f"{m} ppl {ppl:.3f} -> {now[m]['heldout']:.3f}" for m, (_, ppl) in methods.items() if m in now]
        rows.append([f"default model quality within noise of before, or better ({case})", "",
                     "; ".join(cells) or "not measured"])
    real = quality.get("SmolLM2-135M", {})
    for case, data in real.items():
        methods, dense = data["methods"], data["dense_heldout"]
        by_heldout, best = _best(methods, "heldout")
        by_calib, picked = _best(methods, "fitness")
        if case.startswith("structured"):
            rows.append([f"SmolLM2-135M {case}: best method's held-out ppl excess over dense vs uniform's",
                         "<= 0.7x", f"{best['excess_vs_uniform']:.2f}x ({by_heldout}, ppl {best['heldout']:.2f}, "
                         f"dense {dense:.2f}); lowest calibration fitness: {by_calib} "
                         f"{picked['excess_vs_uniform']:.2f}x"])
        elif case == "unstructured params=0.5":
            owl = methods["owl"]["heldout"] - dense
            rows.append([f"SmolLM2-135M {case}: best method's held-out ppl excess vs OWL's", "<= 1x",
                         f"{(best['heldout'] - dense) / owl:.2f}x ({by_heldout}, ppl {best['heldout']:.2f}, OWL "
                         f"{methods['owl']['heldout']:.2f}); lowest calibration fitness: {by_calib} "
                         f"{(picked['heldout'] - dense) / owl:.2f}x"])
    return rows


def run(args) -> Report:
    rows = []
    tables = _load("tables")
    if tables is None:
        rows.append(["error table per cell <= 1/8 of a full forward, as good on held-out text", "", "not measured"])
    else:
        for case, data in tables.items():
            if not isinstance(data, dict) or "kinds" not in data:
                continue
            default = [k for k in data["kinds"] if k["kind"] == "proxy"][-1]
            verdicts = []
            for budget, b in default["budgets"].items():
                verdict = "better" if b["difference"] < -b["noise"] else "within noise" if abs(b["difference"]) <= \
                    b["noise"] else "worse"
                verdicts.append(f"{budget}: {verdict}")
            rows.append([f"error table per cell <= 1/8 of a full forward, as good on held-out text ({case}; "
                         f"proxy, {default['calib_sequences']} calibration sequences)", "<= 0.125",
                         f"{default['per_cell_share']:.4f} of a full forward; held-out KL against exact's: "
                         + "; ".join(verdicts)])
    mainjob = _load("mainjob")
    real = next((v for k, v in (mainjob or {}).items() if k.startswith("SmolLM2")), None)
    if real is None:
        rows.append(["main job on a 135M model, cold", "<= 600 s", "not measured"])
        rows.append(["peak memory on a 135M model", "<= 3x float32 weights", "not measured"])
    else:
        rows.append(["main job on a 135M model, cold (SmolLM2-135M)", "<= 600 s", f"{real['seconds']:.0f} s"])
        rows.append(["peak memory on a 135M model (the whole process)", "<= 3x float32 weights",
                     f"{real['peak_mb']:.0f} MB = {real['peak_mb'] / real['weights_mb']:.2f}x "
                     f"{real['weights_mb']:.0f} MB"])
    rows += quality_goals(_load("quality"))
    build = _load("build")
    default = next((b for b in (build or {}).get("builds", []) if b["build_sequences"] == 192), None)
    if default is None:
        rows.append(["real model: uniform's held-out KL within 2x of its calibration KL", "<= 2x", "not measured"])
    else:
        before = build["builds"][0]
        rows.append(["real model: uniform's held-out KL within 2x of its calibration KL (flops=0.8)", "<= 2x",
                     f"{default['heldout_kl'] / default['calib_kl']:.2f}x ({default['calib_kl']:.3f} vs "
                     f"{default['heldout_kl']:.3f}); build and fitness on the same 8 windows: "
                     f"{before['heldout_kl'] / before['calib_kl']:.1f}x"])
    return Report("goals", "Goals against the measured figures", "quoted from the sections below (their JSON in "
                  "benchmarks/results/).", table(["goal", "target", "measured"], rows))
