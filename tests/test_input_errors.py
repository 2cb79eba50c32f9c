"""Bad input through the command line: over-budget plans, corpora that cannot be trained on,
malformed instruction data and out-of-range flags end in one line on stderr and exit 2, before
Ray starts."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import train_tiny_checkpoint


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("base"))


def run_cli(*args: str) -> str:
    """Runs `classit ...` (the CLI's main, in this process); asserts exit 2, one stderr line and
    that Ray never started; returns that line."""
    import contextlib
    import io

    import ray

    from classit.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(list(args))
    assert code == 2, stderr.getvalue()[-3000:]
    assert stderr.getvalue().strip().count("\n") == 0, stderr.getvalue()
    assert not ray.is_initialized()  # the error came before Ray
    return stderr.getvalue().strip()


def small(tmp: Path) -> list[str]:
    return ["--set", "corpus.synthetic.sentences=2000", "--set", f"run.cache_dir={tmp / 'cache'}",
            "--set", f"run.storage_path={tmp / 'runs'}"]


def test_pretraining_input_over_budget(tmp_path):
    line = run_cli("pretrain", *small(tmp_path), "--set", "budget.max_input_words=5000")
    assert "budget: the pretraining corpus" in line and "input" in line and "> 5,000 words" in line


def test_pretraining_exposure_over_budget(tmp_path):
    line = run_cli("pretrain", *small(tmp_path), "--set", "budget.max_exposure_words=20000")
    words = json.loads(next((tmp_path / "cache").glob("corpus-*/blocks-*/artefact.json")).read_text())["stats"]["train"]["words"]
    # With no --config, the embedded demo's: 3 epochs, as the demo sweep's base (below: 35,010 words).
    assert f"exposure {words * 3:,} > 20,000 words" in line and f"pretraining ({words:,} input words" in line


def test_curriculum_exposure_over_budget(tmp_path, base):
    line = run_cli("instruct", "--base", str(base), "--curriculum", "switch_wiki", *small(tmp_path),
                   "--set", "budget.max_exposure_words=20000")
    assert "budget: curriculum switch_wiki" in line and "> 20,000 words" in line and "total" in line


def test_sweep_trial_over_budget(tmp_path):
    # The demo's base is 35,010 words of exposure at this size: within; its trials add more.
    line = run_cli("sweep", *small(tmp_path), "--set", "budget.max_exposure_words=40000")
    assert line.startswith("classit: error: sweep trial curriculum=") and "exposure" in line and "> 40,000" in line
    line = run_cli("sweep", *small(tmp_path), "--set", "budget.max_exposure_words=30000")
    assert "budget: the tiny base's pretraining (11,670 input words, 35,010 of exposure)" in line


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "a ?", "reply": "b ."}\n{"prompt": "c ?", "reply": \n', "qa.jsonl:2: not valid JSON"),
    (b'{"prompt": "a ?"}\n', "qa.jsonl:1: instruct.datasets.qa: record has no 'reply' text"),
    (b'{"reply": "b ."}\n', "qa.jsonl:1: instruct.datasets.qa: record has no 'prompt' text"),
    (b'{"prompt": "a ?", "reply": "b ."}\n\n{"prompt": "caf\xe9 ?", "reply": "b ."}\n', "qa.jsonl:3: not UTF-8 text"),
])
def test_malformed_instruction_data_is_named_by_file_and_line(tmp_path, base, content, message):
    (tmp_path / "qa.jsonl").write_bytes(content)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"instruct": {"datasets": {"qa": {"path": str(tmp_path / "qa.jsonl")}},
                                                   "curriculum": [{"datasets": ["qa"]}]}}))
    line = run_cli("instruct", "--base", str(base), "--config", str(config), *small(tmp_path))
    assert message in line


@pytest.mark.parametrize("command, flag, value", [
    ("evaluate", "--actors", "0"), ("evaluate", "--actors", "-1"), ("evaluate", "--gpus-per-actor", "-0.5"),
    ("aoa", "--actors", "0"),
])
def test_evaluation_actor_flags_out_of_range_are_named(tmp_path, base, command, flag, value):
    # Before: --actors 0 raised ZeroDivisionError, and --actors -1 waited forever with no actor.
    target = ["--model", str(base)] if command == "evaluate" else [str(base.parent)]
    line = run_cli(command, *target, "--data-dir", str(tmp_path), flag, value)
    assert line == f"classit: error: {flag} {value}: must be at least {1 if flag == '--actors' else 0}"


def test_a_base_cut_short_or_too_short_for_the_sequences_is_named_before_ray(tmp_path, base):
    # Before: each training worker raised LoadError, its traceback on the console, once Ray had started.
    import shutil

    from classit.models import check_weights

    check_weights(base)  # whole
    cut = tmp_path / "cut"
    shutil.copytree(base, cut)
    weights = cut / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    line = run_cli("instruct", "--base", str(cut), "--curriculum", "switch", *small(tmp_path))
    assert line.startswith(f"classit: error: {weights}: not a whole safetensors file ({size // 2} bytes, its "
                           f"tensors end at {size})"), line
    # Sequences longer than the base has positions: named with the base's own count.
    line = run_cli("instruct", "--base", str(base), "--curriculum", "switch", "--set", "instruct.max_length=1024",
                   *small(tmp_path))
    assert line == (f"classit: error: instruct.max_length: 1024 tokens, more than the base's 512 positions "
                    f"({base / 'config.json'})")


def test_a_task_named_twice_is_refused(tmp_path, base):
    # Before: both copies were scored, the same rows written twice over.
    assert run_cli("evaluate", "--model", str(base), "--data-dir", str(tmp_path), "--tasks", "blimp,ewok,blimp") \
        == "classit: error: --tasks: blimp named twice"
    config = tmp_path / "twice.yaml"
    config.write_text("evaluation: {tasks: [blimp, ewok, blimp]}\n")
    assert run_cli("pretrain", "--config", str(config)) == \
        f"classit: error: {config}: evaluation.tasks: blimp named twice"


def test_a_corpus_that_cannot_be_trained_on_is_named(tmp_path):
    import datasets

    babylm = tmp_path / "babylm"
    babylm.mkdir()
    (babylm / "childes.train").write_text("the only line .\n")
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"txt": ["a cat sat on the mat ."] * 40}).save_to_disk(str(saved))
    latin1 = tmp_path / "latin1"
    latin1.mkdir()
    (latin1 / "childes.train").write_bytes(b"the cat sat .\n" * 40 + "un caf\xe9 .\n".encode("latin-1"))
    cases = [
        (["--set", f"corpus.path={babylm}"], f"corpus.path {babylm}: too few lines after cleaning (1 train, 0 validation"),
        # Read as UTF-8 with replacement before: words the corpus lacks, counted against the budget.
        (["--set", f"corpus.path={latin1}"], f"{latin1 / 'childes.train'}:41: not UTF-8 text (UnicodeDecodeError"),
        (["--set", f"corpus.hf_dataset={tmp_path / 'none'}"], f"corpus.hf_dataset: {tmp_path / 'none'} (split train) does not load"),
        (["--set", f"corpus.hf_dataset={saved}"], f"corpus.text_column: dataset {saved} has no column 'text'"),
        # 36 lines of 7 tokens: a few blocks of 64 tokens, fewer than the 8 x 2 rows of one step.
        (["--set", f"corpus.hf_dataset={saved}", "--set", "corpus.text_column=txt"],
         "too few for one step of 8 rows x 2 workers x 1 accumulation (pretrain.batch_size, distributed.num_workers)"),
    ]
    for overrides, message in cases:
        line = run_cli("pretrain", "--set", f"run.cache_dir={tmp_path / 'cache'}", "--set", "corpus.synthetic=null",
                       "--set", "corpus.block_size=64", *overrides)
        assert message in line, line


def test_leaderboard_export_of_a_seeded_fast_subset_is_refused(tmp_path, base):
    # The official layout has no place for classit's own subset: it would pass for the full task.
    (tmp_path / "blimp").mkdir()
    (tmp_path / "blimp" / "agreement.jsonl").write_text("")
    line = run_cli("evaluate", "--model", str(base), "--tasks", "blimp", "--data-dir", str(tmp_path), "--fast",
                   "--export", str(tmp_path / "export"))
    assert line.startswith("classit: error: --export with --fast: --data-dir has no official fast set for blimp")
