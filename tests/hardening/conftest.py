from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from allocsearch import _io

ROOT = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).with_name("killer.py")


def command(*args: str, kill: tuple[str, ...] = (), quiet: bool = True) -> list[str]:
    """`allocsearch ARGS` as a command line; with `kill`, under `killer.py` armed with those specs."""
    prefix = [sys.executable, str(KILLER), *kill, "--"] if kill else [sys.executable, "-m", "allocsearch.cli"]
    return [*prefix, *(["-q"] if quiet else []), *args]


def cli(*args: str, kill: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `allocsearch -q ARGS` in a subprocess (see `command`)."""
    return subprocess.run(command(*args, kill=kill), check=False, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def temporaries(*roots: Path) -> list[Path]:
    """Every temporary file or folder a writer left (`.NAME.PID@HOST.RANDOM.tmp` or `.old`) under `roots`."""
    return [p for root in roots for p in Path(root).rglob(".*") if _io._TEMPORARY.match(p.name)]


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root` (lock files aside), by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture(scope="session")
def model(model_dirs):
    """The tiny GPT-2 directory the crash, corruption and concurrency tests search."""
    return model_dirs["gpt2"]
