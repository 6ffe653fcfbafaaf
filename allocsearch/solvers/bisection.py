"""The one bisection every solver shares: the smallest value at which a monotone test holds."""

from __future__ import annotations

from collections.abc import Callable


def smallest_feasible(feasible: Callable[[float], bool], low: float, high: float, *, iterations: int,
                      grow: float | None = None, ceiling: float = float("inf")) -> float:
    """The smallest x in (low, high] with `feasible(x)`, to within (high - low) / 2**iterations.

    `feasible` must be monotone: False below some threshold, True from it on. With `grow`, the
    interval first moves up (`low` to `high`, `high` times `grow`) until `high` is feasible or
    reaches `ceiling`. Returns the feasible end of the final interval; the caller checks it where
    nothing may be feasible at all.

    >>> round(smallest_feasible(lambda x: x * x >= 2, 0.0, 1.0, iterations=40, grow=2), 6)
    1.414214
    """
    if grow is not None:
        while not feasible(high) and high < ceiling:
            low, high = high, high * grow
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (low, mid) if feasible(mid) else (mid, high)
    return high
