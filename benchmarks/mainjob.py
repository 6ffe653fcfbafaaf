"""The README main job (structured dp at flops=0.5, default calibration, export), cold, as a user runs it.

`allocsearch search --budget flops=0.5 --out result.json --export pruned-model` runs in a fresh process
with an empty cache (the model itself comes from its own cache: the embedded default model is trained
once, the real model converted once), on the default model and on SmolLM2-135M. Reported: wall time
by stage and the peak resident memory of each stage (from the result's `stages`), the process's peak
(its maximum RSS) against the model's float32 weights, and the result's quality. The allocation and
the dp frontier are drawn beside the result.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import RESULTS, Report, table


def run_main_job(model: str | None, cache: Path, work: Path) -> dict:
    """The main job in a fresh process: its result, wall time and maximum resident memory."""
    out, export, plan = work / "result.json", work / "pruned-model", work / "plan.npz"
    command = [sys.executable, "-m", "allocsearch.cli", "-q", "search", "--budget", "flops=0.5", "--out", str(out),
               "--export", str(export), "--planner", str(plan), "--cache", str(cache)]
    if model is not None:
        command += ["--model", model]
    start = time.perf_counter()
    with open(work / "stderr.txt", "w") as stderr:
        job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                               env={**os.environ, "ALLOCSEARCH_NO_PROGRESS": "1"})
        _, status, usage = os.wait4(job.pid, 0)  # this process's own peak, not the largest child's so far
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the main job failed:\n{(work / 'stderr.txt').read_text()}")
    result = json.loads(out.read_text())
    return {"result": result, "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "plan": plan}


def run(args) -> Report:
    from safetensors import safe_open

    from allocsearch import Planner, Result
    from allocsearch.app.plot import plot_allocation, plot_frontier
    from allocsearch.model.default_model import default_model_dir

    from .realmodel import real_model_dir

    models = [("default model (6 x 128 byte-level GPT-2; its training included)", None,
               default_model_dir(args.cache), "default")]
    if not args.quick:
        models.append(("SmolLM2-135M", str(real_model_dir(args.cache)), real_model_dir(args.cache), "smollm2"))
    rows, stage_rows, data, plots = [], [], {}, []
    for label, model, directory, short in models:
        with safe_open(str(Path(directory) / "model.safetensors"), framework="pt") as f:
            weights_mb = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) * 4 / 2**20  # float32
        with tempfile.TemporaryDirectory() as tmp:
            job = run_main_job(model, Path(tmp) / "cache", Path(tmp))
            result = Result(**job["result"])
            plots.append(plot_allocation(result, RESULTS / f"mainjob-{short}-allocation.png"))
            plots.append(plot_frontier(Planner.load(job["plan"]), "flops", RESULTS / f"mainjob-{short}-frontier.png"))
            (RESULTS / f"mainjob-{short}-result.json").write_text(json.dumps(job["result"], indent=2) + "\n")
        stages = result.stages
        ratio = f"{job['peak_mb'] / weights_mb:.2f}x" if model is not None else "(a 5 MB model: torch itself)"
        rows.append([label, f"{job['seconds']:.0f}", f"{job['peak_mb']:.0f}", f"{weights_mb:.0f}", ratio,
                     f"{result.fitness:.4g}", f"{result.heldout_fitness:.4g}",
                     f"{result.heldout:.4g} (dense {result.dense_heldout:.4g})", f"{result.cost['flops_ratio']:.3f}"])
        for name, stage in stages.items():
            stage_rows.append([label, name, f"{stage['seconds']:.1f}", f"{stage['peak_mb']:.0f}"])
        data[label] = {"seconds": job["seconds"], "peak_mb": job["peak_mb"], "weights_mb": weights_mb,
                       "stages": stages, "fitness": result.fitness, "heldout_fitness": result.heldout_fitness,
                       "heldout": result.heldout, "dense_heldout": result.dense_heldout,
                       "flops_ratio": result.cost["flops_ratio"]}
    text = table(["model", "wall time, cold (s)", "peak memory (MB)", "float32 weights (MB)", "peak / weights",
                  "calib KL", "held-out KL", "held-out ppl", "FLOPs ratio"], rows)
    text += "\n\nBy stage (model loading and tokenizing fall outside the stages):\n\n" + table(
        ["model", "stage", "seconds", "peak memory (MB)"], stage_rows)
    return Report("mainjob", "The main job, cold, on the default model and a pretrained 135M model",
                  "`allocsearch search --budget flops=0.5 --out result.json --export pruned-model` in a fresh "
                  "process and an empty cache; torch threads as defaulted (this machine's cores).", text, data, plots)
