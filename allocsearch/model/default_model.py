"""The embedded default model: a small GPT-2-architecture byte-level language model.

Trained by the project itself, deterministically (fixed seed, fixed thread count), on the training
split of the built-in text (the Python standard library's own sources), in under two minutes on two
cores. It is cached under the cache directory, keyed by its recipe, the text and the torch version,
with every file checksummed in `manifest.json` (a corrupt copy is trained again, never used);
`training.json` beside the weights reports its held-out perplexity against the unigram baseline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import transformers  # a lazy module: its model classes load on first use

from .. import _io
from .._progress import progress_bar
from ._torch import torch_threads
from .data import ByteTokenizer, builtin_documents, encode_stream
from .loading import save_tokenizer

log = logging.getLogger(__name__)
FORMAT = 1  # of the cached directory: the weights, tokenizer and report, checksummed in manifest.json


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of the default model."""

    n_layer: int = 6
    n_embd: int = 128
    n_head: int = 8
    n_inner: int = 512
    seq_len: int = 128
    batch: int = 32
    steps: int = 320
    lr: float = 3e-3
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 2


def _text(split: str) -> torch.Tensor:
    return torch.from_numpy(encode_stream(builtin_documents(split), ByteTokenizer()))


def default_model_dir(cache_dir: str | Path, config: TrainConfig = TrainConfig(), *, progress: bool = True) -> Path:
    """The default model's directory, trained first if it is not cached yet."""
    train = _text("train")
    key_blob = json.dumps([asdict(config), torch.__version__.split("+")[0]]).encode() + train.numpy().tobytes()
    key = hashlib.sha256(key_blob).hexdigest()[:16]
    path = Path(cache_dir) / "default-model" / key
    if _io.verify_manifest(path, FORMAT) is not None:
        return path
    with _io.locked(path):  # a second process waits for the first one's training
        if _io.verify_manifest(path, FORMAT) is not None:
            return path
        if path.exists():
            log.warning("the default model in %s is incomplete or corrupt; training it again", path)
        log.info("training the embedded default model once (about two minutes on two cores); it is cached in %s",
                 path)
        with _io.atomic_directory(path) as tmp:
            model, report = train_default_model(train, config, progress=progress)
            model.save_pretrained(tmp)
            save_tokenizer(ByteTokenizer(), tmp)
            _io.write_json(tmp / "training.json", report)
            _io.write_manifest(tmp, FORMAT)
    return path


def train_default_model(train: torch.Tensor, config: TrainConfig, *, progress: bool = True):
    """Train on a byte stream; return the model and a report with held-out and unigram perplexity."""
    start = time.perf_counter()
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        model_config = transformers.GPT2Config(
            vocab_size=256, n_positions=config.seq_len, n_embd=config.n_embd, n_layer=config.n_layer,
            n_head=config.n_head, n_inner=config.n_inner, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=10, eos_token_id=10, loss_type="ForCausalLM",
        )
        model = transformers.GPT2LMHeadModel(model_config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95),
                                      weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                       pct_start=0.05)
        generator = torch.Generator().manual_seed(config.seed)
        offsets = torch.arange(config.seq_len)
        model.train()
        bar = progress_bar(range(config.steps), desc="training the default model", enabled=progress)
        for _ in bar:
            starts = torch.randint(0, len(train) - config.seq_len, (config.batch,), generator=generator)
            batch = train[starts[:, None] + offsets]  # (batch, seq_len)
            loss = model(batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        heldout = _text("heldout")
        n = min(256, (len(heldout) - 1) // config.seq_len)
        windows = heldout[: n * config.seq_len].view(n, config.seq_len)
        with torch.no_grad():
            heldout_loss = float(model(windows, labels=windows).loss)
    counts = np.bincount(train.numpy(), minlength=256) + 1.0
    unigram = -np.log(counts / counts.sum())[windows[:, 1:].numpy()].mean()
    report = {
        "recipe": asdict(config),
        "train_tokens": int(config.steps * config.batch * config.seq_len),
        "train_seconds": round(time.perf_counter() - start, 1),
        "heldout_perplexity": round(math.exp(heldout_loss), 3),
        "unigram_perplexity": round(float(math.exp(unigram)), 3),
        "heldout_bits_per_byte": round(heldout_loss / math.log(2), 3),
    }
    model.requires_grad_(False)
    return model, report
