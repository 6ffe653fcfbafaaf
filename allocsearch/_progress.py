"""Progress bars for long work, on stderr, off when asked or when output is not a terminal-like stream."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm bar; `ALLOCSEARCH_NO_PROGRESS=1` or `enabled=False` hides it."""
    disable = not enabled or os.environ.get("ALLOCSEARCH_NO_PROGRESS") == "1"
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=False)
