"""Model presets: LLaMA-style decoder-only LMs as plain transformers `LlamaForCausalLM`.

The two paper presets reproduce PAPER.md's parameter counts exactly (untied embeddings,
no biases, RMSNorm, head size 64, full multi-head attention, FFN = 4 x hidden).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from classit.config import LoadError
from classit.units import one_line

# transformers' modeling takes ~2.5 s of CPU to import: only the processes that build a model pay it.
if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

PRESETS: dict[str, dict[str, int]] = {
    "llama-140m": dict(vocab_size=32_000, max_position_embeddings=6_144, hidden_size=704,
                       num_attention_heads=11, num_hidden_layers=12, intermediate_size=2_816),
    "llama-100m": dict(vocab_size=16_384, max_position_embeddings=6_000, hidden_size=512,
                       num_attention_heads=8, num_hidden_layers=20, intermediate_size=2_048),
    # Small enough to learn the synthetic corpus on two CPU cores in minutes.
    "tiny": dict(vocab_size=1_024, max_position_embeddings=512, hidden_size=128,
                 num_attention_heads=4, num_hidden_layers=2, intermediate_size=512),
}


def llama_config(preset: str, tokenizer: PreTrainedTokenizerBase | None = None) -> LlamaConfig:
    """The preset's config; with a tokenizer, its real vocabulary size and special-token ids."""
    from transformers import LlamaConfig

    shape = dict(PRESETS[preset])
    special = {}
    if tokenizer is not None:
        shape["vocab_size"] = len(tokenizer)
        special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    return LlamaConfig(
        **shape,
        num_key_value_heads=shape["num_attention_heads"],
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        **special,
    )


def build_model(preset: str, tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 0) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(preset, tokenizer))


def load_checkpoint(folder, **kwargs) -> PreTrainedModel:
    """A causal LM from a checkpoint folder (`save_pretrained`'s layout). Weights that do not load,
    a truncated or foreign file, end in an error that names the folder: the reader's own message
    (safetensors: "header too large") does not say which checkpoint it was reading."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except Exception as err:
        raise LoadError(f"{folder}: the checkpoint does not load ({one_line(err)})") from err


def check_weights(folder: Path) -> None:
    """A checkpoint's safetensors files whole: each header parses and its tensors end where the file
    does. Headers only, no torch: a driver checks a base this way before Ray starts a run on it."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if not 0 < length <= size - 8:
                    raise ValueError(f"a header of {length} bytes in a file of {size}")
                header = json.loads(f.read(length))
            end = 8 + length + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise LoadError(f"{path}: not a whole safetensors file ({one_line(err)})") from None
        if end != size:
            raise LoadError(f"{path}: not a whole safetensors file ({size} bytes, its tensors end at {end})")


@dataclass
class CheckpointShape:
    """What a driver reads of a checkpoint's `config.json` before any model loads (other keys ignored)."""

    max_position_embeddings: int | None = None


def checkpoint_shape(folder: Path) -> CheckpointShape:
    """A checkpoint's `config.json` as far as `CheckpointShape` reads it; a damaged one is named."""
    from classit.artefacts import parse_json_as

    path = Path(folder) / "config.json"
    return parse_json_as(CheckpointShape, path.read_text(), path) if path.is_file() else CheckpointShape()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache  # a plan asks for it per trial group and per base: build the meta model once
def parameter_count(preset: str) -> int:
    """The preset's parameter count, without allocating it (meta device)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return count_parameters(LlamaForCausalLM(llama_config(preset)))
