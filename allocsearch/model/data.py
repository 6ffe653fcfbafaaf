"""Text for calibration and held-out scoring, and its cutting into token windows.

The built-in text is the Python standard library's own top-level modules, which every machine with
Python has offline. They are split by file into three disjoint sets: training (for the default
model), calibration and held-out. A user's file holds one document per line.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np
import torch

from ..errors import InputFileError

SPLITS = ("train", "calib", "heldout")


def builtin_files(split: str) -> list[Path]:
    """The standard-library files of one split: every 10th file (offset 3) calibrates, offset 7 is held out."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    pick = {"calib": lambda i: i % 10 == 3, "heldout": lambda i: i % 10 == 7,
            "train": lambda i: i % 10 not in (3, 7)}[split]
    return [f for i, f in enumerate(files) if pick(i)]


def builtin_documents(split: str) -> list[str]:
    """One document per standard-library file of the split."""
    return [f.read_text(encoding="utf-8", errors="replace") for f in builtin_files(split)]


def read_documents(path: str | Path, *, argument: str = "calib") -> list[str]:
    """A user's text file: UTF-8, one document per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{argument}={str(path)!r}: no such file; pass a UTF-8 text file, one document per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{argument}={str(path)!r} is not UTF-8 ({exc.reason} at byte {exc.start}); re-encode it") from None
    documents = [line for line in text.splitlines() if line.strip()]
    if not documents:
        raise InputFileError(f"{argument}={str(path)!r} holds no text; give one document per line")
    return documents


class ByteTokenizer:
    """The default model's tokenizer: UTF-8 bytes are the tokens (vocabulary 256, no specials)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def encode_stream(documents: list[str], tokenizer) -> np.ndarray:
    """All documents as one token stream, separated by the end-of-text token when there is one."""
    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer("\n".join(documents).encode("utf-8"), dtype=np.uint8).astype(np.int64)
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for doc in documents:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + sep
    return np.asarray(ids, dtype=np.int64)


def token_windows(documents: list[str], tokenizer, *, seq_len: int, count: int, encoder: bool = False,
                  argument: str = "calib") -> torch.Tensor:
    """`count` windows of `seq_len` tokens spread evenly over the text.  # (count, seq_len)

    Encoder windows start with the tokenizer's CLS token and end with its SEP token when it has them.
    """
    stream = encode_stream(documents, tokenizer)
    prefix = suffix = []
    if encoder:
        prefix = [t for t in [getattr(tokenizer, "cls_token_id", None)] if t is not None]
        suffix = [t for t in [getattr(tokenizer, "sep_token_id", None)] if t is not None]
    body = seq_len - len(prefix) - len(suffix)
    available = len(stream) // body
    if available < 1:
        raise InputFileError(
            f"{argument} text has {len(stream)} tokens, fewer than one window of {body}; give more text"
        )
    n = min(count, available)
    starts = (np.arange(n) * available // n) * body  # evenly spread, non-overlapping
    windows = np.stack([np.concatenate([prefix, stream[s : s + body], suffix]) for s in starts])  # (n, seq_len)
    return torch.from_numpy(windows.astype(np.int64))


def tokens_hash(tokens: torch.Tensor) -> str:
    """A short hash of a token tensor, for cache keys."""
    return hashlib.sha256(tokens.cpu().numpy().astype(np.int64).tobytes()).hexdigest()[:16]
