"""Checks of the files a run will write and read, made before any model is loaded.

A search can take hours; an output path it cannot write (its folder is a file, it is itself a
folder, the folder is read-only, an image name with a suffix no plotter writes) must fail at once,
not after the search. `check_output_file` and `check_output_dir` look at the path and probe the
nearest existing folder by opening a nameless temporary file in it (nothing is left behind), so the
answer holds for root and read-only file systems alike. `READ_ERRORS` are what reading a damaged
`.npz` state file can raise: `_io.read_npz`'s OSError or ValueError (it turns every zip, zlib and
numpy failure into one), then KeyError, TypeError or IndexError from contents that are not there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError

READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError)


def check_output_file(name: str, path: str | Path, *, suffixes: Iterable[str] | None = None) -> Path:
    """`path` as a `Path` when a file can be written there; else a `ConfigError` naming `name`.

    Args:
        name: the parameter that gave the path (`out`, `checkpoint`, ...), named in the message.
        suffixes: the file name must end in one of these (lower case, with the dot), when given.

    For example::

        check_output_file("out", "runs/result.json")  # Path('runs/result.json')
        check_output_file("plot", "a.txt", suffixes=(".png",))  # ConfigError: plot='a.txt': ...
    """
    path = Path(path).expanduser()
    if suffixes is not None:
        allowed = tuple(suffixes)
        if path.suffix.lower() not in allowed:
            raise ConfigError(f"{name}={str(path)!r}: {repr(path.suffix) if path.suffix else 'no suffix'} is not a "
                              f"format it can be written in; end the name in one of {', '.join(allowed)}")
    if path.is_dir():
        raise ConfigError(f"{name}={str(path)!r} is a directory; name a file, in it or elsewhere")
    _check_folder(name, path, path.parent)
    return path


def check_output_dir(name: str, path: str | Path) -> Path:
    """`path` as a `Path` when a directory can be made or filled there; else a `ConfigError` naming `name`.

    For example::

        check_output_dir("out_dir", "results/")  # Path('results')
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name}={str(path)!r} is a file, not a directory; name a new or existing directory")
    _check_folder(name, path, path if path.is_dir() else path.parent)
    return path


def _check_folder(name: str, path: Path, folder: Path) -> None:
    """Refuse `path` when `folder` (to hold it) is a file somewhere up its chain, or is not writable."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{name}={str(path)!r} cannot be made: {str(existing)!r} is a file, not a directory; "
                          "choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"{name}={str(path)!r} cannot be written: the directory {str(existing)!r} is not writable "
                          f"(creating a file there: {os.strerror(exc.errno) if exc.errno else exc}); choose a "
                          "writable location") from None


def damage(exc: BaseException) -> str:
    """A short reason why an `.npz` archive could not be read, from what reading it raised.

    For example::

        damage(ValueError("the file is damaged (Bad CRC-32 for file 'levels.npy')"))  # the same text
        damage(KeyError("'seen'"))  # "it lacks 'seen'"
    """
    text = " ".join(str(exc).split())
    if "pickled" in text or "allow_pickle" in text:
        return "it is not an .npz archive"
    if isinstance(exc, KeyError):
        return f"it lacks {text}"
    return text or type(exc).__name__
