"""Byte-level BPE trained on the training corpus, saved in Hugging Face format.

The tokenizer prepends BOS itself (as the BabyLM evaluation pipeline expects of a causal LM,
which calls the tokenizer with its default special tokens), so the first word of a sentence
is scored given BOS, exactly as it was seen in training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from classit.config import LoadError
from classit.units import one_line

# transformers (torch with it, ~2 s) is imported where a tokenizer is built or loaded, so that
# what only reads records and counts words (the sweep driver's planning) starts without it.
if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
REPLY = "<|reply|>"  # the prompt/reply boundary in instruction data
SPECIAL_TOKENS = [PAD, BOS, EOS, REPLY]

# transformers 5 writes "TokenizersBackend", which transformers 4.x (pinned by the official
# BabyLM 2025 evaluation pipeline) cannot resolve; this class exists in both.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def train_tokenizer(lines: Iterable[str] | Iterable[list[str]], vocab_size: int,
                    min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train on `lines` (or batches of lines: `tokenizers` reads either), streamed."""
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(lines, trainer)
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[REPLY], padding_side="right",
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save in HF format, loadable by transformers 4.51 (the pipeline's pin) and 5.x."""
    path = Path(path)
    tokenizer.save_pretrained(path)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    # 4.x reads extra special tokens from this key; 5.x accepts it too.
    extra = config.pop("extra_special_tokens", None) or [REPLY]
    config["additional_special_tokens"] = list(extra)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_tokenizer(path: str | Path, **kwargs) -> PreTrainedTokenizerFast:
    """The tokenizer saved in a folder (a checkpoint's, the corpus's). One that does not load ends
    in an error naming the folder: the reader's own ("Invalid control character at: line 1") does not."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except Exception as err:
        raise LoadError(f"{path}: the tokenizer does not load ({one_line(err)})") from err


def reply_token_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(REPLY)
