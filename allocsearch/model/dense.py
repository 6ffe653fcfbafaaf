"""The dense model's pass over a token set, computed once and kept on disk.

One forward of the dense model over the calibration tokens gives everything an evaluation compares
against and starts from:

- the input of every block after the first, per sequence (`block-0001`, ...), in the evaluation
  dtype, so that a candidate whose first pruned unit lies in block l runs blocks l..L only;
- the reference: next-token log-probabilities for language models (the top-k and the log-mass of
  the rest when the vocabulary is large: `values`, `index`, `tail`; else the whole `logp`), final
  hidden states for encoders (`hidden`);
- for held-out tokens, no block inputs, and the dense model's own held-out score.

Batches are fixed: batch i is sequences [i * batch_size, (i + 1) * batch_size), the same here and in
every evaluation, so a block's input for a batch is exactly what a full forward gives it. On disk a
directory per key (model weights, tokens, dtype, device, threads, batch size, top-k): one raw file
per array and a manifest with shapes and SHA-256 checksums, written to a temporary directory and
renamed into place under a file lock (a second process on the same key waits and reads it); a
directory that does not verify is rebuilt, never used. Reads are plain file
reads of one batch, so memory holds one batch at a time however large the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from .. import _io
from .._progress import progress_bar
from ._torch import torch_threads
from .blockwise import Blockwise
from .data import tokens_hash

FORMAT = 1
LOGITS_BYTES = 32 * 2**20  # a language-model head runs on chunks of tokens whose logits fit in this
log = logging.getLogger(__name__)


def lm_topk(vocab: int, topk: int | None) -> int | None:
    """The top-k a reference keeps: None (all) up to a vocabulary of 4096, else `topk` or 256."""
    k = topk or (None if vocab <= 4096 else 256)
    return None if k is None or k >= vocab else k


def token_chunks(n_tokens: int, vocab: int) -> list[slice]:
    """Slices of flattened tokens whose float32 logits stay within `LOGITS_BYTES`."""
    step = max(1, LOGITS_BYTES // (4 * vocab))
    return [slice(s, min(s + step, n_tokens)) for s in range(0, n_tokens, step)]


def lm_reference(logp: torch.Tensor, k: int | None) -> dict[str, torch.Tensor]:
    """Reference arrays of float32 log-probabilities `logp` (tokens, vocab)."""
    if k is None:
        return {"logp": logp}
    values, index = logp.topk(k, dim=-1)  # (tokens, k)
    tail = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-6))  # (tokens,)
    return {"values": values, "index": index.to(torch.int32), "tail": tail}


def kl_to_reference(reference: dict[str, torch.Tensor], logq: torch.Tensor) -> torch.Tensor:
    """KL(dense || candidate) per token from the candidate's log-probabilities.  # (tokens,)"""
    if "logp" in reference:
        logp = reference["logp"]
        return (logp.exp() * (logp - logq)).sum(-1)
    values, index, tail = reference["values"], reference["index"], reference["tail"]
    logq_top = logq.gather(-1, index.long())
    logq_tail = torch.log1p(-logq_top.exp().sum(-1).clamp(max=1 - 1e-6))
    return (values.exp() * (values - logq_top)).sum(-1) + tail.exp() * (tail - logq_tail)


class DensePass:
    """Read access to a dense pass: block inputs and reference arrays, one batch at a time.

    For example::

        dense = DensePass.build_or_load(blockwise, calib, cache_dir="~/.cache/allocsearch", key_parts={...})
        dense.block_input(3, batch=0)          # what block 3 receives for sequences 0..7
        dense.reference(batch=0)["values"]     # top-k log-probabilities of the dense model
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path, self.manifest = path, manifest
        self.batch_size, self.n_sequences = manifest["batch_size"], manifest["sequences"]
        self.arrays = manifest["files"]

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_sequences / self.batch_size)

    @property
    def dense_score(self) -> float | None:
        """The dense model's held-out score (perplexity, or cosine 1.0), when this pass is held-out."""
        return self.manifest.get("dense_score")

    def has_states(self) -> bool:
        """Whether this pass kept every block's input (calibration passes do, held-out ones do not)."""
        return self.manifest["states"]

    def _read(self, name: str, batch: int) -> torch.Tensor:
        info = self.arrays[name]
        shape, dtype = info["shape"], getattr(torch, info["dtype"])
        row = math.prod(shape[1:]) * torch.empty(0, dtype=dtype).element_size()
        first = batch * self.batch_size
        rows = min(self.batch_size, shape[0] - first)
        if rows * row == 0:
            return torch.empty(rows, *shape[1:], dtype=dtype)
        raw = np.fromfile(self.path / name, dtype=np.uint8, count=rows * row, offset=first * row)
        return torch.from_numpy(raw).view(dtype).reshape(rows, *shape[1:])

    def block_input(self, block: int, batch: int) -> torch.Tensor:
        """The dense input of `block` (>= 1) for one batch.  # (batch, seq, hidden)"""
        return self._read(f"block-{block:04d}", batch)

    def reference(self, batch: int) -> dict[str, torch.Tensor]:
        """The reference arrays of one batch, tokens flattened (`hidden` stays (batch, seq, hidden))."""
        out = {}
        for name in self.manifest["reference"]:
            tensor = self._read(name, batch)
            out[name] = tensor if name == "hidden" else tensor.reshape(-1, *tensor.shape[2:])
        return out

    def disk_bytes(self) -> int:
        return sum(info["bytes"] for info in self.arrays.values())

    @classmethod
    def build_or_load(cls, blockwise: Blockwise, tokens: torch.Tensor, *, cache_dir: str | Path, key_parts: dict,
                      batch_size: int, threads: int, topk: int | None = None, states: bool = True,
                      heldout: bool = False, progress: bool = True) -> DensePass:
        """Open the pass for these inputs, running the dense model first when it is missing or corrupt.

        `key_parts` names the model (weights hash, dtype, device); tokens, batch size, threads,
        top-k and what is stored are added here. `states` keeps every block's input; `heldout`
        also scores the dense model itself (perplexity or cosine).
        """
        parts = {**key_parts, "format": FORMAT, "tokens": tokens_hash(tokens), "batch_size": batch_size,
                 "threads": threads, "topk": topk, "states": states, "heldout": heldout}
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir).expanduser() / "dense" / key
        manifest = _io.verify_manifest(path, FORMAT)
        if manifest is None:
            with _io.locked(path):  # a second process on the same key waits, then reads it
                manifest = _io.verify_manifest(path, FORMAT)
                if manifest is None:
                    if path.exists():
                        log.warning("dense pass %s is incomplete or corrupt; running it again", path)
                    log.info("dense pass over %d sequences (%s) into %s", len(tokens),
                             "held-out" if heldout else "calibration", path)
                    with _io.atomic_directory(path) as tmp:
                        manifest = _run(tmp, blockwise, tokens, batch_size=batch_size, threads=threads, topk=topk,
                                        states=states, heldout=heldout, progress=progress)
                        manifest.update(format=FORMAT, key=key, key_parts=parts)
                        _io.write_json(tmp / "manifest.json", manifest)
                    manifest = _io.verify_manifest(path, FORMAT)
                    if manifest is None:
                        raise RuntimeError(f"the dense pass just written to {path} does not verify")
        return cls(path, manifest)


