"""Property tests of every searcher over random spaces, cost tables, budgets and fitnesses.

A random `World` stands in for a model: a search space (structured heads and channels, or
unstructured linear layers, on a random level grid), cost tables counted as `model.build` counts
them (linear in the kept groups; unstructured bytes the cheapest of dense, bitmask and CSR), a
constant outside the units, an error table, every signal, and a deterministic fitness (the errors
plus seeded interactions between units, perturbed below full fidelity). Searchers run through the
product's own loop (`app.loop.run_search`) with an in-process runner on the world, so refined grids,
start allocations and fidelities are exercised as in a real search. For every registered searcher:

1. every allocation it asks and the one it returns meet every limit (`core.budget.within`);
2. levels are integers, one per unit, within each unit's levels;
3. the same seed gives the same candidates, levels and fitness;
4. it never ends worse than a given start allocation;

and a budget below the smallest reachable cost is refused with an `AllocSearchError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from allocsearch import SEARCHERS, AllocSearchError, Budget, BudgetError, Problem
from allocsearch.app.loop import run_search
from allocsearch.core.budget import KINDS, within
from allocsearch.core.cost import METRICS, CostModel
from allocsearch.core.space import LevelGrid, SearchSpace, Unit
from allocsearch.solvers.price import error_slopes
from allocsearch.solvers.repair import repair

SEQ_LEN = 8
DTYPE_BYTES = 2

# Small runs of every registered searcher: (id, method, options).
CONFIGS = [
    ("uniform", "uniform", {}),
    ("owl", "owl", {}),
    ("admm", "admm", {}),
    ("dp", "dp", {}),
    ("ecoflap", "ecoflap", {}),
    ("ecoflap-per-weight", "ecoflap", {"block_score": "per_weight"}),
    ("flap", "flap", {}),
    ("cfsp", "cfsp", {}),
    ("dlp", "dlp", {}),
    ("random", "random", {"samples": 8}),
    ("spdy", "spdy", {"starts": 4, "steps": 4}),
    ("evolution", "evolution", {"generations": 2, "offspring": 5, "fidelities": (0.25, 1.0), "survivors": (2, 1)}),
    ("evolution-rounds", "evolution", {"generations": 2, "offspring": 4, "rounds": 2, "init": "uniform",
                                       "fidelities": (1.0,), "survivors": (1,)}),
    ("optuna", "optuna", {"trials": 6, "batch": 3, "storage": ":memory:"}),
    ("optuna-prune", "optuna", {"trials": 6, "batch": 3, "storage": ":memory:", "sampler": "random",
                                "prune": 0.5, "keep": 0.5, "warm_start": ("dp", "uniform")}),
    ("optuna-nsga2", "optuna", {"trials": 6, "batch": 3, "storage": ":memory:", "sampler": "nsga2"}),
]


@dataclass(frozen=True)
class Shape:
    """What a unit's costs are counted from (as `model.build._unit_cost` counts them)."""

    weights: int  # structured: weights per group; unstructured: rows of the layer
    bias: int = 0  # structured: bias entries per group
    attention: int = 0  # heads: attention flops per kept group (4 * seq_len * head_dim * heads per group)


@dataclass
class World:
    """A synthetic model: its space, costs, errors, signals and fitness, all functions of removed fractions."""

    space: SearchSpace
    shapes: dict[str, Shape]
    constant_share: dict[str, float]  # constant cost as a share of the units' dense cost
    scale: np.ndarray  # (units,) error at everything removed
    power: np.ndarray  # (units,) error curve's exponent
    interactions: np.ndarray  # (units, units) symmetric, zero diagonal
    signals: dict[str, np.ndarray]
    stages: dict = field(default_factory=dict)

    # -- what a session offers the search loop -------------------------------------------------

    def on_grid(self, counts, grid: LevelGrid) -> World:
        space = self.space.with_counts(counts, grid)
        return World(space, self.shapes, self.constant_share, self.scale, self.power, self.interactions,
                     self.signals, self.stages)

    @cached_property
    def costs(self) -> CostModel:
        return costs_of(self.space, self.shapes, self.constant_share)

    def error_table(self, runner=None) -> np.ndarray:
        table = self.scale[:, None] * np.nan_to_num(self.space.fraction_table, nan=0.0) ** self.power[:, None]
        return np.where(np.isnan(self.space.fraction_table), np.inf, table)  # (units, max_levels)

    def signal(self, name: str) -> np.ndarray:
        return self.signals[name]

    def fitness(self, levels: np.ndarray, fidelity: float) -> float:
        f = self.space.fractions(levels)  # (units,)
        value = float((self.scale * f ** self.power).sum() + f @ self.interactions @ f)
        wobble = math.sin(7.0 * float(f @ np.arange(1, len(f) + 1)))  # fewer tokens: a different, fixed score
        return value * (1 + 0.3 * (1 - fidelity) * wobble)


