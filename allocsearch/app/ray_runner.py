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
- Reaching a cluster is bounded: a `host:port` or `ray://host:port` address must accept a TCP
  connection within `ray_timeout` seconds (default `RAY_TIMEOUT`, or `$ALLOCSEARCH_RAY_TIMEOUT`),
  else a `ConfigError` says so; Ray itself would retry forever. `auto` and other schemes go to Ray
  unprobed.
- Fault tolerance: actors restart when they die and their unfinished evaluations are retried, so
  the result does not change.
- GPUs: when the session evaluates on CUDA, each actor reserves one GPU (`num_gpus=1`): run one
  worker per GPU.
"""

from __future__ import annotations

import logging
import math
import os
import socket
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
RAY_TIMEOUT = 30.0  # seconds a cluster's address has to answer; $ALLOCSEARCH_RAY_TIMEOUT or ray_timeout= overrides
TIMEOUT_VARIABLE = "ALLOCSEARCH_RAY_TIMEOUT"


def connect_timeout(timeout: float | None = None) -> float:
    """The seconds to wait for a cluster: `timeout`, else `$ALLOCSEARCH_RAY_TIMEOUT`, else `RAY_TIMEOUT`.

    For example::

        connect_timeout(5)  # 5.0
    """
    name, value = "ray_timeout", timeout
    if timeout is None:
        name, value = TIMEOUT_VARIABLE, os.environ.get(TIMEOUT_VARIABLE, RAY_TIMEOUT)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{name}={value!r} must be a positive number of seconds, e.g. 30")
    return seconds


def check_address(address: str | None, timeout: float) -> None:
    """Wait up to `timeout` seconds for `address` (`host:port` or `ray://host:port`) to accept a TCP
    connection; `ConfigError` if it does not. None, `auto`, `local` and other schemes pass unprobed.

    For example::

        check_address("10.0.0.5:6379", timeout=30)
    """
    if not address or address in ("auto", "local"):
        return
    target = address[len("ray://"):] if address.startswith("ray://") else address
    if "://" in target:
        return
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"ray_address={address!r} is not host:port or ray://host:port; give the head's address, "
                          "e.g. 10.0.0.5:6379")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.05, min(2.0, left))):
                return
        except OSError as exc:
            if time.monotonic() + 0.25 >= deadline:
                raise ConfigError(f"ray_address={address!r}: nothing answered at {host}:{port} within {timeout:g} s "
                                  f"({exc.strerror or exc}); start the head there (ray start --head) or fix the "
                                  "address; ray_timeout=SECONDS waits longer") from None
            time.sleep(0.25)


def connect(workers: int, threads: int, address: str | None = None, timeout: float | None = None) -> float:
    """Start or join Ray; returns the seconds it took (0 when Ray was already up and big enough).
    Joining waits at most `timeout` seconds (see `connect_timeout`) for the address to answer."""
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
            check_address(address, connect_timeout(timeout))
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

    def __init__(self, session, *, workers: int, address: str | None = None, timeout: float = 300.0,
                 ray_timeout: float | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"workers={workers} must be at least 1")
        threads = session.config.threads
        self.ray_seconds = connect(workers, threads, address, ray_timeout)  # 0 when Ray was already up
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


def runner_factory(workers: int, address: str | None = None, ray_timeout: float | None = None):
    """A function of a session giving its runner: in-process for one worker, Ray actors for more.
    With Ray, the cluster's address (`address` or `$RAY_ADDRESS`) is probed here, before any model
    is loaded (see `check_address`)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be a positive integer (1 evaluates in this process)")
    if workers == 1 and not address:
        return lambda session: InProcessRunner(session.evaluator)
    wait = connect_timeout(ray_timeout)
    if not ray.is_initialized():
        check_address(address or os.environ.get("RAY_ADDRESS"), wait)
    return lambda session: RayRunner(session, workers=workers, address=address, ray_timeout=wait)
