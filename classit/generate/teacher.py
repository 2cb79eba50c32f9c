"""The teacher: a Hugging Face causal LM whose `generate` is held to a JSON schema, token by token,
by outlines-core's automaton over the teacher's vocabulary; and one shard of articles turned into
checked question/answer records, with retries. Plain functions and torch: no Ray here."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from classit.artefacts import MARKER
from classit.config import ConfigError, GenerateConfig, config_hash
from classit.generate.qa import (REJECTIONS, check_pair, fill_template, make_record, normalised, pairs_schema,
                                 parse_pairs)
from classit.units import one_line


def teacher_folder(teacher: str, where: str) -> Path:
    """The teacher's local folder: the path itself, or the hub snapshot (downloaded if missing)."""
    if Path(teacher).is_dir():
        return Path(teacher).resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(teacher))
    except Exception as err:  # noqa: BLE001 - any failure to find it is the same bad input
        raise ConfigError(f"{where}: {teacher} is neither a model folder nor a hub model that loads "
                          f"({type(err).__name__})") from None


def check_teacher(gcfg: GenerateConfig, folder: Path, where: str) -> None:
    """Its config and tokenizer load, it is a causal LM, and its positions hold a prompt beside the
    reply: checked on the driver, before Ray starts."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder)
        AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"{where}.teacher: {folder} does not load as a model ({one_line(err)[:160]})") from None
    if not any(arch.endswith("ForCausalLM") for arch in config.architectures or []):
        raise ConfigError(f"{where}.teacher: {folder} is not a causal LM (architectures {config.architectures})")
    prompt_room(gcfg, config, where)


def prompt_room(gcfg: GenerateConfig, config, where: str = "generate") -> int:
    """The teacher's positions left for a prompt beside `max_new_tokens`."""
    positions = getattr(config, "max_position_embeddings", 4096)
    room = positions - gcfg.sampling.max_new_tokens
    if room < 16:
        raise ConfigError(f"{where}.sampling.max_new_tokens: {gcfg.sampling.max_new_tokens} leaves no room for "
                          f"a prompt in the teacher's {positions} positions")
    return room


@functools.cache
def _folder_hash(folder: str, signature: tuple) -> str:
    digest = hashlib.sha256()
    for name, _, _ in signature:
        digest.update(name.encode())
        with open(Path(folder) / name, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def teacher_hash(folder: Path) -> str:
    """A content hash of every file of the teacher (read once per process for unchanged files)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts and p.name != MARKER)
    signature = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_hash(str(folder), signature)


def _gpt2_byte_chars() -> dict[str, int]:
    """Byte-level BPE spells each byte as one printable character: that table, reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(others)})
    return table


def token_bytes(tokenizer) -> dict[int, bytes]:
    """The bytes each ordinary token stands for (special tokens left out: they are never allowed)."""
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
    special = set(tokenizer.all_special_ids)
    out = {}
    if "ByteLevel" in kinds:
        chars = _gpt2_byte_chars()
        for token, i in tokenizer.get_vocab().items():
            if i not in special and all(c in chars for c in token):
                out[i] = bytes(chars[c] for c in token)
    else:  # SentencePiece style: '▁' is a space, <0xNN> one byte
        for token, i in tokenizer.get_vocab().items():
            if i in special:
                continue
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                out[i] = bytes([int(token[3:5], 16)])
            else:
                out[i] = token.replace("▁", " ").encode()
    return out


def schema_index(tokenizer, n: int):
    """outlines-core's automaton of `pairs_schema(n)` over the tokenizer's vocabulary."""
    from outlines_core import Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    by_bytes: dict[bytes, list[int]] = {}
    for i, b in token_bytes(tokenizer).items():
        by_bytes.setdefault(b, []).append(i)
    regex = build_regex_from_schema(json.dumps(pairs_schema(n)), whitespace_pattern=r"[ ]?")
    return Index(regex, Vocabulary(tokenizer.eos_token_id, by_bytes))


class SchemaConstraint(LogitsProcessor):
    """Every row of a batch may only continue with tokens its automaton state allows; EOS only
    once the object is complete. Rows that ended get their pad token, as `generate` fills them."""

    def __init__(self, index, prompt_length: int, rows: int, eos_id: int, pad_id: int):
        self.index, self.start, self.eos, self.pad = index, prompt_length, eos_id, pad_id
        self.states = [index.get_initial_state()] * rows
        self.ended = [False] * rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.start:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.ended[row] or token == self.eos:
                    self.ended[row] = True
                else:
                    self.states[row] = self.index.get_next_state(self.states[row], token)
        allowed = torch.full_like(scores, float("-inf"))
        for row, state in enumerate(self.states):
            allowed[row, [self.pad] if self.ended[row] else self.index.get_allowed_tokens(state)] = 0.0
        return scores + allowed


class Teacher:
    """A loaded teacher and its schema automaton, ready to write one shard after another."""

    def __init__(self, gcfg: GenerateConfig, folder: str, device: str = "cpu"):
        from classit.models import load_checkpoint
        from classit.tokenizer import load_tokenizer

        self.gcfg = gcfg
        self.tokenizer = load_tokenizer(folder)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = load_checkpoint(folder, dtype=dtype).to(device).eval()
        self.device = device
        self.index = schema_index(self.tokenizer, gcfg.pairs_per_article)
        self.max_prompt = prompt_room(gcfg, self.model.config)

    def prompt(self, article: dict) -> str:
        """The filled template (in the chat template where asked and the teacher has one), with the
        article cut until it fits the teacher's positions beside `max_new_tokens`."""
        article = dict(article)
        while True:
            text = fill_template(self.gcfg, article)
            if self.gcfg.chat_template and self.tokenizer.chat_template:
                text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                          add_generation_prompt=True)
            words = article["text"].split()
            if len(self.tokenizer(text)["input_ids"]) <= self.max_prompt or len(words) < 2:
                return text
            article["text"] = " ".join(words[:int(len(words) * 0.8)])

    def write(self, prompts: list[str], seed: int) -> list[str]:
        """One batch of outputs: sampled (or greedy) under the schema, decoded without special tokens."""
        sampling = self.gcfg.sampling
        templated = self.gcfg.chat_template and self.tokenizer.chat_template
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                               add_special_tokens=not templated).to(self.device)
        width = batch["input_ids"].shape[1]
        constraint = SchemaConstraint(self.index, width, len(prompts), self.tokenizer.eos_token_id,
                                      self.tokenizer.pad_token_id)
        torch.manual_seed(seed)
        options = dict(temperature=sampling.temperature, top_p=sampling.top_p) if sampling.do_sample else {}
        with torch.no_grad():
            out = self.model.generate(**batch, logits_processor=LogitsProcessorList([constraint]),
                                      do_sample=sampling.do_sample, max_new_tokens=sampling.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id, **options)
        return self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def batch_seed(seed: int, shard: int, attempt: int, batch: int) -> int:
    """Each generate call's own seed: a shard's outputs do not depend on which run or actor makes it."""
    return int(config_hash(seed, shard, attempt, batch), 16) % 2**31


def write_shard(teacher: Teacher, articles: list[dict], shard: int, source: str, made_by: dict) -> dict:
    """Up to `pairs_per_article` checked records per article: outputs are generated in batches, and an
    article short of valid pairs goes again (a new seed) up to `max_attempts` times. Returns the
    records and the counts: every pair turned down by reason, and the pairs still missing."""
    gcfg = teacher.gcfg
    n = gcfg.pairs_per_article
    kept: dict[str, list[dict]] = {a["article_id"]: [] for a in articles}
    asked: dict[str, set[str]] = {a["article_id"]: set() for a in articles}
    rejected = dict.fromkeys(REJECTIONS, 0)
    for attempt in range(gcfg.max_attempts):
        todo = [a for a in articles if len(kept[a["article_id"]]) < n]
        for b in range(0, len(todo), gcfg.batch_size):
            chunk = todo[b:b + gcfg.batch_size]
            outputs = teacher.write([teacher.prompt(a) for a in chunk], batch_seed(gcfg.seed, shard, attempt, b))
            for article, text in zip(chunk, outputs):
                pairs = parse_pairs(text, n)
                if pairs is None:
                    rejected["unparsable"] += 1
                    continue
                mine = kept[article["article_id"]]
                for pair in pairs:
                    reason = check_pair(pair, gcfg, asked[article["article_id"]])
                    if reason:
                        rejected[reason] += 1
                    elif len(mine) < n:
                        asked[article["article_id"]].add(normalised(pair["question"]))
                        mine.append(make_record(article, len(mine), pair, attempt, source, made_by))
    records = [r for a in articles for r in kept[a["article_id"]]]
    return {"records": records, "rejected": rejected, "missing": len(articles) * n - len(records)}
