"""Evaluating candidates on Ray actors: the only module that imports Ray.

`RayRunner(session, workers=N)` starts N actors. Each builds the session's evaluator once from the
session's configuration: it loads the model and opens the caches the driver built (the supernet and
the dense passes, read from the cache directory a batch or a variant at a time) and fixes its torch
thread count.
`evaluate(allocations, fidelity)` hands candidates to whichever actor is free and returns the
fitnesses in candidate order. An evaluation is a pure function of (allocation, fidelity, data), so
a seeded search gives the same result for any number of workers.

- Local by default: a Ray instance is started with `include_dashboard=False` and one more logical
  CPU than the actors reserve, so that two actors holding a CPU each cannot starve another task on a
  two-core machine. `address=` or `RAY_ADDRESS` joins a cluster instead; Ray's token
  authentication is switched on for the client when a token is at hand (`RAY_AUTH_TOKEN`,
  `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`).
- Fault tolerance: actors restart when they die and their unfinished evaluations are retried, so
  the result does not change.
- GPUs: when the session evaluates on CUDA, each actor reserves one GPU (`num_gpus=1`): run one
  worker per GPU.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray
from ray.util import ActorPool

from ..core.space import LevelGrid
from ..errors import ConfigError
from ..model._torch import available_cores
from .config import RunConfig
from .runners import InProcessRunner
from .session import Session

log = logging.getLogger(__name__)


class _Worker:
    """One actor: a session rebuilt from the driver's configuration, evaluating candidates."""

    def __init__(self, spec: dict) -> None:
        session = Session(RunConfig.from_dict(spec["config"]), progress=False)
        session = session.on_grid(spec["counts"], LevelGrid(**spec["grid"]))  # the driver's grid
        self.evaluator = session.evaluator

    def evaluate(self, levels: list[int], fidelity: float) -> float:
        return self.evaluator.fitness(np.asarray(levels), fidelity)

    def pid(self) -> int:
        return os.getpid()


def _token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


_local_ray_started = False  # whether `connect` started the local Ray this process is attached to


def connect(workers: int, threads: int, address: str | None = None) -> float:
    """Start or join Ray; returns the seconds it took (0 when Ray was already up and big enough)."""
    global _local_ray_started
    address = address or os.environ.get("RAY_ADDRESS")
    cpus = workers * threads + 1
    if ray.is_initialized():
        too_small = ray.cluster_resources().get("CPU", 0) < cpus
        if not (_local_ray_started and too_small and not address):
            return 0.0
        ray.shutdown()  # the local Ray we started is too small for this many workers: start a bigger one
    start = time.perf_counter()
    try:
        if address:
            if "RAY_AUTH_MODE" not in os.environ and _token_available():
                os.environ["RAY_AUTH_MODE"] = "token"
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            cores = available_cores()
            if workers * threads > cores:
                log.warning("%d workers x %d torch threads each on %d cores: they oversubscribe this machine and "
                            "evaluate slower than fewer would; pass threads=%d (results then differ from "
                            "threads=%d in the last digits), or fewer workers", workers, threads, cores,
                            max(1, cores // workers), threads)
        _local_ray_started = not address
    except ConnectionError as exc:
        raise ConfigError(f"ray_address={address!r}: cannot join the Ray cluster ({exc}); check the address, "
                          "and with token authentication set RAY_AUTH_TOKEN or copy the head's ~/.ray/auth_token") from None
    return time.perf_counter() - start


class RayRunner:
    """Evaluates candidates on `workers` Ray actors, in candidate order.

    For example::

        runner = RayRunner(session, workers=2)
        runner.evaluate([levels_a, levels_b])  # [0.041, 0.037]
    """

    def __init__(self, session, *, workers: int, address: str | None = None, timeout: float = 300.0) -> None:
        if workers < 1:
            raise ConfigError(f"workers={workers} must be at least 1")
        threads = session.config.threads
        self.ray_seconds = connect(workers, threads, address)  # 0 when Ray was already up
        _ = session.supernet, session.calib_pass, session.heldout_pass  # the caches, built here once; actors open them
        space = session.space
        spec = {"config": asdict(session.config), "counts": space.counts,
                "grid": asdict(space.grid)}
        gpus = 1 if session.device.type == "cuda" else 0
        actor = ray.remote(_Worker).options(num_cpus=threads, num_gpus=gpus, max_restarts=-1, max_task_retries=-1)
        start = time.perf_counter()
        self.actors = [actor.remote(spec) for _ in range(workers)]
        ready, waiting = ray.wait([a.pid.remote() for a in self.actors], num_returns=workers, timeout=timeout)
        if waiting:
            raise ConfigError(f"only {len(ready)} of {workers} Ray workers started within {timeout:.0f} s; the "
                              f"cluster lacks {threads} free CPU(s){' and a GPU' if gpus else ''} per worker")
        self.pids = ray.get(ready)
        self.worker_seconds = time.perf_counter() - start  # actors loading the model and the cache
        self._pool = ActorPool(self.actors)

    def evaluate(self, allocations, fidelity: float = 1.0) -> list[float]:
        levels = [np.asarray(a).tolist() for a in allocations]
        return list(self._pool.map(lambda actor, lv: actor.evaluate.remote(lv, fidelity), levels))

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def runner_factory(workers: int, address: str | None = None):
    """A function of a session giving its runner: in-process for one worker, Ray actors for more."""
    if workers <= 1 and not address:
        return lambda session: InProcessRunner(session.evaluator)
    return lambda session: RayRunner(session, workers=max(workers, 1), address=address)
