"""Corpus pipeline: BabyLM text files or a `datasets` dataset -> cleaned lines -> packed blocks.

Cleaning follows the CLASS-IT paper: special characters removed, lines of two words or fewer
dropped, consecutive Switchboard utterances of one speaker merged. Each source is split 90/10
into train/validation. Tokenizer and blocks are cached under content hashes, so a second run
with the same inputs does no tokenization at all.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain, count, islice
from pathlib import Path

import numpy as np
import pyarrow as pa

from classit.artefacts import (artefact_dir, building, commit_file, commit_folder, files_fingerprint, is_complete,
                               mark_complete, read_marker, stat_signature)
from classit.config import ClassitConfig, ConfigError, CorpusConfig, LoadError, SyntheticCorpusConfig, config_hash
from classit.models import PRESETS
from classit.units import one_line

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


def merge_speaker_turns(lines: Iterable[str]) -> Iterator[str]:
    """Merge consecutive utterances of one speaker (`A: ...`) into one turn, labels dropped; streamed."""
    turn_speaker, turn = None, None
    for line in lines:
        speaker, text = split_speaker(line)
        if not text:
            continue
        if turn is not None and speaker is not None and turn_speaker == speaker:
            turn = f"{turn} {text}"
        else:
            if turn is not None:
                yield turn
            turn_speaker, turn = speaker, text
    if turn is not None:
        yield turn


def source_turns(source: str, lines: Iterable[str]) -> Iterable[str]:
    """The lines cleaning sees: Switchboard's turns merged first (a stream, in order)."""
    return merge_speaker_turns(lines) if source == "switchboard" else lines


def clean_lines(lines: Iterable[str]) -> list[str]:
    cleaned = (clean_text(line) for line in lines)
    return [line for line in cleaned if count_words(line) >= MIN_WORDS]


def clean_source(source: str, lines: Iterable[str]) -> list[str]:
    """A whole source cleaned at once: what `clean_corpus` does a chunk at a time."""
    return clean_lines(source_turns(source, lines))


def validation_mask(n: int, validation_fraction: float, seed: int) -> np.ndarray:
    """Which of `n` lines are validation: a seeded shuffle's first `round(n * fraction)`."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    mask = np.zeros(n, dtype=bool)
    mask[order[:round(n * validation_fraction)]] = True
    return mask


def split_train_validation(lines: list, validation_fraction: float, seed: int) -> tuple[list, list]:
    mask = validation_mask(len(lines), validation_fraction, seed)
    return ([line for line, valid in zip(lines, mask) if not valid],
            [line for line, valid in zip(lines, mask) if valid])


def file_lines(path: Path) -> Iterator[str]:
    """A text file's lines, cut as `str.splitlines` cuts them, read a line at a time. Bytes that are
    not UTF-8 stop it, naming the file and line: replaced, they would be words the corpus lacks."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield from raw.decode("utf-8").splitlines()
            except UnicodeDecodeError as err:
                raise LoadError(f"{path}:{number}: not UTF-8 text ({one_line(err)})") from None


def read_babylm_folder(folder: Path) -> dict[str, Iterator[str]]:
    """Each `<source>.train` file's lines, streamed."""
    files = sorted(folder.glob("*.train"))
    if not files:
        raise FileNotFoundError(f"{folder}: no <source>.train files (expected the BabyLM layout)")
    return {f.stem: file_lines(f) for f in files}


def hf_split(name: str, split: str, field: str):
    """A `datasets` split: a folder saved with `save_to_disk`, or a name `load_dataset` knows; one
    that does not load is named with the config `field` that gave it."""
    import datasets

    path = Path(name)
    try:
        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(name, split=split)
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    except Exception as err:  # noqa: BLE001 - no such data or split, the hub out of reach...: one line
        raise ConfigError(f"{field}: {name} (split {split}) does not load ({one_line(err)[:200]})") from None


