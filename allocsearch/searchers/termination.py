"""When a search or one of its rounds stops: conditions as objects, each read against a `Status`.

The search loop checks the search-wide ones (`MaxEvaluations`, `MaxSeconds`) for every method,
between generations of a resumable searcher and after every batch of the others. Evolution ends a
round on its own ones (`Generations`, `Patience`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Status:
    """Where a search stands."""

    evaluations: int = 0  # candidates evaluated, at any fidelity
    seconds: float = 0.0  # searching, over every run of a resumed search
    generation: int = 0  # generations done in this round
    stalls: int = 0  # generations in a row without improvement


@dataclass(frozen=True)
class MaxEvaluations:
    limit: int

    def reached(self, status: Status) -> bool:
        return status.evaluations >= self.limit


@dataclass(frozen=True)
class MaxSeconds:
    """Wall time: a search stopped by it depends on the machine."""

    limit: float

    def reached(self, status: Status) -> bool:
        return status.seconds >= self.limit


@dataclass(frozen=True)
class Generations:
    limit: int

    def reached(self, status: Status) -> bool:
        return status.generation >= self.limit


@dataclass(frozen=True)
class Patience:
    limit: int

    def reached(self, status: Status) -> bool:
        return status.stalls >= self.limit


def stop_conditions(max_evaluations: int | None, max_seconds: float | None) -> list:
    """The search-wide conditions given, checked by the loop."""
    conditions = [] if max_evaluations is None else [MaxEvaluations(max_evaluations)]
    return conditions + ([] if max_seconds is None else [MaxSeconds(max_seconds)])
