"""Run the allocsearch CLI in this process and SIGKILL it at a chosen point: the Nth call of a function.

    python tests/hardening/killer.py MODULE:ATTR@N[:after] [MODULE:ATTR@false ...] -- CLI ARGS...
    python tests/hardening/killer.py MODULE:ATTR@N[:after] ... -- --exec PYTHON-CODE

`MODULE:ATTR` names a function or method (`allocsearch.app.runners:InProcessRunner.evaluate`); on its
Nth call the process kills itself with SIGKILL, before the call runs (or once it has returned, with
`:after`). `@false` replaces the function by one that returns False (to take a fallback path).
Nothing is cleaned up, flushed or caught: the kill is as abrupt as `kill -9` from outside, but lands
at an exact point instead of a lucky one.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def arm(spec: str) -> None:
    target, _, when = spec.partition("@")
    module_name, attr = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    if when == "false":
        setattr(owner, name, lambda *args, **kwargs: False)
        return
    n, _, when = when.partition(":")
    n, when = int(n), when or "before"
    calls = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        value = original(*args, **kwargs)
        if calls == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return value

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    split = sys.argv.index("--")
    for spec in sys.argv[1:split]:
        arm(spec)
    args = sys.argv[split + 1 :]
    if args[0] == "--exec":  # library code rather than the command line
        exec(args[1])
    else:
        from allocsearch.cli import main

        sys.exit(main(args))
