"""Checkpoints of a search: one `.npz`, written atomically at a resumable searcher's generation boundary.

A checkpoint holds the searcher's `state()`, the history so far, the grids of the rounds and the
seconds spent. Resuming checks that it was written by the same search (`fingerprint` of method,
options, seed, budget, configuration, space and start) and continues from it: the result is
identical to an uninterrupted run, since every evaluation is a pure function of (allocation,
fidelity, data).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _io
from ..errors import ConfigError
from .paths import READ_ERRORS, damage

log = logging.getLogger(__name__)
FORMAT = 2


@dataclass
class Saved:
    """What a checkpoint holds."""

    state: dict  # the searcher's
    history: list[dict]
    rounds: list[list[list[int]]]  # per round, the removed counts of every level of every unit
    grid: dict  # the last round's LevelGrid, as a dict
    seconds: float  # spent searching so far


def fingerprint(**parts) -> str:
    """A hash of everything that makes two searches the same search."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_seed(path: Path) -> int | None:
    """The seed a checkpoint was written with (to resume a search whose seed was drawn), if readable."""
    try:
        return int(_io.read_npz(path)[0]["seed"])
    except READ_ERRORS:
        return None


def check_readable(path: Path) -> None:
    """Raise `ConfigError` when the checkpoint at `path` is damaged: a resume checks it before any model
    is loaded.

    For example::

        check_readable(Path("result.json.checkpoint.npz"))
    """
    _read(path)


def _read(path: Path) -> tuple[dict, dict]:
    """(meta, arrays) of a checkpoint, every part `load` reads present; `ConfigError` otherwise."""
    try:
        meta, arrays = _io.read_npz(path)
        if not isinstance(meta, dict):
            raise ValueError("its metadata is not a mapping")
        missing = [k for k in ("format", "identity", "seed", "state", "rounds", "grid", "seconds") if k not in meta]
        missing += [k for k in ("seen", "levels", "fidelity", "fitness", "round") if k not in arrays]
        if missing:
            raise KeyError(", ".join(missing))
    except READ_ERRORS as exc:
        raise ConfigError(f"checkpoint={str(path)!r} cannot be read ({damage(exc)}); delete it to start afresh, "
                          "or name another file") from None
    return meta, arrays


def save(path: Path, identity: str, seed: int, saved: Saved) -> None:
    state = saved.state
    plain = {k: v for k, v in state.items() if k != "seen"}  # JSON; the seen allocations go as an array
    meta = {"format": FORMAT, "identity": identity, "seed": seed, "state": plain, "rounds": saved.rounds,
            "grid": saved.grid, "seconds": saved.seconds}
    history = saved.history
    arrays = {
        "seen": state["seen"],
        "levels": np.array([h["levels"] for h in history], dtype=np.int16).reshape(len(history), -1),
        "fidelity": np.array([h["fidelity"] for h in history]), "fitness": np.array([h["fitness"] for h in history]),
        "round": np.array([h["round"] for h in history], dtype=np.int16),
    }
    _io.write_npz(path, meta, arrays)


def load(path: Path, identity: str) -> Saved | None:
    """The checkpoint of this search at `path`; None when there is none."""
    if not path.is_file():
        log.info("no checkpoint at %s; starting afresh", path)
        return None
    meta, arrays = _read(path)
    if meta.get("format") != FORMAT or meta.get("identity") != identity:
        raise ConfigError(f"checkpoint={str(path)!r} was written by a different search (method, options, seed, "
                          "budget or model); rerun that search to resume it, or set resume=False to start afresh")
    state = {**meta["state"], "seen": arrays["seen"]}
    history = [{"levels": lv.astype(int).tolist(), "fidelity": float(fd), "fitness": float(ft), "round": int(r)}
               for lv, fd, ft, r in zip(arrays["levels"], arrays["fidelity"], arrays["fitness"], arrays["round"])]
    return Saved(state, history, meta["rounds"], meta["grid"], float(meta["seconds"]))
