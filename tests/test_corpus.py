import json
import shutil

import numpy as np
import pytest

from classit.data import corpus as corpus_mod
from classit.data.corpus import (clean_source, clean_text, count_words, merge_speaker_turns, pack_blocks,
                                 prepare_corpus, read_babylm_folder, split_train_validation)
from classit.tokenizer import PORTABLE_TOKENIZER_CLASS, REPLY, load_tokenizer
from conftest import small_config


def test_special_characters_removed_and_spaces_folded():
    assert clean_text("* the dog  ~runs ♪ fast # .") == "the dog runs fast ."
    assert clean_text("don't say \"no\", (please)!") == "don't say \"no\", (please)!"
    assert clean_text("café au lait") == "café au lait"  # letters of any script stay


def test_short_lines_dropped():
    assert clean_source("childes", ["yes .", "no", "the dog runs", "* # ~"]) == ["the dog runs"]


def test_switchboard_turns_of_one_speaker_merged():
    lines = ["A: well i think so", "A: you know it is", "B: yeah right", "A: and then we went home"]
    assert list(merge_speaker_turns(lines)) == ["well i think so you know it is", "yeah right", "and then we went home"]
    # After merging, "yeah right" (2 words) is dropped by the length rule.
    assert clean_source("switchboard", lines) == ["well i think so you know it is", "and then we went home"]


def test_split_is_disjoint_complete_and_90_10():
    lines = [f"line number {i}" for i in range(1000)]
    train, valid = split_train_validation(lines, 0.1, seed=3)
    assert len(valid) == 100 and len(train) == 900
    assert sorted(train + valid) == sorted(lines)
    assert split_train_validation(lines, 0.1, seed=3) == (train, valid)