class Runner:
    """Scores candidates on a world, checking each one first."""

    def __init__(self, world: World, limits: dict[str, float]) -> None:
        self.world, self.limits, self.asked = world, limits, []

    def evaluate(self, allocations, fidelity: float = 1.0) -> list[float]:
        for levels in allocations:
            check_levels(self.world.space, levels)
            assert within(self.world.costs, np.asarray(levels), self.limits), "asked an allocation over the budget"
        self.asked += [(np.asarray(a).tolist(), fidelity) for a in allocations]
        return [self.world.fitness(np.asarray(a), fidelity) for a in allocations]

    def close(self) -> None:
        pass


def check_levels(space: SearchSpace, levels) -> None:
    levels = np.asarray(levels)
    assert np.issubdtype(levels.dtype, np.integer), levels.dtype
    assert levels.shape == (space.n_units,)
    assert (levels >= 0).all() and (levels < space.n_levels).all(), (levels, space.n_levels)


def costs_of(space: SearchSpace, shapes: dict[str, Shape], constant_share: dict[str, float]) -> CostModel:
    """Cost tables counted as `model.build.costs_from_model` counts them."""
    tables = {m: np.full((space.n_units, int(space.n_levels.max())), np.inf) for m in METRICS}
    for u, unit in enumerate(space.units):
        s = shapes[unit.name]
        for k, removed in enumerate(unit.counts):
            if unit.kind == "linear":
                rows, cols = s.weights, unit.groups
                nnz = rows * (cols - removed)
                storage = min(rows * cols * DTYPE_BYTES, -(-rows * cols // 8) + nnz * DTYPE_BYTES,
                              nnz * (DTYPE_BYTES + 4) + (rows + 1) * 4)
                row = {"flops": 2.0 * nnz, "params": float(nnz), "bytes": float(storage)}
            else:
                kept = unit.groups - removed
                params = kept * (s.weights + s.bias)
                row = {"flops": 2.0 * kept * s.weights + kept * s.attention, "params": float(params),
                       "bytes": float(params * DTYPE_BYTES)}
            for m in METRICS:
                tables[m][u, k] = row[m]
    constant = {m: constant_share[m] * float(tables[m][:, 0].sum()) for m in METRICS}
    return CostModel(tables, constant, SEQ_LEN, DTYPE_BYTES)


@st.composite
def worlds(draw, granularity: str | None = None) -> World:
    granularity = granularity or draw(st.sampled_from(["structured", "unstructured"]))
    structured = granularity == "structured"
    fit = draw(st.sampled_from([None, None, None, "decilm"])) if structured else None
    grid = LevelGrid(step=draw(st.sampled_from([1 / 2, 1 / 3, 1 / 4, 0.3, 1 / 8, 1 / 16])),
                     max_level=draw(st.sampled_from([None, 0.4, 0.75, 0.95, 1.0])),
                     channel_multiple=draw(st.sampled_from([1, 1, 8, 32])), fit=fit)
    blocks = draw(st.integers(1, 4))
    hidden = draw(st.sampled_from([8, 16, 64]))
    units, shapes = [], {}
    for b in range(blocks):
        if structured:
            for kind in draw(st.sampled_from([("heads", "channels"), ("heads",), ("channels",)])):
                name = f"b{b}.{kind}"
                if kind == "heads":
                    groups, per_group = draw(st.integers(1, 8)), draw(st.integers(1, 3))
                    head_dim = draw(st.sampled_from([2, 4, 8]))
                    counts = grid.counts(groups, granularity, whole=fit is not None)
                    shapes[name] = Shape(weights=(2 * per_group + 2) * head_dim * hidden,
                                         bias=draw(st.sampled_from([0, (per_group + 2) * head_dim])),
                                         attention=4 * SEQ_LEN * head_dim * per_group)
                    units.append(Unit(name=name, kind=kind, block=b, groups=groups, counts=counts,
                                      heads_per_group=per_group, head_dim=head_dim))
                else:
                    groups = draw(st.integers(1, 600))
                    counts = grid.counts(groups, granularity, grid.channel_step)
                    shapes[name] = Shape(weights=draw(st.sampled_from([2, 3])) * hidden, bias=draw(st.integers(0, 1)))
                    units.append(Unit(name=name, kind=kind, block=b, groups=groups, counts=counts))
        else:
            for i in range(draw(st.integers(1, 3))):
                name = f"b{b}.linear{i}"
                cols = draw(st.integers(1, 300))
                shapes[name] = Shape(weights=draw(st.integers(1, 300)))
                units.append(Unit(name=name, kind="linear", block=b, groups=cols,
                                  counts=grid.counts(cols, granularity), module=name))
    space = SearchSpace("synthetic", "causal_lm", granularity, tuple(units), {}, grid)
    n = space.n_units
    constant_share = {m: draw(st.floats(0.01, 3.0)) for m in METRICS}  # embeddings, LM head: never 0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = np.where(rng.random(n) < 0.15, 0.0, rng.exponential(1.0, n))  # some units cost no error at all
    power = rng.uniform(0.5, 3.0, n)
    w = rng.normal(0.0, draw(st.sampled_from([0.0, 0.1, 0.5])), (n, n))
    interactions = np.triu(w, 1) + np.triu(w, 1).T
    flat = draw(st.booleans())  # every block alike: ties everywhere
    signals = {"outlier_ratios": np.full(blocks, 0.05) if flat else rng.uniform(0, 0.1, blocks),
               "zeroth_order": np.ones(blocks) if flat else rng.uniform(0.1, 2, blocks),
               "block_angles": np.full(blocks, 0.2) if flat else rng.uniform(0.05, 0.5, blocks),
               "wanda_median": np.ones(blocks) if flat else rng.uniform(0.01, 1, blocks),
               "wifv": np.full((n, max(u.groups for u in units)), np.nan)}
    for u, unit in enumerate(units):  # standardised within the unit; all equal: all 0
        z = rng.standard_normal(unit.groups)
        signals["wifv"][u, : unit.groups] = (z - z.mean()) / z.std() if z.std() > 0 else 0.0
    return World(space, shapes, constant_share, scale, power, interactions, signals)


@st.composite
def budgets(draw, costs: CostModel) -> Budget:
    """One to three limits, each from the tightest reachable to dense, as a fraction or an absolute value."""
    kinds = draw(st.lists(st.sampled_from(list(KINDS)), min_size=1, max_size=3, unique=True))
    values = {}
    for kind in kinds:
        metric = KINDS[kind]
        low, high = costs.minimum[metric], costs.dense[metric]
        share = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)))
        absolute = low + share * (high - low)
        as_fraction = draw(st.booleans()) or absolute <= 2  # (1, 2] is refused as neither
        values[kind] = (low / high if share == 0.0 else min(1.0, absolute / high)) if as_fraction else absolute
    return Budget(**values)


