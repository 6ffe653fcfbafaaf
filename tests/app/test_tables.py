from __future__ import annotations

import numpy as np
import pytest
import torch

from allocsearch import ConfigError, RunConfig, Session, search
from allocsearch.model._modules import get_module, linear_weight

from ..tiny import tiny_config


def test_exact_table_is_single_unit_fitness_and_cached(sessions):
    session = sessions("llama", table="exact")
    table = session.error_table()
    assert table.shape == (4, 17)
    assert (table[:, 0] == 0).all()
    assert np.isinf(table[0, 3:]).all() and np.isfinite(table[0, :3]).all()  # heads: 3 levels (2 kv groups)
    assert table[1, 5] == session.evaluator.fitness(np.array([0, 5, 0, 0]))
    count = session.evaluator.evaluations
    assert np.array_equal(session.error_table(), table)
    assert session.evaluator.evaluations == count  # read from the cache, nothing re-evaluated


def test_fast_table_scores_cells_on_a_share_of_the_batches(sessions):
    session = sessions("gpt2", table="fast", table_fidelity=0.5)
    table = session.error_table()
    assert table[3, 4] == session.evaluator.fitness(np.array([0, 0, 0, 4]), fidelity=0.5)


def test_table_depends_on_calibration_not_held_out_text(model_dirs, tmp_path):
    first = Session(tiny_config(model_dirs["gpt2"], tmp_path, table="exact"), progress=False)
    table = first.error_table()
    other = Session(tiny_config(model_dirs["gpt2"], tmp_path, table="exact", heldout_sequences=5), progress=False)
    assert np.array_equal(other.error_table(), table)
    assert other.evaluator.evaluations == 0  # read back: held-out text changes only held-out scores
    fewer = Session(tiny_config(model_dirs["gpt2"], tmp_path, table="exact", calib_sequences=4), progress=False)
    assert fewer.table_key() != first.table_key()


def build_inputs(session, module):
    """What `module` reads on the build's tokens in the dense model, in float64.  # (tokens, in)"""
    inputs = []
    handle = module.register_forward_pre_hook(lambda m, a: inputs.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for batch in session.build_tokens.split(session.config.batch_size):
            session.model(input_ids=batch, use_cache=False)
    handle.remove()
    return torch.cat(inputs).double()


@pytest.mark.parametrize("criterion", ["lsq", "wanda"])
def test_build_local_errors_are_the_output_projections_relative_error(criterion, model_dirs, tmp_path):
    """The proxy's input, computed in closed form from the Gram matrix, equals ||Y - Y'||^2 / ||Y||^2 measured
    on the build's tokens at the output projection of the dense block."""
    session = Session(tiny_config(model_dirs["gpt2"], tmp_path, criterion=criterion), progress=False)
    local = session.supernet.local_errors()
    u, level = 1, 5  # block 0's channels
    unit = session.space.units[u]
    consumer = get_module(session.model, unit.consumer.module)
    x = build_inputs(session, consumer)
    w, b = linear_weight(consumer).double(), consumer.bias.double()
    dense = x @ w.T + b
    session.composer.apply(np.eye(4, dtype=int)[u] * level)
    pruned = x[:, torch.from_numpy(unit.consumer.indices(np.flatnonzero(session.supernet.removal(u).numpy() > level)))]
    out = pruned @ linear_weight(consumer).double().T + consumer.bias.double()
    assert local[u, level] == pytest.approx(float(((dense - out) ** 2).sum() / (dense**2).sum()), rel=1e-6)
    assert (np.diff(local[u, : unit.n_levels]) >= -1e-12).all() and local[u, 0] == 0


def test_proxy_table_passes_through_its_measured_cells_on_a_power_law(sessions):
    session = sessions("llama", table="proxy", table_fidelity=0.5)
    table, local = session.error_table(), session.supernet.local_errors()
    for u, unit in enumerate(session.space.units):
        measured = sorted({1 + int(np.argmin(np.abs(unit.fractions[1:] - f))) for f in (0.25, 0.75)})
        for k in measured:
            levels = np.zeros(4, dtype=int)
            levels[u] = k
            assert table[u, k] == pytest.approx(session.evaluator.fitness(levels, 0.5), rel=1e-9)
        exponent = np.polyfit(np.log(local[u, 1 : unit.n_levels]), np.log(table[u, 1 : unit.n_levels]), 1)[0]
        slopes = np.diff(np.log(table[u, 1 : unit.n_levels])) / np.diff(np.log(local[u, 1 : unit.n_levels]))
        assert np.allclose(slopes, exponent) and 0.5 <= exponent <= 2  # one power law per unit
    assert np.isinf(table[0, 3:]).all()


def test_unstructured_local_errors_are_each_layers_relative_error(model_dirs, tmp_path):
    session = Session(tiny_config(model_dirs["llama"], tmp_path, granularity="unstructured"), progress=False)
    local = session.supernet.local_errors()
    u, level = 5, 9  # block 0's up projection
    layer = get_module(session.model, session.space.units[u].module)
    x, w = build_inputs(session, layer), linear_weight(layer).double()
    removed = w * (session.supernet.removal(u) <= level)
    assert local[u, level] == pytest.approx(float(((x @ removed.T) ** 2).sum() / ((x @ w.T) ** 2).sum()), rel=1e-5)


@pytest.mark.parametrize("kind", ["exact", "fast", "proxy"])
@pytest.mark.parametrize("granularity,budget", [("structured", "flops=0.5"), ("unstructured", "params=0.6")])
def test_every_table_gives_allocations_within_budget(kind, granularity, budget, sessions):
    session = sessions("qwen2", granularity, table=kind)
    for method in ("dp", "admm"):
        result = search(budget, method=method, seed=0, session=session, progress=False)
        metric, limit = budget.split("=")
        assert result.cost[f"{metric}_ratio"] <= float(limit) + 1e-9


def test_a_corrupt_table_is_measured_again(model_dirs, tmp_path, caplog):
    session = Session(tiny_config(model_dirs["gpt2"], tmp_path, table="fast"), progress=False)
    table = session.error_table()
    path = tmp_path / "tables" / f"{session.table_key()}.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    again = Session(tiny_config(model_dirs["gpt2"], tmp_path, table="fast"), progress=False)
    assert np.array_equal(again.error_table(), table)
    assert again.evaluator.evaluations > 0


def test_table_options_are_checked():
    with pytest.raises(ConfigError, match="table='slow' is unknown; choose one of exact, fast, proxy"):
        RunConfig(table="slow")
    with pytest.raises(ConfigError, match=r"table_fidelity=1.5 must lie in \(0, 1\]"):
        RunConfig(table_fidelity=1.5)
