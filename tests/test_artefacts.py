"""Content-addressed artefacts: the marker, whole-folder builds, two builders at once, and the
encoded instruction data they cache (no Ray)."""

import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest

from classit.artefacts import MARKER, artefact_dir, commit_file, commit_folder, is_complete, read_marker
from classit.data.corpus import prepare_corpus
from conftest import small_config


def build_slowly(folder, barrier, results):
    def build(tmp):
        (tmp / "data.txt").write_text(str(os.getpid()))
        barrier.wait()  # both builders are mid-build: neither has renamed yet
        time.sleep(0.2)
        return {"builder": os.getpid()}

    results.put(commit_folder(folder, build, {"what": "test"})["builder"])


def test_a_file_being_committed_is_seen_by_no_pattern_of_finished_names(tmp_path):
    seen_while_writing = []

    def write(tmp):
        Path(tmp).write_bytes(b"part")
        seen_while_writing.extend(tmp_path.glob("chunk-*.npz"))

    commit_file(write, tmp_path / "chunk-00001.npz", suffix=".npz")
    assert seen_while_writing == []  # what a resuming step, or a test counting finished chunks, would count
    assert [p.name for p in tmp_path.iterdir()] == ["chunk-00001.npz"]


def test_a_folder_is_complete_only_once_built_and_marked(tmp_path):
    folder = artefact_dir(tmp_path, "thing", {"a": 1})
    assert folder.name.startswith("thing-") and folder == artefact_dir(tmp_path, "thing", {"a": 1})
    assert folder != artefact_dir(tmp_path, "thing", {"a": 2})

    def failing(tmp):
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        commit_folder(folder, failing, {"a": 1})
    assert not folder.exists() and not is_complete(folder)
    marker = commit_folder(folder, lambda tmp: (tmp / "data.txt").write_text("ok") and {"count": 3}, {"a": 1})
    assert is_complete(folder) and (folder / "data.txt").read_text() == "ok"
    assert read_marker(folder) == marker and marker["made_by"] == {"a": 1} and marker["count"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary build left
    (folder / MARKER).write_text('{"made_by": ')  # damaged afterwards: named, not a bare JSONDecodeError
    with pytest.raises(ValueError, match=f"^{folder / MARKER}: not valid JSON \\(JSONDecodeError: "):
        read_marker(folder)


def test_two_builders_at_once_both_finish_and_one_build_wins(tmp_path):
    folder = tmp_path / "thing-x"
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    builders = [context.Process(target=build_slowly, args=(folder, barrier, results)) for _ in range(2)]
    for p in builders:
        p.start()
    for p in builders:
        p.join(30)
    assert [p.exitcode for p in builders] == [0, 0]
    winners = {results.get(timeout=5), results.get(timeout=5)}
    assert len(winners) == 1  # both report the build that is in place
    assert read_marker(folder)["builder"] == int((folder / "data.txt").read_text()) in winners
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing-x"]


def test_a_killed_builders_temporary_folder_is_removed_by_the_next_build(tmp_path):
    dead = multiprocessing.get_context("fork").Process(target=lambda: None)
    dead.start()
    dead.join()
    folder = tmp_path / "thing-y"
    abandoned = tmp_path / f"thing-y.tmp-{socket.gethostname()}-{dead.pid}"
    abandoned.mkdir()
    (abandoned / "big.bin").write_bytes(b"0" * 1000)
    elsewhere = tmp_path / "thing-y.tmp-another-host-1"  # another node's build may be alive: kept
    elsewhere.mkdir()
    commit_folder(folder, lambda tmp: None, {})
    assert (folder / MARKER).is_file() and not abandoned.exists() and elsewhere.exists()


def test_instruction_data_is_encoded_once_and_shared_by_runs_that_differ_in_training(tmp_path, monkeypatch):
    import classit.train.instruct as instruct

    cfg = small_config(tmp_path, instruct={"curriculum": "switch_wiki"}, run={"name": None})
    base = prepare_corpus(cfg).tokenizer_path  # a folder the instruction data's tokenizer loads from
    first = instruct.prepare_instruct(cfg, base)
    root = first.payload.data_root
    assert is_complete(instruct.Path(root)) and len(first.payload.stages) == 2

    def no_encoding(*args):
        raise AssertionError("encoded again")

    monkeypatch.setattr(instruct, "encode_instruct_data", no_encoding)
    other_lr = cfg.model_copy(update={"instruct": cfg.instruct.model_copy(update={
        "train": cfg.instruct.train.model_copy(update={"learning_rate": 1e-3})})})
    again = instruct.prepare_instruct(other_lr, base)
    assert again.payload.data_root == root and again.counts == first.counts
    assert again.cfg.run.name != first.cfg.run.name  # a run of its own, on the same encoded data
    monkeypatch.undo()
    shorter = cfg.model_copy(update={"instruct": cfg.instruct.model_copy(update={"max_length": 64})})
    assert instruct.prepare_instruct(shorter, base).payload.data_root != root
    # A base saved again in the same folder, with another tokenizer: a run of its own, its data encoded anew.
    config = base / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"model_max_length"', '"padding_side": "right", "model_max_length"', 1))
    changed = instruct.prepare_instruct(cfg, base)
    assert changed.payload.data_root != root and changed.cfg.run.name != first.cfg.run.name


def test_a_corpus_changed_in_place_is_not_served_the_base_pretrained_on_it_before(tmp_path):
    """A base model's key holds the corpus's content, not only its path: a `.train` file edited in
    place (the same folder and config) needs a base of its own, and `classit pretrain` a run of its
    own (not the old run resumed); the unchanged corpus keeps its key."""
    from classit.sweep.services import base_folder
    from classit.train.runner import prepare_pretraining

    folder = tmp_path / "babylm"
    folder.mkdir()
    (folder / "childes.train").write_text("the dog runs .\n" * 400)
    cfg = small_config(tmp_path, corpus={"path": str(folder), "synthetic": None}, run={"name": None})
    before, run_before = base_folder(cfg), prepare_pretraining(cfg)[0].run.name
    assert base_folder(cfg) == before and prepare_pretraining(cfg)[0].run.name == run_before
    (folder / "childes.train").write_text("the dog runs .\n" * 399 + "the cat runs .\n")
    assert base_folder(cfg) != before and prepare_pretraining(cfg)[0].run.name != run_before