@st.composite
def starts(draw, world: World, limits: dict[str, float]):
    """None, or a feasible start allocation: random levels, then deeper ones until every limit holds."""
    if draw(st.booleans()):
        return None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = world.space.n_levels - 1
    levels = (rng.random(world.space.n_units) * (top + 1)).astype(np.int64)
    while not within(world.costs, levels, limits):
        levels[int(rng.choice(np.flatnonzero(levels < top)))] += 1
    return levels


@st.composite
def cases(draw):
    """(world, budget, start allocation or None)."""
    world = draw(worlds())
    budget = draw(budgets(world.costs))
    return world, budget, draw(starts(world, budget.limits(world.costs)))


def pinned(units: list[Unit], shapes: dict[str, Shape], grid: LevelGrid, constant_share: float = 1.0,
           scale=None, power=None) -> World:
    """A world written out: a shrunk counterexample, with every signal alike and no interactions."""
    granularity = "unstructured" if units[0].kind == "linear" else "structured"
    space = SearchSpace("synthetic", "causal_lm", granularity, tuple(units), {}, grid)
    n, blocks = space.n_units, max(u.block for u in units) + 1
    wifv = np.full((n, max(u.groups for u in units)), np.nan)
    for u, unit in enumerate(units):
        wifv[u, : unit.groups] = 0.0
    signals = {"outlier_ratios": np.full(blocks, 0.05), "zeroth_order": np.ones(blocks),
               "block_angles": np.full(blocks, 0.2), "wanda_median": np.ones(blocks), "wifv": wifv}
    return World(space, shapes, dict.fromkeys(METRICS, constant_share), np.asarray(scale or np.ones(n)),
                 np.asarray(power or np.ones(n)), np.zeros((n, n)), signals)


