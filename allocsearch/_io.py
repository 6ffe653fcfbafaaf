"""Crash-safe writes: everything lands in a temporary name first and is renamed into place.

- Files and directories get the permissions the umask gives (0644 and 0755 under the usual 022),
  as `open` and `mkdir` would, whatever the library that wrote them inside a temporary directory
  did, so caches and exports on shared storage stay readable by the cluster.
- A temporary name records its writer: `.NAME.PID@HOST.RANDOM.tmp`. One whose process is gone
  (on this host), or one of another host untouched for a day, is stale and removed by the next write
  beside it (`remove_stale`); a live writer's is never touched.
- A directory replaces an existing one by an atomic exchange of the two names (Linux `renameat2`),
  else by two renames; the old one is removed last. A kill in between leaves the old directory under
  `.NAME.PID@HOST.RANDOM.old`, which `remove_stale` renames back when NAME is missing.
- `locked(path)` is a file lock, `.NAME.lock` beside `path`, for builds that two processes may start
  at once: the second waits and then finds the first one's work.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)
STALE_FOREIGN_SECONDS = 24 * 3600  # a temporary name of another host, untouched this long, is abandoned
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[0-9a-f]+\.(?P<kind>tmp|old)$")


def umask() -> int:
    """This process's umask: from /proc on Linux, else read by setting it and setting it back (which
    another thread writing at that instant could notice)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_name(path: Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside `path` that records this process: `.NAME.PID@HOST.RANDOM.KIND`."""
    return path.parent / f".{path.name}.{os.getpid()}@{_HOST}.{secrets.token_hex(4)}.{kind}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(directory: str | Path) -> list[Path]:
    """Remove the temporary files and folders that killed writers left in `directory` (see the module
    notes) and put back an old directory a killed swap left aside. Returns what was removed."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None:
            continue
        if match["host"] == _HOST:
            if _alive(int(match["pid"])):
                continue
        else:
            with contextlib.suppress(OSError):
                if time.time() - entry.lstat().st_mtime < STALE_FOREIGN_SECONDS:
                    continue
        target = directory / match["name"]
        if match["kind"] == "old" and not target.exists():
            with contextlib.suppress(OSError):
                os.rename(entry, target)  # the swap was killed between its two renames: the old one stays
                continue
        _remove(entry)
        removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the file lock of `path` (`.NAME.lock` beside it) for the block, waiting (and saying so)
    while another process holds it. Re-entrant within one process; a killed holder's lock is freed
    by the system."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / f".{path.name}.lock"), is_singleton=True, mode=0o666 & ~umask())
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is writing %s; waiting for it", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def file_entry(path: str | Path) -> dict:
    """A manifest's record of one file: its size and SHA-256."""
    return {"bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}


def write_manifest(directory: str | Path, format: int, **fields) -> dict:
    """Checksum every file in `directory` into its `manifest.json` (with `format` and `fields`), which
    `verify_manifest` checks."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): file_entry(p) for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    manifest = {"format": format, **fields, "files": files}
    write_json(directory / "manifest.json", manifest)
    return manifest


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator:
    """A binary file to write that replaces `path` whole when the block ends without error: a reader
    sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
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
    """Arrays and a JSON `meta` in one `.npz` file, atomically. The meta also records a checksum of
    each array (of its name, dtype, shape and bytes), which `read_npz` checks."""
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    stored = {**meta, CHECKSUMS: {name: _array_sha256(array) for name, array in arrays.items()}}
    with atomic_file(path) as f:
        (np.savez_compressed if compress else np.savez)(f, meta=np.array(json.dumps(stored)), **arrays)


CHECKSUMS = "__array_sha256__"  # the key of write_npz's checksums in the stored meta


def _array_sha256(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_npz(path: str | Path) -> tuple[dict, dict]:
    """What `write_npz` wrote: (meta, arrays). Raises OSError when the file cannot be opened, and
    ValueError for anything else: a damaged zip fails in zipfile, zlib, numpy or json, with many
    exception types, and every one of them means the same."""
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in data.files if k != "meta"}
        checksums = meta.pop(CHECKSUMS, None)  # None in files written before checksums were added
        if checksums is not None and checksums != {name: _array_sha256(array) for name, array in arrays.items()}:
            raise ValueError("the file is damaged (its arrays do not match their checksums)")
        return meta, arrays
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except KeyError as exc:
        raise ValueError(f"no {exc} in the file") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"the file is damaged ({exc})") from None
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 (see above)
        raise ValueError(f"the file is damaged ({exc.__class__.__name__}: {exc})") from None


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` once the block finishes without error.

    An existing `path` is swapped out whole and removed last: a reader, or a run killed at any
    moment, finds the old directory or the new one, never a part. Stale temporaries beside `path`
    are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent)
    tmp = temporary_name(path)
    tmp.mkdir()  # 0777 less the umask, as mkdir gives
    try:
        yield tmp
        _apply_umask(tmp)
        old = _swap_in(tmp, path)
        if old is not None:
            _remove(old)
    finally:
        if tmp.exists():
            _remove(tmp)


def _apply_umask(directory: Path) -> None:
    """Give `directory` and all in it the modes the umask gives: some writers (safetensors) make
    their files 0600 whatever it is."""
    mask = umask()
    for entry in [directory, *directory.rglob("*")]:
        if not entry.is_symlink():
            os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)


def _swap_in(new: Path, path: Path) -> Path | None:
    """Put directory `new` at `path`; return where the directory that was there now lies, if any."""
    if not path.exists():
        os.rename(new, path)
        return None
    if _exchange(new, path):
        return new
    old = _set_aside(path)
    os.rename(new, path)
    return old


def _set_aside(path: Path) -> Path:
    """Rename `path` to a temporary `.old` name beside it (which `remove_stale` puts back if no new one follows)."""
    old = temporary_name(path, "old")
    os.rename(path, old)
    return old


_RENAME_EXCHANGE = 2
try:
    _renameat2 = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
except (OSError, AttributeError, TypeError):  # not Linux, or a C library without it
    _renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` in one atomic step (Linux renameat2); False where that is unavailable."""
    if _renameat2 is None:
        return False
    at_cwd = -100
    return _renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


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
