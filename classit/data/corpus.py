"""Corpus pipeline: BabyLM text files or a `datasets` dataset -> cleaned lines -> packed blocks.

Cleaning follows the CLASS-IT paper: special characters removed, lines of two words or fewer
dropped, consecutive Switchboard utterances of one speaker merged. Each source is split 90/10
into train/validation. Tokenizer and blocks are cached under content hashes, so a second run
with the same inputs does no tokenization at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa

from classit.config import ClassitConfig, config_hash
from classit.models import PRESETS

CLEANING_VERSION = 1  # bump when cleaning rules change, to invalidate caches
MIN_WORDS = 3  # lines of two words or fewer are dropped

_SPEAKER = re.compile(r"^\s*([A-Za-z])\s*:\s*")
# Letters (any script), digits, white space and ordinary punctuation survive; the rest is removed.
_SPECIAL = re.compile(r"[^\w\s.,!?;:'\"()\-]|_")
_SPACES = re.compile(r"\s+")


def count_words(line: str) -> int:
    return len(line.split())


def clean_text(line: str) -> str:
    return _SPACES.sub(" ", _SPECIAL.sub(" ", line)).strip()


def split_speaker(line: str) -> tuple[str | None, str]:
    """A transcript line's speaker label (`A: ...`, upper-cased; None if unlabelled) and its text."""
    match = _SPEAKER.match(line)
    return (match.group(1).upper(), line[match.end():].strip()) if match else (None, line.strip())


def merge_speaker_turns(lines: list[str]) -> list[str]:
    """Merge consecutive utterances of one speaker (`A: ...`) into one turn, labels dropped."""
    turns: list[tuple[str | None, str]] = []
    for line in lines:
        speaker, text = split_speaker(line)
        if not text:
            continue
        if turns and speaker is not None and turns[-1][0] == speaker:
            turns[-1] = (speaker, f"{turns[-1][1]} {text}")
        else:
            turns.append((speaker, text))
    return [text for _, text in turns]


def clean_source(source: str, lines: list[str]) -> list[str]:
    if source == "switchboard":
        lines = merge_speaker_turns(lines)
    cleaned = (clean_text(line) for line in lines)
    return [line for line in cleaned if count_words(line) >= MIN_WORDS]


