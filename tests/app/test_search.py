from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from allocsearch import (
    Budget,
    BudgetError,
    ConfigError,
    Result,
    RunConfig,
    Session,
    search,
)

from ..tiny import tiny_config

CASES = [("gpt2", "structured"), ("opt", "structured"), ("llama", "structured"), ("bert", "structured"),
         ("gpt2", "unstructured"), ("llama", "unstructured")]


@pytest.mark.parametrize("family,granularity", CASES)
def test_results_never_exceed_the_budget(family, granularity, sessions):
    session = sessions(family, granularity)
    searched = 0
    for text in ("flops=0.8", "flops=0.6", "params=0.7", "flops=0.7,params=0.75"):
        budget = Budget.parse(text)
        try:
            limits = budget.limits(session.costs)
        except BudgetError:  # below what this tiny space reaches
            continue
        searched += 1
        result = search(budget, session=session, seed=0, progress=False)
        total = session.costs.total(session.space.levels_from_dict(result.levels))
        assert all(total[m] <= limit for m, limit in limits.items())
        for kind, value in budget.to_dict().items():
            ratio = {"flops": "flops_ratio", "params": "params_ratio"}[kind]
            assert result.cost[ratio] <= value + 1e-12
    assert searched >= 2


def test_seed_is_drawn_and_recorded_when_not_given(sessions):
    result = search("flops=0.7", session=sessions("gpt2"), progress=False)
    assert isinstance(result.seed, int) and result.config["model"] and len(result.history) == result.evaluations


def test_config_and_options_are_exclusive(model_dirs, cache_dir):
    with pytest.raises(ConfigError, match="either config= or keyword options"):
        search("flops=0.5", config=tiny_config(model_dirs["gpt2"], cache_dir), model="gpt2")


def test_half_precision_halves_the_bytes(model_dirs, cache_dir):
    full = search("flops=0.6", config=tiny_config(model_dirs["llama"], cache_dir), seed=0, progress=False)
    half = search("flops=0.6", config=tiny_config(model_dirs["llama"], cache_dir, dtype="bfloat16"), seed=0,
                  progress=False)
    assert half.cost["bytes"] == pytest.approx(full.cost["bytes"] / 2)
    assert half.levels == full.levels and np.isfinite(half.fitness)


def test_bad_run_options_name_the_fix():
    with pytest.raises(ConfigError, match="dtype='int8' must be one of float32"):
        RunConfig(dtype="int8")
    with pytest.raises(ConfigError, match="seq_len=0 must be a positive integer"):
        RunConfig(seq_len=0)


def test_the_build_learns_from_many_tokens_per_refit_input(model_dirs, cache_dir, caplog):
    """By default 16 tokens per input of the widest output projection (64 MLP channels: 64 windows of 16)."""
    session = Session(tiny_config(model_dirs["gpt2"], cache_dir), progress=False)
    assert session.build_tokens.shape == (64, 16) and len(session.calib_tokens) == 8
    assert session.supernet.manifest["tokens"] == 64 * 16
    few = Session(tiny_config(model_dirs["gpt2"], cache_dir, build_sequences=4), progress=False)
    with caplog.at_level(logging.WARNING):
        assert few.build_tokens.shape == (4, 16)
    assert "fewer than twice the 64 inputs of the widest output projection" in caplog.text


def test_stages_record_time_and_peak_memory():
    from allocsearch.app.stages import stage

    record = {}
    with stage(record, "work"):
        block = bytearray(64 * 2**20)  # 64 MB held for a while
        time.sleep(0.1)
        del block
    assert record["work"]["seconds"] >= 0.1 and record["work"]["peak_mb"] >= 64


def test_the_searchers_summary_is_saved_in_the_result(sessions, tmp_path):
    session = sessions("gpt2")
    result = search("flops=0.6", method="spdy", session=session, seed=0, progress=False, out=tmp_path / "r.json",
                    method_options={"starts": 4, "steps": 3})
    details = result.details
    assert details["starts"] == 4 and details["steps"] == 3 and details["measured"] == result.evaluations
    assert len(details["coefficients"]) == session.space.n_units
    assert Result.load(tmp_path / "r.json").details == details
    plain = search("flops=0.6", method="dp", session=session, seed=0, progress=False)
    assert plain.details == {}  # a searcher with nothing to report


def test_a_bad_searcher_option_is_refused_before_the_model_loads(tmp_path):
    """The model does not exist: the option's error comes first, so nothing was loaded."""
    with pytest.raises(ConfigError, match="starts=-1"):
        search("flops=0.5", method="spdy", method_options={"starts": -1}, model=str(tmp_path / "missing"),
               cache_dir=str(tmp_path), progress=False)
    assert not any(tmp_path.iterdir())
