"""`configuration_decilm.py` of a DeciLM export (NVIDIA's Nemotron-NAS format), written by allocsearch.

`config.json` names this file in `auto_map`; vLLM and transformers load it with
`trust_remote_code=True`. It makes `block_configs` objects whose fields read as attributes
(`block.attention.no_op`, `block.ffn.ffn_mult`), as vLLM's `nemotron_nas.py` reads them, and plain
dicts again when saved. Field names and defaults follow NVIDIA's `block_config.py`.

For example::

    config = transformers.AutoConfig.from_pretrained("pruned-decilm/", trust_remote_code=True)
    config.block_configs[0].attention.no_op  # False
"""

from __future__ import annotations

import dataclasses

from transformers import LlamaConfig

PER_BLOCK = ("intermediate_size", "num_key_value_heads")  # set per block in block_configs, null globally


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    no_op: bool = False
    replace_with_linear: bool = False
    n_heads_in_group: int | None = None  # query heads per key/value head
    window_length: int | None = None
    num_sink_tokens: int | None = None
    use_prefill_window_in_sink_attention: bool = False
    unshifted_sink: bool = False
    sparsify: list | None = None


@dataclasses.dataclass(frozen=True)
class FFNConfig:
    no_op: bool = False
    replace_with_linear: bool = False
    ffn_mult: float | None = None  # width: int(2 * ffn_mult * hidden_size / 3) rounded up to a multiple of 256
    sparsify: list | None = None


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    attention: AttentionConfig
    ffn: FFNConfig

    @classmethod
    def from_dict(cls, data: dict) -> BlockConfig:
        return cls(AttentionConfig(**data["attention"]), FFNConfig(**data["ffn"]))


class DeciLMConfig(LlamaConfig):
    """A Llama config whose blocks each have their own attention and MLP (`block_configs`)."""

    model_type = "nemotron-nas"

    def __init__(self, block_configs: list | None = None, **kwargs) -> None:
        for key in PER_BLOCK:  # null: each block has its own; transformers 5 refuses None for them
            if kwargs.get(key, 0) is None:
                del kwargs[key]
        super().__init__(**kwargs)
        self.block_configs = [b if isinstance(b, BlockConfig) else BlockConfig.from_dict(b)
                              for b in block_configs or []]

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update({key: None for key in PER_BLOCK})
        out["block_configs"] = [dataclasses.asdict(b) for b in self.block_configs]
        return out