class _Writer:
    """Appends batches to raw array files and records their shape, dtype and checksum."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.files, self.meta, self.digests = directory, {}, {}, {}

    def append(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().contiguous().cpu()
        if name not in self.files:
            self.files[name] = open(self.directory / name, "wb")
            self.meta[name] = {"shape": [0, *tensor.shape[1:]], "dtype": str(tensor.dtype).removeprefix("torch.")}
            self.digests[name] = hashlib.sha256()
        data = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        self.files[name].write(data)
        self.digests[name].update(data)
        self.meta[name]["shape"][0] += tensor.shape[0]

    def close(self) -> dict:
        for name, f in self.files.items():
            f.flush()
            f.close()
            self.meta[name]["bytes"] = (self.directory / name).stat().st_size
            self.meta[name]["sha256"] = self.digests[name].hexdigest()
        return self.meta


def _run(tmp: Path, blockwise: Blockwise, tokens: torch.Tensor, *, batch_size: int, threads: int,
         topk: int | None, states: bool, heldout: bool, progress: bool) -> dict:
    writer = _Writer(tmp)
    lm = blockwise.task == "causal_lm"
    nll, count = 0.0, 0
    reference_names: list[str] = []
    try:
        with torch.no_grad(), torch_threads(threads):
            for batch in progress_bar(tokens.split(batch_size), desc="dense pass", enabled=progress):
                inputs = blockwise.embed(batch)
                block_inputs: list[torch.Tensor] | None = [] if states else None
                hidden = blockwise.final(blockwise.run(inputs.hidden, inputs, 0, states=block_inputs))
                for b, state in enumerate(block_inputs or []):
                    if b > 0:  # block 0's input is the embedding, recomputed in no time
                        writer.append(f"block-{b:04d}", state)
                if lm:
                    rows, batch_nll, batch_count = _lm_reference_rows(blockwise, hidden, batch, topk)
                    nll, count = nll + batch_nll, count + batch_count
                    for name, tensor in rows.items():
                        writer.append(name, tensor.reshape(len(batch), -1, *tensor.shape[1:]))
                    reference_names = list(rows)
                else:
                    writer.append("hidden", hidden.float())
                    reference_names = ["hidden"]
    finally:
        files = writer.close()
    manifest = {"sequences": len(tokens), "batch_size": batch_size, "blocks": blockwise.n_blocks, "states": states,
                "reference": reference_names, "files": files}
    if heldout:  # perplexity; an encoder's embeddings have cosine 1 to themselves
        manifest["dense_score"] = math.exp(nll / count) if lm else 1.0
    return manifest


def _lm_reference_rows(blockwise: Blockwise, hidden: torch.Tensor, batch: torch.Tensor, topk: int | None):
    """The reference rows of one batch, and its summed negative log-likelihood of the next tokens."""
    flat = hidden.reshape(-1, hidden.shape[-1])  # (tokens, hidden)
    targets = next_tokens(batch).to(flat.device)  # (tokens,)
    parts: dict[str, list[torch.Tensor]] = {}
    nll = 0.0
    for chunk in token_chunks(len(flat), blockwise.head.out_features):
        logp = torch.log_softmax(blockwise.head(flat[chunk]).float(), -1)
        target = targets[chunk]
        known = target >= 0
        nll -= float(logp[known].gather(-1, target[known][:, None]).double().sum())
        k = lm_topk(logp.shape[-1], topk)
        for name, tensor in lm_reference(logp, k).items():
            parts.setdefault(name, []).append(tensor.cpu())
    return {name: torch.cat(tensors) for name, tensors in parts.items()}, nll, int((targets >= 0).sum())


def next_tokens(batch: torch.Tensor) -> torch.Tensor:
    """Per flattened position the next token of its sequence, -1 at each sequence's last.  # (tokens,)"""
    targets = torch.full_like(batch, -1)
    targets[:, :-1] = batch[:, 1:]
    return targets.reshape(-1)
