from __future__ import annotations

import numpy as np
import pytest

from allocsearch import Budget, BudgetError
from allocsearch.core.cost import METRICS, CostModel


def test_fractions_and_absolutes():
    assert Budget(flops=0.5).to_dict() == {"flops": 0.5}
    assert Budget.parse(["flops=50%", "memory=300MB"]).to_dict() == {"flops": 0.5, "memory": 3e8}
    assert Budget.parse("params=0.3,memory=1.5GiB").to_dict() == {"params": 0.3, "memory": 1.5 * 2**30}
    assert Budget.parse("flops=1.2e9").flops == 1.2e9


@pytest.mark.parametrize("text,match", [
    ("flops", "must look like KIND=VALUE"),
    ("flop=0.5", "KIND one of flops, params, memory"),
    ("flops=half", r"budget flops='half' is not a number"),
    ("flops=-1", "must be positive"),
    ("flops=300MB", "byte units are for memory budgets only"),
    ("flops=0.5,flops=0.4", "gives flops twice"),
])
def test_bad_budgets_name_the_value_and_the_fix(text, match):
    with pytest.raises(BudgetError, match=match):
        Budget.parse(text)


def test_empty_budget_is_an_error():
    with pytest.raises(BudgetError, match="budget is empty"):
        Budget()


def test_limits_and_infeasible_budget_states_the_smallest_reachable_cost(sessions):
    costs = sessions("gpt2").costs
    limits = Budget(flops=0.5, memory="50KB").limits(costs)
    assert limits == {"flops": 0.5 * costs.dense["flops"], "bytes": 5e4}
    smallest = costs.minimum["flops"] / costs.dense["flops"]
    with pytest.raises(BudgetError, match=rf"budget flops=0.1 is below the smallest reachable cost {smallest:.3f} of dense"):
        Budget(flops=0.1).limits(costs)
    assert costs.minimum["flops"] == costs.total(np.array([4, 16, 4, 16]))["flops"]


@pytest.mark.parametrize("deepest,hint", [(0.0, "outside the prunable units"), (2.0, r"allow deeper levels \(max_level=\)")])
def test_the_infeasible_budget_hint_names_deeper_levels_only_where_some_exist(deepest, hint):
    """Units that can already be removed whole leave only the constant: no deeper level would help."""
    costs = CostModel({m: np.array([[4.0, deepest], [4.0, deepest]]) for m in METRICS}, dict.fromkeys(METRICS, 2.0),
                      1, 2)
    with pytest.raises(BudgetError, match=hint):
        Budget(flops=0.1).limits(costs)