def split_train_validation(lines: list[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    n_valid = round(len(lines) * validation_fraction)
    valid_idx = set(order[:n_valid])
    train = [line for i, line in enumerate(lines) if i not in valid_idx]
    valid = [line for i, line in enumerate(lines) if i in valid_idx]
    return train, valid


def read_babylm_folder(folder: Path) -> dict[str, list[str]]:
    files = sorted(folder.glob("*.train"))
    if not files:
        raise FileNotFoundError(f"{folder}: no <source>.train files (expected the BabyLM layout)")
    return {f.stem: f.read_text(encoding="utf-8", errors="replace").splitlines() for f in files}


def read_hf_dataset(name: str, split: str, text_column: str) -> dict[str, list[str]]:
    import datasets

    path = Path(name)
    ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(name, split=split)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[split]
    if text_column not in ds.column_names:
        raise ValueError(f"corpus.text_column: dataset {name} has no column {text_column!r} ({ds.column_names})")
    sources = ds["source"] if "source" in ds.column_names else ["hf"] * len(ds)
    by_source: dict[str, list[str]] = {}
    for source, text in zip(sources, ds[text_column]):
        by_source.setdefault(source, []).extend(str(text).splitlines())
    return by_source


def _fingerprint_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def pack_blocks(flat: np.ndarray, lengths: np.ndarray, words: np.ndarray, block_size: int, pad_id: int):
    """Cut concatenated sequences (`flat`, with each one's length) into `block_size` blocks.

    Only the last block is padded. Each sequence's words are credited to the block that holds its
    last token, so summing `num_words` over the blocks a worker consumed counts words seen exactly.
    """
    n_blocks = -(-len(flat) // block_size)
    blocks = np.full(n_blocks * block_size, pad_id, dtype=np.int32)
    blocks[: len(flat)] = flat
    last_token = np.cumsum(lengths) - 1
    block_words = np.bincount(last_token // block_size, weights=words, minlength=n_blocks).astype(np.int64)
    return blocks.reshape(n_blocks, block_size), block_words


@dataclass
class PreparedCorpus:
    """Where the tokenizer and packed blocks live, and the counts that describe them."""

    root: Path
    stats: dict

    @classmethod
    def load(cls, root: Path) -> PreparedCorpus:
        return cls(root, json.loads((root / "stats.json").read_text()))

    @property
    def tokenizer_path(self) -> Path:
        return self.root.parent / "tokenizer"

    def blocks_path(self, split: str) -> Path:
        return self.root / split

    def load_blocks(self, split: str):
        import datasets

        return datasets.load_from_disk(str(self.blocks_path(split)))


def _load_lines(cfg: ClassitConfig, cache_dir: Path) -> tuple[dict[str, list[str]], str]:
    """Raw lines per source, and a fingerprint of their content."""
    corpus = cfg.corpus
    if corpus.synthetic is not None:
        from classit.data.synthetic import generate_corpus

        folder = cache_dir / f"synthetic-{config_hash(corpus.synthetic)}"
        if not (folder / "complete").exists():
            generate_corpus(folder, corpus.synthetic.sentences, corpus.synthetic.seed)
            (folder / "complete").touch()
        return read_babylm_folder(folder), config_hash(corpus.synthetic)
    if corpus.path is not None:
        lines = read_babylm_folder(corpus.path)
        return lines, _fingerprint_files(list(corpus.path.glob("*.train")))
    return read_hf_dataset(corpus.hf_dataset, corpus.hf_split, corpus.text_column), config_hash(
        corpus.hf_dataset, corpus.hf_split, corpus.text_column)


def clean_and_split(raw: dict[str, list[str]], validation_fraction: float, seed: int):
    train, valid, stats = [], [], {}
    for source in sorted(raw):
        lines = clean_source(source, raw[source])
        t, v = split_train_validation(lines, validation_fraction, seed)
        train += t
        valid += v
        stats[source] = {"raw_lines": len(raw[source]), "lines": len(lines),
                         "train_words": sum(map(count_words, t)), "validation_words": sum(map(count_words, v))}
    return train, valid, stats


def corpus_train_words(cfg: ClassitConfig) -> int:
    """Words in the cleaned training split, without tokenizing (for plans and estimates)."""
    raw, _ = _load_lines(cfg, Path(cfg.run.cache_dir))
    train, _, _ = clean_and_split(raw, cfg.corpus.validation_fraction, cfg.corpus.split_seed)
    return sum(map(count_words, train))


SHARD_LINES = 200_000  # lines per tokenized shard: the unit a killed preparation resumes from


def tokenize_shard(lines: list[str], tokenizer) -> dict[str, np.ndarray]:
    """Each line's token ids (BOS ... EOS) concatenated, with each line's length and word count.
    The Rust tokenizer straight (`encode_batch_fast`: the ids `tokenizer(lines)` gives, without
    offsets or Python-side conversion)."""
    ids = [encoding.ids for encoding in tokenizer.backend_tokenizer.encode_batch_fast(lines)]
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    flat = np.fromiter(chain.from_iterable(ids), np.int32, int(lengths.sum()))
    return {"flat": np.insert(flat, np.cumsum(lengths), tokenizer.eos_token_id), "lengths": lengths + 1,
            "words": np.fromiter(map(count_words, lines), np.int64, len(lines))}


_shard_tokenizer = None  # a tokenizing process's tokenizer, loaded once per process


def _load_shard_tokenizer(path: str) -> None:
    global _shard_tokenizer
    from classit.tokenizer import load_tokenizer

    _shard_tokenizer = load_tokenizer(path)


def _tokenize_to(job: tuple[list[str], str]) -> None:
    """Tokenize one shard and commit it by rename: a kill never leaves a partial shard."""
    lines, path = job
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **tokenize_shard(lines, _shard_tokenizer))
    Path(tmp).rename(path)


def tokenize_and_pack(lines: list[str], tokenizer_path: Path, pad_id: int, shards: Path, block_size: int,
                      num_proc: int):
    """Tokenize `lines` shard by shard on `num_proc` processes, each shard kept in `shards` as it is
    finished (a rerun tokenizes only the missing ones), then pack them, in order, into a blocks
    dataset: the same blocks whatever the shard size."""
    import multiprocessing

    import datasets

    shards.mkdir(parents=True, exist_ok=True)
    paths = [shards / f"shard-{k:05d}.npz" for k in range(-(-len(lines) // SHARD_LINES))]
    missing = [(lines[k * SHARD_LINES:(k + 1) * SHARD_LINES], str(path))
               for k, path in enumerate(paths) if not path.exists()]
    if num_proc > 1 and len(missing) > 1:
        # Forked, as `datasets.map` does: the caller's main module is not imported again.
        with multiprocessing.get_context("fork").Pool(min(num_proc, len(missing)), _load_shard_tokenizer,
                                                      (str(tokenizer_path),)) as pool:
            for _ in pool.imap_unordered(_tokenize_to, missing):
                pass
    else:
        _load_shard_tokenizer(str(tokenizer_path))
        for job in missing:
            _tokenize_to(job)
    parts = [np.load(path) for path in paths]
    flat, lengths, words = (np.concatenate([part[key] for part in parts]) for key in ("flat", "lengths", "words"))
    blocks, block_words = pack_blocks(flat, lengths, words, block_size, pad_id)
    table = pa.table({
        "input_ids": pa.FixedSizeListArray.from_arrays(pa.array(blocks.ravel()), block_size),
        "num_words": pa.array(block_words),
    })
    return datasets.Dataset(table), {"tokens": int(len(flat)), "words": int(words.sum()), "blocks": len(blocks)}


def prepare_corpus(cfg: ClassitConfig) -> PreparedCorpus:
    """Tokenizer and blocks for this config, built once and then read from the cache."""
    from classit.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    cache_dir = Path(cfg.run.cache_dir)
    raw, fingerprint = _load_lines(cfg, cache_dir)
    vocab_size = cfg.tokenizer.vocab_size or PRESETS[cfg.model.preset]["vocab_size"]
    corpus = cfg.corpus
    tokenizer_key = config_hash(fingerprint, CLEANING_VERSION, corpus.validation_fraction, corpus.split_seed,
                                cfg.tokenizer, vocab_size)
    tok_root = cache_dir / f"corpus-{tokenizer_key}"
    blocks_root = tok_root / f"blocks-{corpus.block_size}"
    if (blocks_root / "stats.json").exists():
        return PreparedCorpus.load(blocks_root)

    train, valid, source_stats = clean_and_split(raw, corpus.validation_fraction, corpus.split_seed)
    if not train or not valid:
        raise ValueError(f"corpus: too few lines after cleaning ({len(train)} train, {len(valid)} validation)")
    from classit.budget import check_budget

    words = sum(s["train_words"] for s in source_stats.values())  # the input limit, before any tokenizing
    check_budget(words, 0, cfg.budget, f"the pretraining corpus ({words:,} input words)")
    tok_path = tok_root / "tokenizer"
    if not (tok_path / "tokenizer_config.json").exists():
        tmp = tok_root / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_tokenizer(train_tokenizer(train, vocab_size, cfg.tokenizer.min_frequency), tmp)
        tmp.rename(tok_path)
    tmp_root = blocks_root.with_name(blocks_root.name + ".tmp")
    shutil.rmtree(tmp_root, ignore_errors=True)
    tokenizer = load_tokenizer(tok_path)
    stats = {"sources": source_stats, "block_size": corpus.block_size, "vocab_size": len(tokenizer)}
    for split, lines in (("train", train), ("validation", valid)):
        # Tokenized shards depend on the lines and the tokenizer, not the block size: kept beside it.
        blocks, counts = tokenize_and_pack(lines, tok_path, tokenizer.pad_token_id, tok_root / "tokenized" / split,
                                           corpus.block_size, corpus.num_proc or os.cpu_count() or 1)
        blocks.save_to_disk(str(tmp_root / split))
        stats[split] = counts
    (tmp_root / "stats.json").write_text(json.dumps(stats, indent=2))
    shutil.rmtree(blocks_root, ignore_errors=True)
    tmp_root.rename(blocks_root)  # only a complete cache entry ever has this name
    shutil.rmtree(tok_root / "tokenized")  # the blocks hold it all now
    return PreparedCorpus(blocks_root, stats)
