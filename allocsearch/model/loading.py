"""Loading models and tokenizers: a hub id, a local directory, or the embedded default model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import transformers  # a lazy module: its model classes load on first use
from safetensors import SafetensorError
from torch import nn

from ..errors import ModelLoadError
from .data import ByteTokenizer
from .spec import load_spec

BYTE_TOKENIZER_FILE = "allocsearch_tokenizer.json"


def _hub_hint(name: str) -> str:
    if Path(name).exists():
        return "check that the directory holds config.json and the weights"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return ("no such local directory, and HF_HUB_OFFLINE=1 forbids the hub" if offline else
            "no such local directory, and the hub could not serve it; check the name and your network, "
            "or pass a local directory")


def hide_progress() -> None:
    """Hide transformers' own progress bars (loading weights) in this process; `ALLOCSEARCH_NO_PROGRESS=1` does too.

    For example::

        hide_progress()  # the CLI's -q
    """
    transformers.utils.logging.disable_progress_bar()


def load_config(name: str):
    try:
        return transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model={name!r} could not be loaded: {_hub_hint(name)} ({exc.__class__.__name__})") from None


def load_model(name: str, *, space: str | Path | None = None, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "sdpa") -> tuple[nn.Module, dict]:
    """A model in eval mode without gradients, and its search-space spec (which fixes its task).

    `name` is a hub id or a local directory, as for `from_pretrained`. Language models load with
    `AutoModelForCausalLM`, encoders with `AutoModel`.
    """
    config = load_config(name)
    spec = load_spec(space, config.model_type)
    auto = transformers.AutoModelForCausalLM if spec["task"] == "causal_lm" else transformers.AutoModel
    if os.environ.get("ALLOCSEARCH_NO_PROGRESS") == "1":
        hide_progress()
    try:
        model = auto.from_pretrained(name, dtype=dtype, attn_implementation=attn_implementation)
    except SafetensorError as exc:
        raise ModelLoadError(f"model={name!r}: its weights cannot be read ({exc}); the safetensors file is damaged "
                             "or truncated: save or download the model again") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model={name!r} could not be loaded: {_hub_hint(name)} ({exc})") from None
    model.eval().requires_grad_(False)
    return model, spec


def load_tokenizer(name: str):
    """The byte tokenizer for directories that carry its marker file, else `AutoTokenizer`."""
    if (Path(name) / BYTE_TOKENIZER_FILE).is_file():
        return ByteTokenizer()
    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model={name!r}: its tokenizer could not be loaded ({exc.__class__.__name__}); "
                             "the directory needs the tokenizer files saved beside the model") from None


def save_tokenizer(tokenizer, directory: Path) -> None:
    if isinstance(tokenizer, ByteTokenizer):
        (directory / BYTE_TOKENIZER_FILE).write_text(json.dumps({"type": "bytes"}) + "\n")
    else:
        tokenizer.save_pretrained(directory)
