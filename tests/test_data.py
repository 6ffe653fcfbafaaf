from __future__ import annotations

import pytest

from allocsearch import InputFileError
from allocsearch.data import ByteTokenizer, builtin_files, read_documents, token_windows


def test_builtin_splits_are_disjoint_and_nonempty():
    splits = {s: set(builtin_files(s)) for s in ("train", "calib", "heldout")}
    assert all(len(files) > 5 for files in splits.values())
    assert not splits["train"] & splits["calib"] and not splits["train"] & splits["heldout"]
    assert not splits["calib"] & splits["heldout"]


def test_windows_are_even_spread_and_deterministic():
    docs = ["".join(chr(97 + i % 26) for i in range(1000))]
    a = token_windows(docs, ByteTokenizer(), seq_len=10, count=5)
    assert a.shape == (5, 10)
    assert a[:, 0].tolist() == [97 + (i * 20 * 10) % 26 for i in range(5)]  # windows 0, 20, 40, 60, 80 of 100
    assert token_windows(docs, ByteTokenizer(), seq_len=10, count=500).shape == (100, 10)  # as many as there are


def test_user_files(tmp_path):
    good = tmp_path / "calib.txt"
    good.write_text("first document\n\nsecond document\n", encoding="utf-8")
    assert read_documents(good) == ["first document", "second document"]
    with pytest.raises(InputFileError, match="--calib '.*missing.txt': no such file"):
        read_documents(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputFileError, match="is not UTF-8"):
        read_documents(latin, argument="--heldout")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputFileError, match="holds no text"):
        read_documents(empty)
    with pytest.raises(InputFileError, match="fewer than one window"):
        token_windows(["short"], ByteTokenizer(), seq_len=64, count=4)