def test_packing_loses_and_duplicates_no_token_and_counts_words():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(4, 100, size=rng.integers(1, 40))) for _ in range(300)]
    words = [int(rng.integers(1, 10)) for _ in seqs]
    flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])
    lengths = np.array([len(s) for s in seqs])
    blocks, block_words = pack_blocks(flat, lengths, np.array(words), block_size=32, pad_id=0)
    flat = blocks.ravel()
    n = sum(map(len, seqs))
    assert blocks.shape[1] == 32 and len(blocks) == -(-n // 32)
    assert flat[:n].tolist() == [t for s in seqs for t in s]  # every token once, in order
    assert (flat[n:] == 0).all()  # only the tail is padding
    assert block_words.sum() == sum(words)


def test_prepare_corpus_counts_words_exactly_and_reuses_cache(tmp_path, monkeypatch):
    cfg = small_config(tmp_path)
    first = prepare_corpus(cfg)
    train = first.load_blocks("train")
    # Words in the blocks equal a direct count over the cleaned training lines.
    # The whole corpus in memory, each source cleaned and split at once (the pipeline streams it in chunks).
    raw = read_babylm_folder(next((tmp_path / "cache").glob("synthetic-*")))
    train_lines = [line for source in sorted(raw) for line in split_train_validation(
        clean_source(source, raw[source]), cfg.corpus.validation_fraction, cfg.corpus.split_seed)[0]]
    assert sum(train["num_words"]) == sum(map(count_words, train_lines)) == first.stats["train"]["words"]
    tokenizer = load_tokenizer(first.tokenizer_path)
    assert first.stats["train"]["tokens"] == sum(len(tokenizer(line)["input_ids"]) + 1 for line in train_lines)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again despite a cached corpus")

    monkeypatch.setattr(corpus_mod, "clean_corpus", no_tokenizing)
    monkeypatch.setattr(corpus_mod, "tokenize_lines", no_tokenizing)
    second = prepare_corpus(cfg)
    assert second.root == first.root and second.stats == first.stats
    assert len(second.load_blocks("train")) == len(train)


def test_tokenizer_portable_with_bos_and_boundary(tmp_path):
    prepared = prepare_corpus(small_config(tmp_path))
    config = json.loads((prepared.tokenizer_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS  # a class transformers 4.x knows
    assert REPLY in config["additional_special_tokens"]
    tokenizer = load_tokenizer(prepared.tokenizer_path)
    ids = tokenizer("the dog runs .")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the dog runs ."
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3


def test_unknown_corpus_folder_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="no <source>.train files"):
        read_babylm_folder(tmp_path)


def test_babylm_folder_and_datasets_sources_give_the_same_lines(tmp_path):
    import datasets

    folder = tmp_path / "babylm"
    folder.mkdir()
    childes = [f"the child number {i} plays with the dog ." for i in range(300)]
    switchboard = [f"{'AB'[i % 2]}: and we talked about thing {i} today" for i in range(200)]
    (folder / "childes.train").write_text("\n".join(childes) + "\n")
    (folder / "switchboard.train").write_text("\n".join(switchboard) + "\n")
    hf_dir = tmp_path / "hf"
    datasets.Dataset.from_dict({"text": childes + switchboard,
                                "source": ["childes"] * 300 + ["switchboard"] * 200}).save_to_disk(str(hf_dir))

    base = {"corpus": {"block_size": 32, "num_proc": 1}}
    from_folder = prepare_corpus(small_config(tmp_path / "a", corpus={**base["corpus"], "path": str(folder),
                                                                      "synthetic": None}))
    from_hf = prepare_corpus(small_config(tmp_path / "b", corpus={**base["corpus"], "hf_dataset": str(hf_dir),
                                                                  "synthetic": None}))
    assert from_folder.stats["sources"] == from_hf.stats["sources"]
    assert from_folder.stats["train"]["words"] == from_hf.stats["train"]["words"] > 0
    assert from_folder.stats["sources"]["switchboard"]["lines"] == 200


def test_a_dataset_folder_saved_again_with_other_rows_is_not_served_from_cache(tmp_path):
    import datasets

    lines = [f"the child number {i} plays with the dog ." for i in range(300)]
    folder = tmp_path / "hf"
    datasets.Dataset.from_dict({"text": lines}).save_to_disk(str(folder))
    cfg = small_config(tmp_path, corpus={"hf_dataset": str(folder), "synthetic": None, "block_size": 32, "num_proc": 1})
    first = prepare_corpus(cfg)
    shutil.rmtree(folder)
    datasets.Dataset.from_dict({"text": lines[:200]}).save_to_disk(str(folder))
    second = prepare_corpus(cfg)
    assert second.root != first.root
    assert second.stats["train"]["words"] + second.stats["validation"]["words"] == 200 * 9


def test_changed_corpus_file_is_not_served_from_cache(tmp_path):
    folder = tmp_path / "babylm"
    folder.mkdir()
    lines = [f"the child number {i} plays with the dog ." for i in range(300)]
    (folder / "childes.train").write_text("\n".join(lines) + "\n")
    cfg = small_config(tmp_path, corpus={"path": str(folder), "synthetic": None, "block_size": 32})
    first = prepare_corpus(cfg)
    (folder / "childes.train").write_text("\n".join(lines[:200]) + "\n")
    second = prepare_corpus(cfg)
    assert second.root != first.root
    assert second.stats["sources"]["childes"]["lines"] == 200


KILLABLE_PREPARATION = """
import sys, time
from classit.config import ClassitConfig
from classit.data import corpus
corpus.SHARD_LINES = 300
step = getattr(corpus, sys.argv[2])
setattr(corpus, sys.argv[2], lambda *args: (time.sleep(0.5), step(*args))[1])  # slow enough to kill mid-way
corpus.prepare_corpus(ClassitConfig.model_validate_json(open(sys.argv[1]).read()))
"""
KILLED_IN = {  # step -> the files its finished chunks leave
    "clean_lines": "lines-*/*/chunk-*.arrow",
    "tokenize_lines": "corpus-*/tokenized/*/*/chunk-*.npz",
}


@pytest.mark.parametrize("step", KILLED_IN)
def test_a_killed_preparation_resumes_from_its_chunks_to_the_same_blocks(tmp_path, monkeypatch, step):
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = small_config(tmp_path / "killed", corpus={"num_proc": 2})
    config = tmp_path / "config.json"
    config.write_text(cfg.model_dump_json())
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_PREPARATION, str(config), step], start_new_session=True)
    finished = lambda: list((tmp_path / "killed" / "cache").glob(KILLED_IN[step]))  # noqa: E731
    deadline = time.time() + 120
    while time.time() < deadline and len(finished()) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the preparation and its worker processes
    proc.wait()
    done = len(finished())
    assert done >= 3, "no chunks finished before the kill"
    assert not list((tmp_path / "killed" / "cache").glob("corpus-*/blocks-*/artefact.json"))

    monkeypatch.setattr(corpus_mod, "SHARD_LINES", 300)
    calls = []
    work = getattr(corpus_mod, step)
    monkeypatch.setattr(corpus_mod, step, lambda *args: calls.append(1) or work(*args))
    resumed = prepare_corpus(cfg.model_copy(update={"corpus": cfg.corpus.model_copy(update={"num_proc": 1})}))
    monkeypatch.undo()
    chunks = len(list((tmp_path / "killed" / "cache").glob(KILLED_IN["clean_lines"])))
    # Only the missing chunks were worked on (tokenizing: a call for each one's train and validation lines).
    assert len(calls) == (chunks - done) * (1 if step == "clean_lines" else 2) > 0
    whole = prepare_corpus(small_config(tmp_path / "whole", corpus={"num_proc": 1}))
    assert resumed.stats == whole.stats
    for split in ("train", "validation"):
        a, b = resumed.load_blocks(split), whole.load_blocks(split)
        assert a["input_ids"] == b["input_ids"] and a["num_words"] == b["num_words"]


def test_two_processes_preparing_one_corpus_at_once_both_get_the_blocks_of_a_lone_preparation(tmp_path):
    """Two commands (two sweeps, a pretraining and a sweep) on one cache: the second waits for the
    first's preparation instead of cleaning and tokenizing over it and losing the shards it packs."""
    import subprocess
    import sys

    cfg = small_config(tmp_path / "shared", corpus={"num_proc": 2})
    config = tmp_path / "config.json"
    config.write_text(cfg.model_dump_json())
    # Each chunk slowed, so that both are mid-way at once whatever their start-up times.
    preparing = [subprocess.Popen([sys.executable, "-c", KILLABLE_PREPARATION, str(config), step],
                                  stderr=subprocess.PIPE, text=True)
                 for step in ("clean_lines", "tokenize_lines")]
    errors = [p.communicate(timeout=300)[1] for p in preparing]
    assert [p.returncode for p in preparing] == [0, 0], [e[-2000:] for e in errors]

    shared = prepare_corpus(cfg)  # found complete
    lone = prepare_corpus(small_config(tmp_path / "lone", corpus={"num_proc": 1}))
    assert shared.stats == lone.stats
    for split in ("train", "validation"):
        a, b = shared.load_blocks(split), lone.load_blocks(split)
        assert a["input_ids"] == b["input_ids"] and a["num_words"] == b["num_words"]
