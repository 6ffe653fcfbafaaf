from __future__ import annotations

import pytest

from allocsearch import InputFileError
from allocsearch.model.data import (
    ByteTokenizer,
    builtin_files,
    read_documents,
    token_windows,
)


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
    with pytest.raises(InputFileError, match="calib='.*missing.txt': no such file"):
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


def test_hub_style_tokenizer_directory_is_loaded_with_auto_tokenizer(model_dirs, tmp_path):
    """A tokenizer saved beside the model (as on the hub) is used, CLS/SEP around encoder windows."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from allocsearch.model.data import builtin_documents
    from allocsearch.model.loading import load_tokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(builtin_documents("train")[:5], trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    directory = tmp_path / "bert"
    shutil.copytree(model_dirs["bert"], directory)
    (directory / "allocsearch_tokenizer.json").unlink()
    PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]",
                            pad_token="[PAD]").save_pretrained(directory)
    tokenizer = load_tokenizer(str(directory))
    windows = token_windows(builtin_documents("calib"), tokenizer, seq_len=16, count=4, encoder=True)
    assert windows.shape == (4, 16)
    assert (windows[:, 0] == tokenizer.cls_token_id).all() and (windows[:, -1] == tokenizer.sep_token_id).all()
