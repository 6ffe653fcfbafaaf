"""The outcome of a search, saved as JSON with everything needed to reproduce and export it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import _io
from ..errors import InputFileError


@dataclass
class Result:
    """A searched allocation, its cost and measured quality.

    `allocation` maps unit names to removed fractions, `levels` to level indices; `cost` has
    `flops` (per token at `seq_len`), `params`, `bytes` and their ratios to dense; `fitness` is the
    calibration distortion the run's objective measures (`config["objective"]`, None for the task's
    default: KL to dense or top-k KL for language models, NMSE or 1 - cosine of pooled or first-position
    embeddings for encoders; lower is better), `heldout_fitness` the same objective on held-out tokens
    (far above `fitness`: the search fit its calibration text), `heldout` the held-out score
    (perplexity for language models, the cosine of mean-pooled embeddings for encoders) and `dense_heldout` the dense model's. `config` and `seed` reproduce the run;
    `history` lists every evaluated candidate; `stages` the seconds and peak memory (MB) of each stage;
    `details` what the searcher reports of itself (`Searcher.summary()`).
    """

    method: str
    budget: dict[str, float]
    allocation: dict[str, float]
    levels: dict[str, int]
    cost: dict[str, float]
    fitness: float
    heldout: float | None
    dense_heldout: float | None
    seed: int
    evaluations: int
    config: dict
    space: dict
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # the searcher's own options
    heldout_fitness: float | None = None
    stages: dict = field(default_factory=dict)  # stage -> {seconds, peak_mb}
    details: dict = field(default_factory=dict)  # the searcher's summary(): e.g. a predictor's rank correlation

    def save(self, path: str | Path) -> None:
        """Write atomically as JSON."""
        _io.write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Result:
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"result={str(path)!r}: no such file; pass a result.json written by a search")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise InputFileError(f"result={str(path)!r} is not a result file written by allocsearch ({exc})") from None
