"""When a search or one of its rounds stops: `Limit`s, each read against a `Status`.

The search loop checks the search-wide ones (evaluations, seconds) for every method, between
generations of a resumable searcher and after every batch of the others. Evolution ends a round on
its own ones (generation, stalls).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Status:
    """Where a search stands."""

    evaluations: int = 0  # candidates evaluated, at any fidelity
    seconds: float = 0.0  # searching, over every run of a resumed search (a limit on it depends on the machine)
    generation: int = 0  # generations done in this round
    stalls: int = 0  # generations in a row without improvement


@dataclass(frozen=True)
class Limit:
    """Reached once the `Status` field `what` is at least `limit`."""

    what: str  # evaluations, seconds, generation or stalls
    limit: float

    def reached(self, status: Status) -> bool:
        return getattr(status, self.what) >= self.limit


def stop_conditions(max_evaluations: int | None, max_seconds: float | None) -> list[Limit]:
    """The search-wide limits given, checked by the loop."""
    limits = {"evaluations": max_evaluations, "seconds": max_seconds}
    return [Limit(what, value) for what, value in limits.items() if value is not None]
