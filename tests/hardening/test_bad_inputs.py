"""Every bad command-line input is one clear line on stderr and exit status 2, checked before expensive work.

Each case runs the real CLI in a fresh process (`python -m allocsearch.cli`), in a work folder of its
own holding an earlier result file (`result.json`), an earlier export (`export/`), a non-empty cache
(`cache/`) and the odd paths the cases name (a folder, a file where a folder belongs). Every case
must exit with 2, print exactly one line, `allocsearch: error: ...`, that names the flag, echoes the
value and says the fix (the substrings pinned per case), print no traceback, and leave the result
file and the export byte-for-byte as they were. Cases marked `early` must fail before any model is
loaded: their whole work folder, the cache included, is unchanged.

Starting the CLI takes seconds (imports), so a module fixture runs every case first, four at a time,
and the parametrized tests read the outcomes; on a two-core machine that is minutes, so the matrix
is `slow`. The same checks through the library (which the CLI calls) are fast and run always.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from allocsearch import Budget, BudgetError, ConfigError, Planner, search
from allocsearch.app import checkpoint
from allocsearch.app.ray_runner import check_address, connect_timeout
from allocsearch.core.budget import check_keeps_something

from ..tiny import free_port, synthetic_problem


@dataclass(frozen=True)
class Case:
    """One bad input: the argv (`{name}` fields filled from the fixture's paths), the substrings the
    error line must hold, and whether it must fail before any model is loaded."""

    id: str
    argv: list[str]
    expect: list[str]
    early: bool = True
    base: str = "search"  # the flags added after the command: search, model, cache or none
    env: dict[str, str] = field(default_factory=dict)


def _case(id, argv, *expect, early=True, base="search", env=None):
    return Case(id, list(argv), list(expect), early, base, dict(env or {}))


S = ["search", "--budget", "flops=0.5"]

CASES = [
    # argparse's own mistakes: one line, the flag, the value, the fix
    _case("missing-budget", ["search"], "the following arguments are required: --budget", "add them"),
    _case("unknown-command", ["serach"], "invalid choice: 'serach'", "'search'", base="none"),
    _case("no-command", [], "the following arguments are required: COMMAND", base="none"),
    _case("threads-not-int", [*S, "--threads", "x"], "argument --threads: 'x' is not an integer", "whole number"),
    _case("grid-step-not-number", [*S, "--grid-step", "abc"], "argument --grid-step: 'abc' is not a number"),
    _case("bad-granularity", [*S, "--granularity", "x"], "argument --granularity: invalid choice: 'x'",
          "'structured'"),
    _case("bad-criterion", [*S, "--criterion", "random"], "argument --criterion: invalid choice: 'random'"),
    _case("unrecognized", [*S, "--frobnicate", "3"], "unrecognized arguments: --frobnicate 3", "spelling"),
    _case("out-without-value", [*S, "--out"], "argument --out: expected one argument", base="cache"),
    _case("seed-float", [*S, "--seed", "1.5"], "argument --seed: '1.5' is not an integer"),
    _case("generations-not-int", [*S, "--method", "evolution", "--generations", "x"],
          "argument --generations: 'x' is not an integer"),
    _case("port-too-large", ["dashboard", "--study", "s", "--port", "99999"],
          "argument --port: 99999 is not a TCP port", "from 1 to 65535", base="none"),
    _case("export-without-out", ["export", "--result", "{w}/result.json"], "required: --out", base="none"),
    _case("quiet-after-command", ["search", "--budget", "flops=lots", "-q"], "budget flops='lots' is not a number"),
    # numbers the library refuses, before any model is loaded
    _case("seed-negative", [*S, "--seed", "-1"], "--seed -1 must be an integer from 0 to 4294967295"),
    _case("seed-too-large", [*S, "--seed", str(2**32)], f"--seed {2**32} must be an integer from 0"),
    _case("compare-seed-negative", ["compare", "--budget", "flops=0.5", "--seed", "-1"],
          "--seed -1 must be an integer from 0", base="model"),
    _case("workers-zero", [*S, "--workers", "0"], "--workers 0 must be a positive integer"),
    _case("workers-negative", [*S, "--workers", "-1"], "--workers -1 must be a positive integer"),
    _case("max-seconds-negative", [*S, "--max-seconds", "-1"], "--max-seconds -1.0 must be positive"),
    _case("device-unknown", [*S, "--device", "toaster"], "--device 'toaster': it is not a torch device",
          "use auto"),
    _case("device-missing-gpu", [*S, "--device", "cuda:99"], "--device 'cuda:99'", "use auto"),
    *([_case("device-cuda-on-cpu-torch", [*S, "--device", "cuda"], "--device 'cuda': this machine's torch has no "
             "cuda device", "use auto (a GPU when there is one) or cpu")] if not torch.cuda.is_available() else []),
    _case("damp-negative", [*S, "--damp", "-1"], "--damp -1.0 must be a finite number >= 0"),
    _case("calib-from-too-large", [*S, "--calib-from", "2"], "--calib-from 2.0 must be a removed fraction in [0, 1]"),
    _case("grid-step-zero", [*S, "--grid-step", "0"], "--grid-step 0.0 must lie in (0, 1]"),
    _case("max-level-too-large", [*S, "--max-level", "1.5"], "--max-level 1.5 must lie in (0, 1]"),
    _case("seq-len-zero", [*S, "--seq-len", "0"], "--seq-len 0 must be a positive integer"),
    _case("threads-zero", [*S, "--threads", "0"], "--threads 0 must be a positive integer"),
    _case("table-fidelity-too-large", [*S, "--table-fidelity", "2"], "--table-fidelity 2.0 must lie in (0, 1]"),
    _case("calib-missing", [*S, "--calib", "{w}/missing.txt"], "--calib '{w}/missing.txt': no such file"),
    _case("space-unknown", [*S, "--space", "mamba"], "--space 'mamba' is not a known family", "known families"),
    _case("objective-unknown", [*S, "--objective", "mse"], "--objective 'mse' is not an objective of any model"),
    # budgets
    _case("budget-percent-over-100", ["search", "--budget", "flops=150%"], "budget flops='150%' is more than dense",
          "at most 100%"),
    _case("budget-fraction-above-one", ["search", "--budget", "flops=1.5"], "budget flops='1.5' is neither a "
          "fraction of dense", "flops=0.5"),
    _case("budget-not-a-number", ["search", "--budget", "flops=lots"], "budget flops='lots' is not a number"),
    _case("budget-unknown-kind", ["search", "--budget", "watts=3"], "budget 'watts=3' must look like KIND=VALUE"),
    _case("budget-negative", ["search", "--budget", "flops=-0.5"], "budget flops='-0.5' must be positive"),
    # searcher options, before any model is loaded
    _case("method-unknown", [*S, "--method", "annealing"], "--method 'annealing' is unknown; choose one of"),
    _case("generations-negative", [*S, "--method", "evolution", "--generations", "-3"],
          "--generations -3 must be a positive integer"),
    _case("fidelities-decreasing", [*S, "--method", "evolution", "--fidelities", "0.5,0.25", "--survivors", "2,1"],
          "--fidelities (0.5, 0.25) must increase to 1.0"),
    _case("predictor-unknown", [*S, "--method", "evolution", "--predictor", "oracle"],
          "--predictor 'oracle' is unknown; choose one of"),
    _case("init-missing-file", [*S, "--method", "evolution", "--init", "{w}/nope.json"],
          "--init '{w}/nope.json': no such file", "result.json"),
    _case("init-unknown", [*S, "--method", "evolution", "--init", "nope"], "--init 'nope' must be one of"),
    _case("option-of-another-method", [*S, "--generations", "3"], "--generations do not apply to --method dp"),
    _case("spdy-resample", [*S, "--method", "spdy", "--resample", "2"], "--resample 2.0 must lie in (0, 1]"),
    _case("optuna-trials-zero", [*S, "--method", "optuna", "--trials", "0"], "--trials 0 must be a positive integer"),
    _case("optuna-keep", [*S, "--method", "optuna", "--keep", "1.5"], "--keep 1.5 must lie in (0, 1]"),
    _case("dlp-alpha", [*S, "--method", "dlp", "--alpha", "0.9"], "--alpha 0.9 must lie in [0, 0.5]"),
    _case("compare-methods-unknown", ["compare", "--budget", "flops=0.5", "--methods", "dp,nope"],
          "--methods 'dp,nope': choose from", base="model"),
    # Ray: bounded, configurable
    _case("ray-nothing-listening", [*S, "--workers", "2", "--ray-address", "127.0.0.1:{port}", "--ray-timeout", "1"],
          "--ray-address '127.0.0.1:{port}': nothing answered", "within 1 s", "--ray-timeout SECONDS waits longer"),
    _case("ray-client-nothing-listening", [*S, "--ray-address", "ray://127.0.0.1:{port}", "--ray-timeout", "0.5"],
          "--ray-address 'ray://127.0.0.1:{port}': nothing answered"),
    _case("ray-timeout-zero", [*S, "--workers", "2", "--ray-timeout", "0"],
          "--ray-timeout 0.0 must be a positive number of seconds"),
    _case("ray-address-no-port", [*S, "--ray-address", "headnode"], "--ray-address 'headnode' is not host:port"),
    _case("ray-timeout-variable", [*S, "--ray-address", "127.0.0.1:{port}"],
          "ALLOCSEARCH_RAY_TIMEOUT='soon' must be a positive number", env={"ALLOCSEARCH_RAY_TIMEOUT": "soon"}),
    # output paths, all checked before any model is loaded
    _case("out-is-directory", [*S, "--out", "{w}/folder"], "--out '{w}/folder' is a directory", "name a file"),
    _case("out-parent-is-file", [*S, "--out", "{w}/afile/result.json"], "--out '{w}/afile/result.json' cannot be "
          "made: '{w}/afile' is a file", "choose another path"),
    _case("out-read-only-place", [*S, "--out", "/proc/allocsearch-test/result.json"], "--out "
          "'/proc/allocsearch-test/result.json' cannot be written", "choose a writable location"),
    *([_case("out-read-only-directory", [*S, "--out", "{w}/readonly/result.json"], "--out "
             "'{w}/readonly/result.json' cannot be written: the directory '{w}/readonly' is not writable")]
      if os.geteuid() != 0 else []),  # root writes anywhere
    _case("checkpoint-is-directory", [*S, "--checkpoint", "{w}/folder"], "--checkpoint '{w}/folder' is a directory"),
    _case("export-is-file", [*S, "--export", "{w}/afile"], "--export '{w}/afile'"),
    _case("export-parent-is-file", [*S, "--export", "{w}/afile/pruned"], "--export '{w}/afile/pruned' cannot be "
          "made"),
    _case("export-not-an-export", [*S, "--export", "{w}/folder"], "--export '{w}/folder' exists and is not an "
          "allocsearch export"),
    _case("planner-is-directory", [*S, "--planner", "{w}/folder"], "--planner '{w}/folder' is a directory"),
    _case("plot-wrong-suffix", [*S, "--plot", "{w}/x.txt"], "--plot '{w}/x.txt': '.txt' is not a format", ".png"),
    _case("frontier-wrong-suffix", ["frontier", "--out", "{w}/x.txt"], "--out '{w}/x.txt': '.txt' is not a format",
          base="model"),
    _case("frontier-out-is-directory", ["frontier", "--out", "{w}/folder.png"], "--out '{w}/folder.png' is a "
          "directory", base="model"),
    _case("compare-out-dir-is-file", ["compare", "--budget", "flops=0.5", "--out-dir", "{w}/afile"],
          "--out-dir '{w}/afile' is a file, not a directory", base="model"),
    _case("export-out-parent-is-file", ["export", "--result", "{w}/result.json", "--out", "{w}/afile/pruned"],
          "--out '{w}/afile/pruned' cannot be made", base="none"),
    _case("export-recipe-out-is-directory", ["export", "--result", "{w}/result.json", "--format", "nni", "--out",
                                             "{w}/folder"], "--out '{w}/folder' is a directory", base="none"),
    _case("export-result-missing", ["export", "--result", "{w}/none.json", "--out", "{w}/pruned"],
          "--result '{w}/none.json': no such file", base="none"),
    # damaged input files
    _case("resume-truncated-checkpoint", [*S, "--method", "evolution", "--resume", "--checkpoint",
                                          "{w}/truncated.npz"], "--checkpoint '{w}/truncated.npz' cannot be read",
          "delete it"),
    _case("resume-bit-flipped-checkpoint", [*S, "--method", "evolution", "--resume", "--checkpoint",
                                            "{w}/flipped.npz"], "--checkpoint '{w}/flipped.npz' cannot be read",
          "delete it"),
    _case("query-truncated-planner", ["query", "--planner", "{w}/planner-truncated.npz", "--budget", "flops=0.5"],
          "--planner '{w}/planner-truncated.npz' cannot be read as a planner file", base="none"),
    _case("query-bit-flipped-planner", ["query", "--planner", "{w}/planner-flipped.npz", "--budget", "flops=0.5"],
          "--planner '{w}/planner-flipped.npz' cannot be read as a planner file", base="none"),
    _case("query-missing-planner", ["query", "--planner", "{w}/none.npz", "--budget", "flops=0.5"],
          "--planner '{w}/none.npz': no such file", base="none"),
    _case("search-bit-flipped-planner", [*S, "--planner", "{w}/planner-flipped.npz"],
          "--planner '{w}/planner-flipped.npz' cannot be read"),
    _case("frontier-truncated-planner", ["frontier", "--planner", "{w}/planner-truncated.npz", "--out",
                                         "{w}/f.png"], "--planner '{w}/planner-truncated.npz' cannot be read",
          base="none"),
    _case("dashboard-no-storage", ["dashboard", "--study", "nothing", "--port", "{port}"],
          "--study 'nothing': no storage", "run search --method optuna --study nothing first", base="none"),
    _case("dashboard-foreign-host", ["dashboard", "--study", "s", "--host", "192.0.2.123", "--port", "{port}"],
          "--port {port} on --host '192.0.2.123' cannot be served", base="none"),
    # after the model's config or weights are read, before the supernet is built
    _case("model-truncated-weights", ["search", "--budget", "flops=0.5", "--model", "{trunc}"],
          "--model '{trunc}': its weights cannot be read", "save or download the model again", early=False,
          base="cache"),
    _case("model-missing", ["search", "--budget", "flops=0.5", "--model", "{w}/no-model"],
          "--model '{w}/no-model' could not be loaded", early=False, base="cache"),
    _case("budget-removes-every-block", ["search", "--budget", "flops=0.31"], "budget flops=0.31 leaves room only "
          "for removing every block", "the smallest budget that keeps part of one is flops=0.3", early=False),
    _case("encoder-budget-removes-every-block", ["search", "--budget", "flops=0.004", "--model", "{bert}"],
          "budget flops=0.004 leaves room only for removing every block", "flops=0.0", early=False),
    _case("budget-below-reachable", ["search", "--budget", "flops=0.01"], "below the smallest reachable cost",
          early=False),
    _case("seq-len-over-positions", [*S, "--seq-len", "100"], "--seq-len 100 exceeds the model's 64 positions",
          early=False),
    _case("objective-of-encoders", [*S, "--objective", "pooled"], "--objective 'pooled' is not an objective of a "
          "language model", early=False),
]


def _tree(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`: its SHA-256, or 'dir'."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def _flip(source: Path, target: Path) -> None:
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def _truncate(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) * 2 // 3])


def _inputs(root: Path, models: dict[str, Path]) -> dict[str, Path]:
    """The damaged files the cases read, made once."""
    inputs = root / "inputs"
    inputs.mkdir()
    problem = synthetic_problem(0)
    Planner(problem.space, problem.costs, problem.errors).save(inputs / "planner.npz")
    saved = checkpoint.Saved(state={"generation": 3, "seen": np.zeros((4, 6), dtype=np.int16)},
                             history=[{"levels": [0] * 6, "fidelity": 1.0, "fitness": 0.5, "round": 0}] * 40,
                             rounds=[], grid={}, seconds=1.0)
    checkpoint.save(inputs / "checkpoint.npz", "identity", 7, saved)
    trunc = inputs / "truncated-model"
    shutil.copytree(models["gpt2"], trunc)
    _truncate(models["gpt2"] / "model.safetensors", trunc / "model.safetensors")
    return {"planner": inputs / "planner.npz", "checkpoint": inputs / "checkpoint.npz", "trunc": trunc}


def _work_folder(w: Path, inputs: dict[str, Path]) -> None:
    """A result file, an export and a cache from earlier runs, and the odd paths the cases name."""
    (w / "result.json").write_text('{"earlier": "result"}\n')
    (w / "export").mkdir()
    (w / "export" / "allocation.json").write_text('{"layout": "stock"}\n')
    (w / "export" / "model.safetensors").write_bytes(b"earlier weights")
    (w / "cache").mkdir()
    (w / "cache" / "earlier.bin").write_bytes(b"earlier cache")
    (w / "folder").mkdir()
    (w / "folder" / "keep.txt").write_text("not an export\n")
    (w / "folder.png").mkdir()
    (w / "afile").write_text("a file where a folder belongs\n")
    (w / "readonly").mkdir()
    _truncate(inputs["checkpoint"], w / "truncated.npz")
    _flip(inputs["checkpoint"], w / "flipped.npz")
    (w / "garbage.npz").write_bytes(bytes(range(256)) * 4)
    _truncate(inputs["planner"], w / "planner-truncated.npz")
    _flip(inputs["planner"], w / "planner-flipped.npz")
    (w / "readonly").chmod(stat.S_IRUSR | stat.S_IXUSR)


def _argv(case: Case, w: Path, models: dict[str, Path]) -> list[str]:
    model = ["--model", str(models["gpt2"]), "--seq-len", "16", "--calib-sequences", "8", "--heldout-sequences", "8",
             "--device", "cpu", "--cache", str(w / "cache")]
    base = {"search": [*model, "--out", str(w / "result.json"), "--export", str(w / "export")], "model": model,
            "cache": ["--cache", str(w / "cache"), "--seq-len", "16"], "none": []}[case.base]
    quiet = [] if case.early else ["-q"]  # a late failure follows progress messages, which -q silences
    return [*quiet, *case.argv[:1], *base, *case.argv[1:]]  # the case's own flags last: they win


def _run(case: Case, w: Path, fill: dict[str, str], models: dict[str, Path]) -> dict:
    argv = [part.format(**fill) for part in _argv(case, w, models)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ALLOCSEARCH_RAY_TIMEOUT")}
    env.update(ALLOCSEARCH_NO_PROGRESS="1", HF_HUB_OFFLINE="1", ALLOCSEARCH_CACHE=str(w / "cache"), **case.env)
    before = _tree(w)
    done = subprocess.run([sys.executable, "-m", "allocsearch.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=w, timeout=240)
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "before": before, "after": _tree(w)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, model_dirs):
    root = tmp_path_factory.mktemp("bad-inputs")
    models = {family: model_dirs[family] for family in ("gpt2", "bert")}
    inputs = _inputs(root, models)
    port = free_port()  # nothing listens on it
    jobs = {}
    for case in CASES:
        w = root / case.id
        w.mkdir()
        _work_folder(w, inputs)
        fill = {"w": str(w), "trunc": str(inputs["trunc"]), "bert": str(models["bert"]), "port": str(port)}
        jobs[case.id] = (w, fill)
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = {case.id: pool.submit(_run, case, *jobs[case.id], models) for case in CASES}
            results = {key: future.result() for key, future in futures.items()}
    finally:
        for w, _ in jobs.values():
            (w / "readonly").chmod(stat.S_IRWXU)
    return {key: {**result, "fill": jobs[key][1]} for key, result in results.items()}


def test_the_matrix_is_large_and_its_ids_unique():
    assert len(CASES) >= 70 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_is_one_line_and_exit_2(case, outcomes):
    outcome = outcomes[case.id]
    stderr = outcome["stderr"]
    assert outcome["rc"] == 2, stderr
    assert "Traceback" not in stderr and "Traceback" not in outcome["stdout"]
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("allocsearch: error: "), stderr
    for part in case.expect:
        assert part.format(**outcome["fill"]) in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_leaves_earlier_outputs_untouched(case, outcomes):
    before, after = outcomes[case.id]["before"], outcomes[case.id]["after"]
    kept = {k: v for k, v in before.items() if k == "result.json" or k.startswith("export")}
    assert {k: after.get(k) for k in kept} == kept
    assert set(after) >= set(before)  # nothing removed
    if case.early:  # failed before any model was loaded: nothing written anywhere, the cache included
        assert after == before


# The same checks through the library, in this process: fast.

@pytest.mark.parametrize("argument,make,message", [
    ("out", lambda t: {"out": t}, "out='{t}' is a directory"),
    ("checkpoint", lambda t: {"checkpoint": t / "afile" / "c.npz"}, "checkpoint='{t}/afile/c.npz' cannot be made"),
    ("export_dir", lambda t: {"export_dir": t / "afile" / "pruned"}, "export_dir='{t}/afile/pruned' cannot be made"),
    ("seed", lambda t: {"seed": -1}, "seed=-1 must be an integer from 0"),
    ("workers", lambda t: {"workers": 0}, "workers=0 must be a positive integer"),
    ("init", lambda t: {"init": t / "none.json"}, "init='{t}/none.json': no such file"),
])
def test_search_checks_its_arguments_before_loading_the_model(argument, make, message, tmp_path):
    """The model does not exist: an error about the argument proves it came first."""
    (tmp_path / "afile").write_text("a file")
    with pytest.raises(ConfigError if argument != "init" else FileNotFoundError, match=re.escape(
            message.format(t=tmp_path))):
        search("flops=0.5", model=str(tmp_path / "no-model"), cache_dir=str(tmp_path / "cache"), **make(tmp_path))
    assert not (tmp_path / "cache").exists()


def test_an_address_nothing_answers_is_given_up_within_the_timeout():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"ray_address='127.0.0.1:{port}': nothing answered .* within 0.5 s"):
        check_address(f"127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - start < 5
    with socket.socket() as server:  # something listening: the probe passes at once
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_address(f"ray://127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
    check_address("auto", timeout=0.5)  # Ray's own lookup, not probed


def test_the_ray_timeout_comes_from_the_argument_else_the_variable(monkeypatch):
    monkeypatch.setenv("ALLOCSEARCH_RAY_TIMEOUT", "7")
    assert connect_timeout(2) == 2.0 and connect_timeout(None) == 7.0
    monkeypatch.setenv("ALLOCSEARCH_RAY_TIMEOUT", "-1")
    with pytest.raises(ConfigError, match="ALLOCSEARCH_RAY_TIMEOUT='-1' must be a positive number"):
        connect_timeout(None)


@pytest.mark.parametrize("text,message", [("flops=150%", "is more than dense"), ("flops=1.5", "neither a fraction"),
                                          ("memory=2", "nor a plausible absolute size")])
def test_a_budget_over_dense_or_just_above_one_is_a_mistake(text, message):
    with pytest.raises(BudgetError, match=message):
        Budget.parse(text)
    assert Budget.parse("flops=100%").flops == 1.0 and Budget.parse("flops=3e6").flops == 3e6


def test_a_budget_only_removing_every_block_names_the_smallest_useful_one(sessions):
    session = sessions("gpt2")
    space, costs = session.space, session.costs
    top = space.n_levels - 1
    just_above = costs.total(top)["flops"] / costs.dense["flops"] + 1e-6  # the all-removed allocation fits
    budget = Budget(flops=just_above)
    with pytest.raises(BudgetError, match=r"only for removing every block .* is flops=\d\.\d+ of dense") as info:
        check_keeps_something(budget, budget.limits(costs), space, costs)
    useful = float(re.search(r"is flops=(\d\.\d+)", str(info.value)).group(1))
    budget = Budget(flops=useful)  # the named budget is enough
    check_keeps_something(budget, budget.limits(costs), space, costs)
