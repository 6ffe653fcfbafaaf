"""Crash-safe writes: everything lands in a temporary name first and is renamed into place."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator:
    """A binary file to write that replaces `path` whole when the block ends without error: a reader
    sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))


def write_npz(path: str | Path, meta: dict, arrays: dict, *, compress: bool = False) -> None:
    """Arrays and a JSON `meta` in one `.npz` file, atomically."""
    with atomic_file(path) as f:
        (np.savez_compressed if compress else np.savez)(f, meta=np.array(json.dumps(meta)), **arrays)


def read_npz(path: str | Path) -> tuple[dict, dict]:
    """What `write_npz` wrote: (meta, arrays). Raises OSError or ValueError for anything else."""
    try:
        with np.load(path) as data:
            return json.loads(str(data["meta"])), {k: data[k] for k in data.files if k != "meta"}
    except KeyError as exc:
        raise ValueError(f"no {exc} in the file") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"the file is damaged ({exc})") from None


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` once the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_manifest(path: str | Path, format: int) -> dict | None:
    """The manifest of a complete, intact cache directory (every file of its `files` with the size and
    SHA-256 it records, and the expected `format`), else None."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("format") != format:
            return None
        for name, info in manifest["files"].items():
            file = path / name
            if file.stat().st_size != info["bytes"] or file_sha256(file) != info["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest
