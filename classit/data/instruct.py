"""Instruction data: prompt/reply records, the Switchboard pair builder, and their encoding.

A record becomes `BOS prompt <|reply|> reply EOS`; labels are -100 everywhere but on the reply
and its EOS, so the loss (the same token cross-entropy as pretraining) is on replies only.
Batching them (and checking that mask) is the training loop's: `train/loop.py::collate_instruct`.
"""

from __future__ import annotations

import random
from pathlib import Path

from classit.artefacts import parse_json
from classit.config import ConfigError, InstructDataset, TemplateConfig
from classit.data.corpus import clean_text, count_words, hf_split, split_speaker
from classit.tokenizer import reply_token_id

IGNORE = -100


class DataError(ConfigError):
    """Malformed instruction data; the message names the file and line (or record)."""


def record_words(record: dict) -> int:
    return count_words(record["prompt"]) + count_words(record["reply"])


def switchboard_pairs(lines: list[str]) -> list[dict]:
    """Conversational pairs as in CLASS-IT: merge consecutive turns of one speaker, then slide a
    window over the alternating turns: (A1,B1), (B1,A2), (A2,B2), ... A blank line or a line with
    no speaker label ends a dialogue; pairs never cross dialogues."""
    dialogues: list[list[list[str]]] = [[]]  # dialogue -> turns -> [speaker, text]
    for line in lines:
        speaker, text = split_speaker(line)
        text = clean_text(text) if speaker else ""
        if not text:
            if dialogues[-1]:
                dialogues.append([])
            continue
        turns = dialogues[-1]
        if turns and turns[-1][0] == speaker:
            turns[-1][1] += " " + text
        else:
            turns.append([speaker, text])
    return [{"prompt": a[1], "reply": b[1], "source": "switchboard"}
            for turns in dialogues for a, b in zip(turns, turns[1:])]


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text "
                        f"(byte {raw[err.start]:#04x} at offset {err.start})") from None


def _read_file(path: Path) -> list[tuple[str, object]]:
    """(where, record) pairs: `where` is the file and line (JSONL) or the file and record number."""
    if path.is_dir():
        import datasets

        return [(f"{path}: row {i}", r) for i, r in enumerate(datasets.load_from_disk(str(path)).to_list())]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"{path}: row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    text = _read_text(path)
    if path.suffix == ".json":
        records = parse_json(text, path)
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of records")
        return [(f"{path}: record {i}", r) for i, r in enumerate(records)]
    return [(f"{path}:{number}", parse_json(line, path, number))
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def load_records(name: str, spec: InstructDataset, seed: int = 0,
                 cache_dir: Path = Path(".cache/classit")) -> list[dict]:
    """A dataset's records with non-empty `prompt` and `reply` (and `source`), subset if asked.
    A generated set comes from the cache (`cache_dir`), made beforehand by `classit generate-qa`."""
    if spec.generate is not None:
        from classit.generate.job import read_generated

        located = [(f"{name} generated: record {r['id']}", r) for r in read_generated(name, spec.generate, cache_dir)]
    elif spec.synthetic is not None:
        from classit.data.synthetic import conversation_pairs, qa_pairs

        make = conversation_pairs if spec.synthetic == "conversation" else qa_pairs
        located = [(f"synthetic {spec.synthetic}: record {i}", r)
                   for i, r in enumerate(make(spec.max_records or 3000, seed))]
    elif spec.switchboard is not None:
        pairs = switchboard_pairs(_read_text(spec.switchboard).splitlines())
        located = [(f"{spec.switchboard}: pair {i}", r) for i, r in enumerate(pairs)]
    elif spec.path is not None:
        located = _read_file(spec.path)
    else:
        rows = hf_split(spec.hf_dataset, spec.hf_split, f"instruct.datasets.{name}.hf_dataset").to_list()
        located = [(f"{spec.hf_dataset}: row {i}", r) for i, r in enumerate(rows)]
    for where, record in located:
        if not isinstance(record, dict):
            raise DataError(f"{where}: instruct.datasets.{name}: a record must be a JSON object with prompt and reply")
        for field in ("prompt", "reply"):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise DataError(f"{where}: instruct.datasets.{name}: record has no {field!r} text")
    records = [{"prompt": r["prompt"], "reply": r["reply"], "source": r.get("source") or name} for _, r in located]
    if spec.max_records is not None and len(records) > spec.max_records:
        records = random.Random(seed).sample(records, spec.max_records)
    return records


def encode_record(tokenizer, record: dict, max_length: int, template: TemplateConfig = TemplateConfig()):
    """Token ids and labels of one record, or None if even the reply alone does not fit.

    Too-long sequences lose prompt tokens from the left (after BOS); the reply is never cut.
    """
    prompt = tokenizer(template.prompt_prefix + record["prompt"])["input_ids"]  # BOS + prompt
    reply = tokenizer(template.reply_prefix + record["reply"], add_special_tokens=False)["input_ids"]
    reply = reply + [tokenizer.eos_token_id]
    head = [reply_token_id(tokenizer)]
    overflow = len(prompt) + len(head) + len(reply) - max_length
    if overflow > 0:
        if overflow > len(prompt) - 1:  # keep BOS and at least one prompt token
            return None
        prompt = prompt[:1] + prompt[1 + overflow:]
    input_ids = prompt + head + reply
    labels = [IGNORE] * (len(prompt) + len(head)) + reply
    return {"input_ids": input_ids, "labels": labels, "num_words": record_words(record),
            "truncated": overflow > 0}