def linear(block: int, cols: int, counts: tuple[int, ...]) -> Unit:
    return Unit(name=f"b{block}.linear0", kind="linear", block=block, groups=cols, counts=counts,
                module=f"b{block}.linear0")


# limit - constant fell an ulp below the cheapest allocation's unit cost: dp (and optuna's warm start,
# spdy) refused a budget every searcher must meet (fixed: core.problem.unit_limit)
ULP_BELOW = (pinned([linear(0, 3, (0, 2))], {"b0.linear0": Shape(weights=1)}, LevelGrid(step=0.5),
                    constant_share=0.2826442632482141), Budget(flops=3.6958655794892845), None)
# the tightest budget where a unit can go whole: a unit limit of 1e-14, whose shares overflowed HiGHS
# into "infeasible" (fixed: milp.py scales such a row by the costs)
NEAR_ZERO = (pinned([Unit(name="b0.heads", kind="heads", block=0, groups=1, counts=(0, 1), head_dim=2)],
                    {"b0.heads": Shape(weights=64, attention=64)}, LevelGrid(step=0.5)),
             Budget(flops=192.0, params=64.0), None)
# unstructured bytes are flat where sparse storage does not yet beat dense: repair stopped at a level
# that saved nothing (fixed: repair.py steps to the next cheaper level)
FLAT_BYTES = (pinned([linear(0, 3, (0, 1, 2, 3)), linear(1, 1, (0, 1)), linear(2, 9, (0, 1, 2, 3, 4, 6, 7, 8)),
                      linear(3, 1, (0, 1))],
                     {"b0.linear0": Shape(weights=77), "b1.linear0": Shape(weights=1), "b2.linear0": Shape(weights=1),
                      "b3.linear0": Shape(weights=1)}, LevelGrid(step=0.125),
                     scale=[1.21315442, 1.33977324, 0.24761479, 0.0], power=[1.18742342, 2.14358254, 1.90566416,
                                                                           0.87515566]),
              Budget(memory=519.0), None)
# a limit just below dense: SciPy's HiGHS failed in presolve ("Solve error") on this two-unit program
# (fixed: milp.py solves again without presolve)
PRESOLVE = (pinned([Unit(name="b0.heads", kind="heads", block=0, groups=1, counts=(0, 1), head_dim=2),
                    Unit(name="b1.channels", kind="channels", block=1, groups=1, counts=(0, 1))],
                   {"b0.heads": Shape(weights=64, attention=64), "b1.channels": Shape(weights=16)},
                   LevelGrid(step=0.5), constant_share=0.01),
            Budget(flops=0.9999999999999999, params=1.0), None)


def run(world: World, method: str, options: dict, limits: dict[str, float], seed: int, init=None):
    """One search through the product's loop; returns (outcome, the asked (levels, fidelity) in order)."""
    runners = []

    def runner_factory(session: World) -> Runner:
        runners.append(Runner(session, limits))
        return runners[-1]

    outcome = run_search(world, SEARCHERS[method], limits=limits, seed=seed, options=dict(options),
                         runner_factory=runner_factory, init=init, progress=False)
    return outcome, [a for r in runners for a in r.asked]


def check_properties(world: World, method: str, options: dict, budget: Budget, seed: int, init) -> None:
    limits = budget.limits(world.costs)
    outcome, asked = run(world, method, options, limits, seed, init)
    final = outcome.session  # a refined round's grid, where there was one
    check_levels(final.space, outcome.levels)  # 2. valid levels
    assert within(final.costs, outcome.levels, limits)  # 1. every limit met
    assert outcome.fitness == pytest.approx(final.fitness(outcome.levels, 1.0), rel=1e-12, abs=1e-12)
    if init is not None:  # 4. never worse than the start
        assert outcome.fitness <= world.fitness(init, 1.0) + 1e-12
    again, asked_again = run(world, method, options, limits, seed, init)  # 3. same seed, same search
    assert asked_again == asked
    assert again.levels.tolist() == outcome.levels.tolist()
    assert again.fitness == outcome.fitness


