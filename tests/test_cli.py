from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from allocsearch import load_pruned
from allocsearch.cli import main

from .tiny import tiny_args

RESULT_KEYS = {"method", "budget", "allocation", "levels", "cost", "fitness", "heldout", "seed", "evaluations",
               "config"}


def test_search_prints_the_table_and_writes_result_and_model(model_dirs, tmp_path, capsys):
    out, export, plot = tmp_path / "result.json", tmp_path / "pruned", tmp_path / "allocation.png"
    code = main(["-q", "search", "--budget", "flops=0.5", "--seed", "3", "--out", str(out), "--export", str(export),
                 "--plot", str(plot), *tiny_args(model_dirs, tmp_path / "cold-cache")])  # every stage runs
    assert code == 0
    printed = capsys.readouterr().out
    assert "calib KL" in printed and "held-out KL" in printed and "held-out ppl" in printed and "FLOPs ratio" in printed
    assert "stages (time / peak memory): build" in printed
    result = json.loads(out.read_text())
    assert RESULT_KEYS <= set(result)
    assert {"flops", "flops_ratio", "params", "params_ratio", "bytes"} <= set(result["cost"])
    assert result["cost"]["flops_ratio"] <= 0.5 and result["seed"] == 3 and result["method"] == "dp"
    assert f"{result['cost']['flops_ratio']:.3f}" in printed
    assert load_pruned(export) is not None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result["stages"]) == {"build", "reference", "table", "search", "heldout", "export"}
    assert all(s["seconds"] >= 0 and s["peak_mb"] > 0 for s in result["stages"].values())
    assert result["config"]["threads"] >= 1 and result["heldout_fitness"] > 0


def test_export_writes_every_format(model_dirs, cache_dir, tmp_path, capsys):
    unstructured = tmp_path / "unstructured.json"
    assert main(["-q", "search", "--budget", "params=0.6", "--granularity", "unstructured", "--out", str(unstructured),
                 "--export", str(tmp_path / "packed"), "--export-format", "compressed",
                 *tiny_args(model_dirs, cache_dir, "llama")]) == 0
    assert json.loads((tmp_path / "packed" / "allocation.json").read_text())["layout"] == "compressed"
    assert load_pruned(tmp_path / "packed") is not None
    for fmt, out in (("hf", "masked"), ("llm-compressor", "recipe.yaml"), ("nni", "nni.json")):
        assert main(["-q", "export", "--result", str(unstructured), "--format", fmt, "--out", str(tmp_path / out)]) == 0
        assert (tmp_path / out).exists()
    printed = capsys.readouterr().out
    assert "dense shapes with zeros: from_pretrained loads it as is" in printed
    assert "llm-compressor recipe ->" in printed
    sparsity = json.loads((tmp_path / "masked" / "allocation.json").read_text())["sparsity"]
    assert sparsity == pytest.approx(json.loads(unstructured.read_text())["allocation"], abs=0.02)
    assert main(["-q", "export", "--result", str(unstructured), "--format", "torch-pruning", "--out",
                 str(tmp_path / "tp.json")]) == 2
    assert "needs a result of granularity structured" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--export-format", "compressed"], ("--export-format 'compressed' writes unstructured allocations, and this one "
                                         "is structured; use --export-format 'hf'")),
    (["--export-format", "decilm"], "--export-format 'decilm' needs a search with --fit 'decilm'"),
    (["--granularity", "unstructured", "--export-format", "decilm"], "writes structured allocations")])