def read_hf_dataset(name: str, split: str, text_column: str) -> dict[str, list[str]]:
    """The dataset's lines per source (its `source` column, else one source `hf`)."""
    ds = hf_split(name, split, "corpus.hf_dataset")
    if text_column not in ds.column_names:
        raise ConfigError(f"corpus.text_column: dataset {name} has no column {text_column!r} ({ds.column_names})")
    sources = ds["source"] if "source" in ds.column_names else ["hf"] * len(ds)
    by_source: dict[str, list[str]] = {}
    for source, text in zip(sources, ds[text_column]):
        by_source.setdefault(source, []).extend(str(text).splitlines())
    return by_source


def corpus_fingerprint(corpus: CorpusConfig, cache_dir: Path) -> str:
    """What the corpus's content hashes to: the synthetic corpus's settings, the `.train` files'
    bytes, or the fingerprint `datasets` gives the split's content. It keys the corpus's cache and
    is part of a base model's key, so a corpus changed in place (a file edited, a dataset folder
    saved again, a new revision on the Hub) is neither tokenized nor pretrained on as the old one."""
    if corpus.synthetic is not None:
        return artefact_dir(cache_dir, "synthetic", corpus.synthetic, SYNTHETIC_VERSION).name
    if corpus.path is not None:
        return files_fingerprint(corpus.path.glob("*.train"))
    folder = Path(corpus.hf_dataset)
    saved = stat_signature(f for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else ()
    return config_hash(_hf_fingerprint(corpus.hf_dataset, corpus.hf_split, saved), corpus.hf_split, corpus.text_column)


@lru_cache(maxsize=8)
def _hf_fingerprint(name: str, split: str, saved: tuple) -> str:
    """Loaded once per process (a sweep's driver asks at every trial result until its base is
    built), again when a saved folder's files (`saved`, their stat signature) change."""
    return hf_split(name, split, "corpus.hf_dataset")._fingerprint


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
        return cls(root, read_marker(root)["stats"])

    @property
    def tokenizer_path(self) -> Path:
        return self.root.parent / "tokenizer"

    def blocks_path(self, split: str) -> Path:
        return self.root / split

    def load_blocks(self, split: str):
        import datasets

        return datasets.load_from_disk(str(self.blocks_path(split)))


SYNTHETIC_VERSION = 2  # bump when the synthetic generator's files change (2: titled wiki articles)


def synthetic_corpus(synthetic: SyntheticCorpusConfig, cache_dir: Path) -> Path:
    """The synthetic corpus's BabyLM-layout folder, generated once."""
    from classit.data.synthetic import generate_corpus

    folder = artefact_dir(cache_dir, "synthetic", synthetic, SYNTHETIC_VERSION)
    if not is_complete(folder):
        commit_folder(folder, lambda tmp: generate_corpus(tmp, synthetic.sentences, synthetic.seed),
                      {"synthetic": synthetic.model_dump(), "version": SYNTHETIC_VERSION})
    return folder


def corpus_source(corpus: CorpusConfig) -> str:
    """The config field and value that name the corpus, for an error line."""
    if corpus.synthetic is not None:
        return "corpus.synthetic"
    return f"corpus.path {corpus.path}" if corpus.path is not None else f"corpus.hf_dataset {corpus.hf_dataset}"


def _load_lines(cfg: ClassitConfig, cache_dir: Path) -> tuple[dict[str, Iterable[str]], str]:
    """Raw lines per source (streamed from files), and a fingerprint of their content."""
    corpus = cfg.corpus
    if corpus.synthetic is not None:
        lines = read_babylm_folder(synthetic_corpus(corpus.synthetic, cache_dir))
    elif corpus.path is not None:
        lines = read_babylm_folder(corpus.path)
    else:
        lines = read_hf_dataset(corpus.hf_dataset, corpus.hf_split, corpus.text_column)
    return lines, corpus_fingerprint(corpus, cache_dir)


SHARD_LINES = 200_000  # lines per chunk, cleaned and then tokenized: the unit a killed preparation resumes from


def _batched(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    lines = iter(lines)
    while batch := list(islice(lines, size)):
        yield batch


def _run_all(jobs: Iterable, work, num_proc: int, initializer=None, initargs=()) -> None:
    """`work(job)` for every job, on `num_proc` forked processes (as `datasets.map` forks: the
    caller's main module is not imported again), with at most two jobs per process in flight:
    `Pool.imap` would read every job ahead, and a job here can be a chunk of a corpus's lines."""
    import multiprocessing

    if num_proc <= 1:
        if initializer is not None:
            initializer(*initargs)
        for job in jobs:
            work(job)
        return
    with multiprocessing.get_context("fork").Pool(num_proc, initializer, initargs) as pool:
        pending = deque()
        for job in jobs:
            pending.append(pool.apply_async(work, (job,)))
            if len(pending) >= 2 * num_proc:
                pending.popleft().get()
        for result in pending:
            result.get()


def _clean_to(job: tuple[list[str], str]) -> None:
    """Clean one chunk of a source's lines into an Arrow file: the kept lines and their word counts."""
    from pyarrow import feather

    lines, path = job
    kept = clean_lines(lines)
    table = pa.table({"text": pa.array(kept, pa.string()), "words": pa.array(map(count_words, kept), pa.int32())})
    commit_file(lambda tmp: feather.write_feather(table, tmp, compression="uncompressed"), path)


def _read_chunk(path: Path, columns: list[str]) -> pa.Table:
    from pyarrow import feather

    return feather.read_table(str(path), columns=columns, memory_map=True)


def clean_corpus(raw: dict[str, Iterable[str]], root: Path, num_proc: int, made_by: dict) -> dict:
    """Clean every source a chunk of SHARD_LINES lines at a time, on `num_proc` processes, into
    `root/<source>/chunk-<k>.arrow`, each kept as it is finished (a rerun cleans only the missing
    ones). Returns each source's raw line count and chunks (file, lines), kept in the folder's
    marker: once it is written no raw line is read again."""
    if not is_complete(root):
        with building(root):
            if not is_complete(root):  # not finished by a process this one waited for
                _clean_chunks(raw, root, num_proc, made_by)
    return read_marker(root)["sources"]


def _clean_chunks(raw: dict[str, Iterable[str]], root: Path, num_proc: int, made_by: dict) -> None:
    raw_counts, chunk_paths = {}, {}

    def jobs():
        for source in sorted(raw):
            (root / source).mkdir(parents=True, exist_ok=True)
            raw_counts[source], chunk_paths[source] = count(), []  # the count advances once per raw line read
            lines = (line for line, _ in zip(raw[source], raw_counts[source]))
            for k, chunk in enumerate(_batched(source_turns(source, lines), SHARD_LINES)):
                path = root / source / f"chunk-{k:05d}.arrow"
                chunk_paths[source].append(path)
                if not path.exists():
                    yield chunk, str(path)

    _run_all(jobs(), _clean_to, num_proc)
    index = {source: {"raw_lines": next(raw_counts[source]),
                      "chunks": [{"file": path.name, "lines": _read_chunk(path, ["words"]).num_rows}
                                 for path in chunk_paths[source]]}
             for source in sorted(raw)}
    mark_complete(root, made_by, sources=index)


@dataclass
class CleanedCorpus:
    """The cleaned lines on disk, chunk by chunk, and which of them are validation lines."""

    root: Path
    chunks: list[tuple[str, Path, np.ndarray]]  # (source, chunk file, validation mask), in corpus order
    source_stats: dict

    def lines(self, split: str) -> Iterator[list[str]]:
        """The split's lines, a chunk at a time, in corpus order (sources sorted, lines in order)."""
        for _, path, is_valid in self.chunks:
            keep = is_valid if split == "validation" else ~is_valid
            yield [line for line, k in zip(_read_chunk(path, ["text"])["text"].to_pylist(), keep) if k]


def cleaned_corpus(cfg: ClassitConfig, raw: dict[str, Iterable[str]], fingerprint: str) -> CleanedCorpus:
    """The config's corpus (`raw`, of that content fingerprint) cleaned, cached by its content, and
    split 90/10 per source."""
    made_by = {"corpus": fingerprint, "cleaning_version": CLEANING_VERSION, "chunk_lines": SHARD_LINES}
    root = artefact_dir(cfg.run.cache_dir, "lines", made_by)
    index = clean_corpus(raw, root, cfg.corpus.num_proc or os.cpu_count() or 1, made_by)
    chunks, stats = [], {}
    for source, entry in index.items():
        sizes = [chunk["lines"] for chunk in entry["chunks"]]
        mask = validation_mask(sum(sizes), cfg.corpus.validation_fraction, cfg.corpus.split_seed)
        paths = [root / source / chunk["file"] for chunk in entry["chunks"]]
        chunks += [(source, path, is_valid) for path, is_valid in zip(paths, np.split(mask, np.cumsum(sizes)[:-1]))]
        words = np.concatenate([_read_chunk(path, ["words"])["words"].to_numpy() for path in paths] or [[]])
        stats[source] = {"raw_lines": entry["raw_lines"], "lines": len(mask),
                         "train_words": int(words[~mask].sum()), "validation_words": int(words[mask].sum())}
    return CleanedCorpus(root, chunks, stats)


def corpus_train_words(cfg: ClassitConfig) -> int:
    """Words in the cleaned training split, without tokenizing (for plans and estimates)."""
    cleaned = cleaned_corpus(cfg, *_load_lines(cfg, Path(cfg.run.cache_dir)))
    return sum(s["train_words"] for s in cleaned.source_stats.values())


def tokenize_lines(lines: list[str], words: np.ndarray, tokenizer) -> dict[str, np.ndarray]:
    """Each line's token ids (BOS ... EOS) concatenated, with each line's length and word count.
    The Rust tokenizer straight (`encode_batch_fast`: the ids `tokenizer(lines)` gives, without
    offsets or Python-side conversion)."""
    ids = [encoding.ids for encoding in tokenizer.backend_tokenizer.encode_batch_fast(lines)]
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    flat = np.fromiter(chain.from_iterable(ids), np.int32, int(lengths.sum()))
    return {"flat": np.insert(flat, np.cumsum(lengths), tokenizer.eos_token_id), "lengths": lengths + 1,
            "words": words.astype(np.int64)}


_shard_tokenizer = None  # a tokenizing process's tokenizer, loaded once per process


def _load_shard_tokenizer(path: str) -> None:
    global _shard_tokenizer
    from classit.tokenizer import load_tokenizer

    _shard_tokenizer = load_tokenizer(path)


def _tokenize_to(job: tuple[str, np.ndarray, str]) -> None:
    """Tokenize one cleaned chunk, its train and its validation lines apart, into one `.npz`."""
    chunk, is_valid, path = job
    table = _read_chunk(Path(chunk), ["text", "words"])
    lines, words = table["text"].to_pylist(), table["words"].to_numpy()
    arrays = {}
    for split, keep in (("train", ~is_valid), ("validation", is_valid)):
        part = tokenize_lines([line for line, k in zip(lines, keep) if k], words[keep], _shard_tokenizer)
        arrays |= {f"{split}.{key}": value for key, value in part.items()}
    commit_file(lambda tmp: np.savez(tmp, **arrays), path, suffix=".npz")


def tokenize_corpus(cleaned: CleanedCorpus, tokenizer_path: Path, shards: Path, num_proc: int) -> list[Path]:
    """Tokenize every cleaned chunk on `num_proc` processes into `shards`, each kept as it is
    finished (a rerun tokenizes only the missing ones); the shard files, in corpus order."""
    paths = [shards / source / f"{chunk.stem}.npz" for source, chunk, _ in cleaned.chunks]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(str(chunk), is_valid, str(path))
            for (_, chunk, is_valid), path in zip(cleaned.chunks, paths) if not path.exists()]
    _run_all(jobs, _tokenize_to, min(num_proc, len(jobs)), _load_shard_tokenizer, (str(tokenizer_path),))
    return paths


def pack_split(shards: list[Path], split: str, block_size: int, pad_id: int):
    """One split's tokenized shards packed, in order, into a blocks dataset: the same blocks
    whatever the chunk size."""
    import datasets

    parts = [np.load(path) for path in shards]
    flat, lengths, words = (np.concatenate([part[f"{split}.{key}"] for part in parts])
                            for key in ("flat", "lengths", "words"))
    blocks, block_words = pack_blocks(flat, lengths, words, block_size, pad_id)
    table = pa.table({
        "input_ids": pa.FixedSizeListArray.from_arrays(pa.array(blocks.ravel()), block_size),
        "num_words": pa.array(block_words),
    })
    return datasets.Dataset(table), {"tokens": int(len(flat)), "words": int(words.sum()), "blocks": len(blocks)}


def prepare_corpus(cfg: ClassitConfig) -> PreparedCorpus:
    """Tokenizer and blocks for this config, built once and then read from the cache. Each step
    streams the corpus a chunk at a time and keeps what it finished: the cleaned lines (kept, for
    other tokenizers and block sizes), the tokenizer, the tokenized shards (deleted once packed)."""
    cache_dir = Path(cfg.run.cache_dir)
    corpus = cfg.corpus
    raw, fingerprint = _load_lines(cfg, cache_dir)
    vocab_size = cfg.tokenizer.vocab_size or PRESETS[cfg.model.preset]["vocab_size"]
    made_by = {"corpus": fingerprint, "cleaning_version": CLEANING_VERSION,
               "validation_fraction": corpus.validation_fraction, "split_seed": corpus.split_seed,
               "tokenizer": cfg.tokenizer.model_dump(), "vocab_size": vocab_size}
    tok_root = artefact_dir(cache_dir, "corpus", made_by)
    blocks_root = tok_root / f"blocks-{corpus.block_size}"
    if not is_complete(blocks_root):
        with building(tok_root):  # its tokenizer, shards and blocks
            if not is_complete(blocks_root):  # not finished by a process this one waited for
                _build_blocks(cfg, raw, fingerprint, made_by, tok_root, blocks_root)
    return PreparedCorpus.load(blocks_root)


def _build_blocks(cfg: ClassitConfig, raw: dict[str, Iterable[str]], fingerprint: str, made_by: dict,
                  tok_root: Path, blocks_root: Path) -> None:
    """Clean (or reuse the cleaned lines), train the tokenizer, tokenize and pack, each step kept."""
    from classit.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    corpus = cfg.corpus
    vocab_size = made_by["vocab_size"]
    cleaned = cleaned_corpus(cfg, raw, fingerprint)
    n_valid = sum(int(is_valid.sum()) for _, _, is_valid in cleaned.chunks)
    n_train = sum(s["lines"] for s in cleaned.source_stats.values()) - n_valid
    if not n_train or not n_valid:
        raise ConfigError(f"{corpus_source(corpus)}: too few lines after cleaning ({n_train} train, {n_valid} "
                          f"validation; the split needs one of each)")
    from classit.budget import check_budget

    words = sum(s["train_words"] for s in cleaned.source_stats.values())  # the input limit, before any tokenizing
    check_budget(words, 0, cfg.budget, f"the pretraining corpus ({words:,} input words)")
    tok_path = tok_root / "tokenizer"
    if not is_complete(tok_path):
        commit_folder(tok_path, lambda tmp: save_tokenizer(
            train_tokenizer(cleaned.lines("train"), vocab_size, cfg.tokenizer.min_frequency), tmp), made_by)
    tokenizer = load_tokenizer(tok_path)
    # Tokenized shards depend on the lines and the tokenizer, not the block size: kept beside it.
    shards = tokenize_corpus(cleaned, tok_path, tok_root / "tokenized" / cleaned.root.name,
                             corpus.num_proc or os.cpu_count() or 1)
    stats = {"sources": cleaned.source_stats, "block_size": corpus.block_size, "vocab_size": len(tokenizer)}

    def pack(folder: Path) -> dict:
        for split in ("train", "validation"):
            blocks, stats[split] = pack_split(shards, split, corpus.block_size, tokenizer.pad_token_id)
            blocks.save_to_disk(str(folder / split))
        return {"stats": stats}

    commit_folder(blocks_root, pack, {**made_by, "lines": cleaned.root.name, "block_size": corpus.block_size})
    shutil.rmtree(tok_root / "tokenized")  # the blocks hold it all now