def test_every_registered_searcher_is_covered():
    assert {method for _, method, _ in CONFIGS} == set(SEARCHERS)


@pytest.mark.parametrize("method, options", [pytest.param(m, o, id=i) for i, m, o in CONFIGS])
@given(case=cases(), seed=st.integers(0, 2**31 - 1))
@example(case=ULP_BELOW, seed=0)
@example(case=NEAR_ZERO, seed=0)
@example(case=FLAT_BYTES, seed=0)
@example(case=PRESOLVE, seed=0)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_searchers_meet_the_budget_with_valid_levels_deterministically(method, options, case, seed):
    world, budget, init = case
    if method == "flap" and world.space.granularity == "unstructured":  # FLAP scores heads and channels
        with pytest.raises(AllocSearchError, match="granularity='structured'"):
            run(world, method, options, budget.limits(world.costs), seed, init)
        return
    check_properties(world, method, options, budget, seed, init)


@given(case=cases())
@example(case=(pinned([Unit(name="b0.heads", kind="heads", block=0, groups=1, counts=(0,), head_dim=2),
                       Unit(name="b0.channels", kind="channels", block=0, groups=4, counts=(0, 1))],
                      {"b0.heads": Shape(weights=64, attention=64), "b0.channels": Shape(weights=16)},
                      LevelGrid(step=0.25, max_level=0.4)), Budget(flops=0.97), None))
@settings(max_examples=30, deadline=None)
def test_softmax_slopes_are_finite(case):
    """A unit with one level (a single head under max_level < 0.5) had a NaN slope, which made every
    standardised slope NaN and every softmax temperature the same allocation (fixed: price.py)."""
    world, budget, _ = case
    problem = Problem(world.space, world.costs, budget.limits(world.costs), errors=world.error_table())
    assert np.isfinite(error_slopes(problem, problem.errors)).all()


def test_repair_steps_past_levels_that_save_nothing():
    """One linear layer of 16 weights per row: removing one weight saves no bytes (a bitmask and 15
    values take what 16 dense values take); repair must go on to a level that does."""
    world = pinned([linear(0, 16, tuple(range(16)))], {"b0.linear0": Shape(weights=1)}, LevelGrid(step=1 / 16),
                   constant_share=0.1)
    costs = world.costs
    assert costs.tables["bytes"][0, 0] == costs.tables["bytes"][0, 1]
    limits = {"bytes": costs.constant["bytes"] + costs.tables["bytes"][0, 2]}
    problem = Problem(world.space, costs, limits)
    levels = repair(problem, np.array([0]), world.error_table())
    assert levels.tolist() == [2]


def test_the_tightest_fraction_is_reachable():
    """A budget of exactly minimum / dense (here 15 / 22, whose product with 22 rounds to 14.999...) is
    accepted, so some allocation must meet it."""
    costs = CostModel({m: np.array([[7.0, 0.0]]) for m in METRICS}, dict.fromkeys(METRICS, 15.0), 1, 2)
    limits = Budget(flops=15 / 22).limits(costs)
    assert within(costs, np.array([1]), limits)


@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_a_budget_below_the_smallest_reachable_cost_is_refused(data):
    world = data.draw(worlds())
    kind = data.draw(st.sampled_from(list(KINDS)))
    costs = world.costs
    metric = KINDS[kind]
    fraction = costs.minimum[metric] / costs.dense[metric] * data.draw(st.floats(0.01, 0.999))
    with pytest.raises(BudgetError, match=rf"budget {kind}=.* is below the smallest reachable cost"):
        Budget(**{kind: fraction}).limits(costs)


@pytest.mark.parametrize("method, options", [pytest.param(m, o, id=i) for i, m, o in CONFIGS])
@given(data=st.data())
@settings(max_examples=8, deadline=None)
def test_searchers_refuse_limits_nothing_meets(method, options, data):
    """Limits given directly (a `Problem` made by hand, past `Budget`) below the smallest reachable cost:
    an `AllocSearchError`, never a crash or a hang."""
    world = data.draw(worlds("structured" if method == "flap" else None))
    metrics = data.draw(st.lists(st.sampled_from(METRICS), min_size=1, max_size=3, unique=True))
    costs = world.costs
    limits = {m: costs.minimum[m] * data.draw(st.floats(0.5, 0.999)) for m in metrics}
    with pytest.raises(AllocSearchError):
        run(world, method, options, limits, 0)