def test_an_export_format_the_search_cannot_end_in_is_refused_before_the_model_loads(flags, message, tmp_path, capsys):
    code = main(["-q", "search", "--budget", "flops=0.5", "--model", str(tmp_path / "no-model"), "--export",
                 str(tmp_path / "pruned"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "no-model" not in err


def test_several_budgets_at_once(model_dirs, cache_dir, tmp_path):
    out = tmp_path / "result.json"
    assert main(["-q", "search", "--budget", "flops=0.8", "--budget", "params=0.5", "--out", str(out),
                 *tiny_args(model_dirs, cache_dir, "llama")]) == 0
    cost = json.loads(out.read_text())["cost"]
    assert cost["flops_ratio"] <= 0.8 and cost["params_ratio"] <= 0.5


def test_encoder_and_unstructured_and_user_text(model_dirs, cache_dir, tmp_path, capsys):
    calib, heldout = tmp_path / "calib.txt", tmp_path / "heldout.txt"
    calib.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(60)))
    heldout.write_text("\n".join(f"row {i}: pack my box with five dozen liquor jugs" for i in range(60)))
    out = tmp_path / "result.json"
    assert main(["-q", "search", "--budget", "params=0.6", "--granularity", "unstructured", "--calib", str(calib),
                 "--heldout", str(heldout), "--out", str(out), *tiny_args(model_dirs, cache_dir, "bert")]) == 0
    assert "held-out cosine" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["config"]["calib"] == str(calib) and 0 < result["heldout"] < 1


def test_info_lists_units_levels_and_costs(model_dirs, cache_dir, capsys):
    assert main(["-q", "info", "--errors", *tiny_args(model_dirs, cache_dir, "llama")]) == 0
    printed = capsys.readouterr().out
    assert "family llama" in printed and "model.layers.1.channels" in printed and "error per level" in printed


def run_cli(*args, cwd=None):
    env = {**os.environ, "ALLOCSEARCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "allocsearch.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--budget", "flops=lots"], "budget flops='lots' is not a number"),
    (["--budget", "flops=0.5", "--method", "annealing"], "--method 'annealing' is unknown; choose one of"),
    (["--budget", "flops=0.5", "--calib", "missing.txt"], "--calib 'missing.txt': no such file"),
    (["--budget", "flops=0.5", "--space", "mamba"], "--space 'mamba' is not a known family; known families"),
    (["--budget", "flops=0.5", "--grid-step", "0"], "--grid-step 0.0 must lie in (0, 1]"),
    (["--budget", "flops=0.5", "--method", "evolution", "--generations", "0"], "--generations 0 must be a positive"),
    (["--budget", "flops=0.01"], "below the smallest reachable cost"),
    (["--budget", "flops=0.5", "--generations", "3", "--warm-start", "dp"],
     "--generations, --warm-start do not apply to --method dp"),
    (["--budget", "flops=0.5", "--objective", "mse"], "--objective 'mse' is not an objective of any model"),
    (["--budget", "flops=0.5", "--objective", "pooled"],
     "--objective 'pooled' is not an objective of a language model; choose one of kl, topk_kl"),
])
def test_user_errors_exit_2_with_one_line(args, message, model_dirs, cache_dir, tmp_path):
    done = run_cli("search", *args, *tiny_args(model_dirs, cache_dir), "--out", str(tmp_path / "r.json"), cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_the_library_names_parameters_where_the_cli_names_flags(sessions):
    """The same mistakes through Python speak of keyword arguments, not of flags."""
    from allocsearch import ConfigError, RunConfig, search

    with pytest.raises(ConfigError, match=r"^grid_step=0 must lie in \(0, 1\]"):
        RunConfig(grid_step=0)
    with pytest.raises(ConfigError, match=r"^generations=0 must be a positive integer"):
        search("flops=0.5", method="evolution", session=sessions("gpt2"), method_options={"generations": 0})
    with pytest.raises(ConfigError, match=r"^max_seconds=-1 must be positive"):
        search("flops=0.5", session=sessions("gpt2"), max_seconds=-1)


def test_missing_model_directory_is_a_user_error(tmp_path):
    done = run_cli("info", "--model", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "could not be loaded" in done.stderr and "Traceback" not in done.stderr


def test_same_seed_same_result_in_fresh_processes(model_dirs, tmp_path):
    results = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.json"
        done = run_cli("search", "--budget", "flops=0.45", "--seed", "7", "--out", str(out),
                       *tiny_args(model_dirs, tmp_path / f"cache-{run}", "qwen2"))
        assert done.returncode == 0, done.stderr
        result = json.loads(out.read_text())
        result.pop("seconds")
        result.pop("stages")  # wall times and memory peaks
        result["config"].pop("cache_dir")
        results.append(result)
    assert results[0] == results[1]


def test_method_flags_reach_their_searcher(model_dirs, cache_dir, tmp_path):
    """`--init FILE.json` starts evolution from that result; `--warm-start` and `--study` reach Optuna."""
    import optuna

    args = ["--budget", "flops=0.5", "--seed", "1", *tiny_args(model_dirs, cache_dir)]
    assert main(["-q", "search", "--method", "uniform", "--out", str(tmp_path / "u.json"), *args]) == 0
    start = list(json.loads((tmp_path / "u.json").read_text())["levels"].values())
    assert main(["-q", "search", "--method", "evolution", "--init", str(tmp_path / "u.json"), "--generations", "1",
                 "--offspring", "4", "--out", str(tmp_path / "e.json"), *args]) == 0
    evolved = json.loads((tmp_path / "e.json").read_text())
    assert evolved["history"][0]["levels"] == start and evolved["options"]["generations"] == 1
    storage = f"sqlite:///{tmp_path}/s.db"
    assert main(["-q", "search", "--method", "optuna", "--warm-start", "uniform", "--trials", "4", "--batch", "4",
                 "--study", "flags", "--storage", storage, "--out", str(tmp_path / "o.json"), *args]) == 0
    trials = optuna.load_study(study_name="flags", storage=storage).trials
    assert trials[0].user_attrs["warm_start"] == "uniform" and trials[0].user_attrs["levels"] == start


def test_every_option_field_is_a_flag(model_dirs, cache_dir, tmp_path):
    """Flags come from each searcher's Options dataclass: tuples comma-separated, a new searcher's too."""
    args = ["--budget", "flops=0.5", "--seed", "1", *tiny_args(model_dirs, cache_dir)]
    assert main(["-q", "search", "--method", "random", "--samples", "3", "--out", str(tmp_path / "r.json"),
                 *args]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["evaluations"] == 3
    assert main(["-q", "search", "--method", "evolution", "--generations", "1", "--offspring", "4", "--fidelities",
                 "0.5,1", "--survivors", "2,1", "--out", str(tmp_path / "e.json"), *args]) == 0
    options = json.loads((tmp_path / "e.json").read_text())["options"]
    assert options["fidelities"] == [0.5, 1.0] and options["survivors"] == [2, 1]


def test_quiet_goes_before_or_after_the_subcommand():
    from allocsearch.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["search", "--budget", "flops=0.5", "-q"]).quiet is True
    assert parser.parse_args(["-q", "search", "--budget", "flops=0.5"]).quiet is True
    assert parser.parse_args(["search", "--budget", "flops=0.5"]).quiet is False


def test_argparse_mistakes_are_one_line_without_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--budget", "flops=0.5", "--threads", "many"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage:" not in err and err.count("\n") == 1
    assert err.startswith("allocsearch: error: argument --threads: 'many' is not an integer;")


def test_library_names_become_flags_even_without_a_value():
    from allocsearch.cli import _as_flags

    flags = {"max_level": "--max-level", "grid_step": "--grid-step"}
    assert _as_flags("allow deeper levels (max_level=)", flags) == "allow deeper levels (--max-level)"
    assert _as_flags("grid_step=0 must lie in (0, 1]", flags) == "--grid-step 0 must lie in (0, 1]"
