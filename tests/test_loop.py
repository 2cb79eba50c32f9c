"""The training loop without Ray: a world of one process, real DeepSpeed engines."""

import math
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from classit.config import DistributedConfig, TrainConfig
from classit.data.corpus import prepare_corpus
from classit.models import build_model
from classit.tokenizer import load_tokenizer
from classit.train.checkpoints import checkpoint_marks, load_trainer_state
from classit.train.distributed import init_single_process
from classit.train.loop import NonFiniteLossError, Stage, collate_blocks, lr_factor, token_loss, train_stage
from conftest import small_config, this_cpu


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    init_single_process()
    prepared = prepare_corpus(small_config(tmp_path_factory.mktemp("loop")))
    return prepared, load_tokenizer(prepared.tokenizer_path)


def make_stage(corpus, **train):
    prepared, tokenizer = corpus
    tcfg = TrainConfig(**{"learning_rate": 2e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 5,
                          "eval_every_steps": 10, "log_every_steps": 5, **train})
    return Stage("pretrain", prepared.load_blocks("train"), {"": prepared.load_blocks("validation")}, tcfg,
                 partial(collate_blocks, pad_id=tokenizer.pad_token_id))


class Recorder:
    """Keeps every metrics row and a copy of every checkpoint folder."""

    def __init__(self, keep: Path):
        self.rows, self.checkpoints, self.keep = [], [], keep

    def __call__(self, metrics, checkpoint_dir=None, name=None):
        self.rows.append(dict(metrics))
        if checkpoint_dir:
            self.checkpoints.append(Path(shutil.copytree(checkpoint_dir, self.keep / name)))


def test_lr_schedules():
    assert lr_factor(0, 10, 100, "linear") == pytest.approx(1 / 11)
    assert lr_factor(10, 10, 100, "linear") == 1.0
    assert lr_factor(100, 10, 100, "linear") == 0.0
    assert lr_factor(55, 10, 100, "constant") == 1.0
    # Two cosine cycles: back at the peak half way through, near zero just before.
    assert lr_factor(10, 10, 110, "cosine_with_restarts", restarts=2) == pytest.approx(1.0)
    assert lr_factor(59, 10, 110, "cosine_with_restarts", restarts=2) < 0.01
    assert lr_factor(60, 10, 110, "cosine_with_restarts", restarts=2) == pytest.approx(1.0)


@pytest.mark.parametrize("warmup, steps", [(5000, 864), (100, 66), (66, 66), (65, 66)])
def test_a_warm_up_that_outlasts_its_run_is_named_with_the_peak_the_schedule_reaches(warmup, steps):
    """The note the plan and `classit pretrain` print states what the schedule does."""
    tcfg = TrainConfig(warmup_steps=warmup, learning_rate=1e-3)
    peak = max(lr_factor(step, warmup, steps, "linear") for step in range(steps))
    note = tcfg.warmup_outlasting(steps)
    if peak == 1.0:
        assert note == ""
    else:
        assert note == (f"warm-up of {warmup:,} steps, no shorter than the {steps:,} it runs: its learning rate "
                        f"peaks at {peak:.0%} of 0.001")


def test_checkpoint_marks_are_the_babylm_marks_unless_scaled():
    marks = checkpoint_marks(0, word_scale=None)  # exact by default: 1M..10M, 10M..100M, 100M..1B
    assert marks[:3] == [1_000_000, 2_000_000, 3_000_000] and 10_000_000 in marks and 20_000_000 in marks
    assert 100_000_000 in marks and marks[-1] == 1_000_000_000 and 11_000_000 not in marks
    assert len(marks) == 28
    # A stage that starts where the base left off continues the schedule past its exposure.
    assert checkpoint_marks(5_500_000, None)[:2] == [6_000_000, 7_000_000]
    assert checkpoint_marks(0, word_scale=0.01)[:2] == [10_000, 20_000]  # only where a config asks


def test_only_the_newest_registered_checkpoints_keep_optimizer_state(tmp_path):
    """Two stages' checkpoints (exposure grows across them, names do not sort by it), one weights-only
    folder, one persisted after the registered one (not registered yet: never pruned)."""
    import json
    from dataclasses import asdict

    from pyarrow.fs import LocalFileSystem

    from classit.train.checkpoints import DEEPSPEED_DIR, TRAINER_STATE, TrainerState, prune_optimizer_states

    def checkpoint(name, stage_index, prior, words, state=True):
        folder = tmp_path / name
        (folder / DEEPSPEED_DIR if state else folder).mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        trainer = TrainerState(stage=name[0], stage_index=stage_index, prior_exposure_words=prior, words_seen=words)
        (folder / TRAINER_STATE).write_text(json.dumps(asdict(trainer)))
        return str(folder)

    runs = [checkpoint("z-1", 0, 100, 10), checkpoint("z-2", 0, 100, 20), checkpoint("a-1", 1, 120, 10),
            checkpoint("a-2", 1, 120, 20)]
    weights_only = checkpoint("z-0", 0, 100, 5, state=False)
    (tmp_path / "results").mkdir()  # not a checkpoint
    fs = LocalFileSystem()
    assert prune_optimizer_states(fs, runs[2], keep=2) == runs[:1]  # a-2 is newer than a-1: not registered yet
    assert prune_optimizer_states(fs, runs[3], keep=1) == runs[1:3]
    assert [Path(r, DEEPSPEED_DIR).is_dir() for r in runs] == [False, False, False, True]
    assert all(Path(r, "model.safetensors").is_file() for r in [*runs, weights_only])
    assert prune_optimizer_states(fs, weights_only, keep=1) == []


def test_deepspeed_comes_without_its_autotuners_mlflow_and_its_inference_only_shm_op():
    import subprocess
    import sys

    probe = ("import sys; from classit.train.loop import import_deepspeed; ds = import_deepspeed(); "
             "print(ds.initialize.__module__, 'mlflow' in sys.modules, sys.modules['deepspeed.comm.torch'].build_shm_op()); "
             "import mlflow; print(mlflow.__name__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == ["deepspeed", "False", "None", "mlflow"]


def test_a_validation_sample_is_evenly_spaced_through_the_set():
    import datasets

    from classit.train.loop import evenly_spaced

    rows = datasets.Dataset.from_dict({"source": ["a"] * 50 + ["b"] * 30 + ["c"] * 20, "i": list(range(100))})
    sample = evenly_spaced(rows, 10)
    assert sample["i"][0] == 0 and sample["i"][-1] == 99 and len(set(sample["i"])) == 10
    assert {"a", "b", "c"} <= set(sample["source"])  # every source stored in turn is sampled
    assert evenly_spaced(rows, None) is rows and evenly_spaced(rows, 500) is rows


def test_loop_loss_is_token_cross_entropy_and_needs_no_mask(corpus):
    _, tokenizer = corpus
    model = build_model("tiny", tokenizer).eval()
    ids = torch.randint(4, len(tokenizer), (3, 20))
    ids[1, 12:] = tokenizer.pad_token_id  # right padding
    batch = collate_blocks({"input_ids": ids.tolist(), "num_words": [1, 1, 1]}, tokenizer.pad_token_id)
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=batch["attention_mask"], labels=batch["labels"])
        unmasked = model(input_ids=ids).logits
    total, count = token_loss(unmasked, batch["labels"])
    assert count == 19 + 11 + 19
    assert (total / count).item() == pytest.approx(masked.loss.item(), abs=1e-5)
    real = batch["attention_mask"].bool()
    assert torch.allclose(unmasked[real], masked.logits[real], atol=1e-5)


def test_train_stage_learns_and_resumes_where_it_stopped(corpus, tmp_path):
    _, tokenizer = corpus
    dcfg = DistributedConfig(num_workers=1, zero_stage=2)
    first = Recorder(tmp_path)
    state, _ = train_stage(build_model("tiny", tokenizer), tokenizer, make_stage(corpus, max_steps=30), dcfg, first)
    assert state.step == 30 and first.rows[0]["step"] == 0
    assert first.rows[-1]["val_loss"] < 0.8 * first.rows[0]["val_loss"]
    last = first.checkpoints[-1]
    assert load_trainer_state(last).step == 30 and (last / "deepspeed").is_dir()

    second = Recorder(tmp_path / "again")
    (tmp_path / "again").mkdir()
    state, _ = train_stage(build_model("tiny", tokenizer, seed=99), tokenizer, make_stage(corpus, max_steps=40),
                        dcfg, second, resume_from=last)
    steps = [r["step"] for r in second.rows]
    assert steps[0] > 30 and steps[-1] == 40 and state.step == 40  # no step 0 again: it resumed
    assert state.words_seen > load_trainer_state(last).words_seen
    # A damaged trainer state, or optimizer state, stops the resume with its file or folder named.
    trainer_state = (last / "trainer_state.json").read_text()
    (last / "trainer_state.json").write_text('{"step": 30,')
    with pytest.raises(ValueError, match=f"^{last / 'trainer_state.json'}: not valid JSON"):
        train_stage(build_model("tiny", tokenizer), tokenizer, make_stage(corpus, max_steps=40), dcfg,
                    Recorder(tmp_path / "again"), resume_from=last)
    (last / "trainer_state.json").write_text(trainer_state)
    for saved in (last / "deepspeed").rglob("*.pt"):
        saved.write_bytes(saved.read_bytes()[:1000])  # cut short, as by a full disk
    with pytest.raises(ValueError, match=f"^{last / 'deepspeed'}: the optimizer state does not load "):
        train_stage(build_model("tiny", tokenizer), tokenizer, make_stage(corpus, max_steps=40), dcfg,
                    Recorder(tmp_path / "again"), resume_from=last)
    shutil.rmtree(last / "deepspeed" / "state")
    with pytest.raises(ValueError, match=f"^{last / 'deepspeed'}: no DeepSpeed state \\(state/\\) to resume from$"):
        train_stage(build_model("tiny", tokenizer), tokenizer, make_stage(corpus, max_steps=40), dcfg,
                    Recorder(tmp_path / "again"), resume_from=last)


def test_one_process_needs_no_zero_and_saves_a_loadable_hf_model(corpus, tmp_path):
    _, tokenizer = corpus
    rec = Recorder(tmp_path)
    _, engine = train_stage(build_model("tiny", tokenizer), tokenizer, make_stage(corpus, max_steps=6),
                            DistributedConfig(num_workers=1, zero_stage=3), rec)
    assert engine.zero_optimization_stage() == 0  # nothing to partition across one rank
    model = AutoModelForCausalLM.from_pretrained(rec.checkpoints[-1])
    out = model.generate(**tokenizer("the dog", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_checkpoint_folder_a_killed_worker_left_in_the_temp_dir_is_removed_by_the_next_save(
        corpus, tmp_path, monkeypatch):
    """A checkpoint is written to a temporary folder before Ray Train copies it to storage; a worker
    killed meanwhile leaves it there. The next save removes those of processes no longer running."""
    import os
    import socket
    import subprocess
    import sys
    import tempfile

    _, tokenizer = corpus
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = temp / f"classit-ckpt-{socket.gethostname()}-{gone.pid}-x1y2"
    (left / "deepspeed").mkdir(parents=True)
    (left / "model.safetensors").write_bytes(b"weights")
    running = temp / f"classit-ckpt-{socket.gethostname()}-{os.getppid()}-z3w4"  # a process still running: another worker's, mid-save
    running.mkdir()
    rec = Recorder(tmp_path)
    train_stage(build_model("tiny", tokenizer), tokenizer, make_stage(corpus, max_steps=4),
                DistributedConfig(num_workers=1), rec)
    assert rec.checkpoints and not left.exists() and running.is_dir()
    assert sorted(p.name for p in temp.iterdir()) == [running.name]  # this process's own folders removed too


def test_nan_loss_stops_with_a_clear_error(corpus, tmp_path):
    _, tokenizer = corpus
    model = build_model("tiny", tokenizer)
    with torch.no_grad():
        model.lm_head.weight.fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at step 1"):
        train_stage(model, tokenizer, make_stage(corpus, max_steps=5), DistributedConfig(num_workers=1),
                    Recorder(tmp_path))


def test_compiled_training_matches_eager_and_saves_plain_checkpoints(corpus, tmp_path):
    prepared, tokenizer = corpus
    losses = {}
    for compile in (False, True):
        stage = make_stage(corpus, max_steps=8, log_every_steps=1, eval_every_steps=1000)
        stage.validation = {"": prepared.load_blocks("validation").select(range(8))}  # one shape to compile for
        rec = Recorder(tmp_path / str(compile))
        _, engine = train_stage(build_model("tiny", tokenizer), tokenizer, stage,
                                DistributedConfig(num_workers=1, compile=compile), rec)
        assert engine.is_compiled == compile
        losses[compile] = [r["loss"] for r in rec.rows if "loss" in r]
    assert len(losses[True]) == 8 and losses[True] == pytest.approx(losses[False], rel=1e-3)
    _, info = AutoModelForCausalLM.from_pretrained(rec.checkpoints[-1], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # no `_orig_mod.` prefixes


def micro_model(tokenizer):
    """A LLaMA far smaller than the tiny preset: a few million words of exposure in seconds on CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=64,
                                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id))


@pytest.fixture(scope="module")
def million_word_run(corpus, tmp_path_factory):
    """A run of a little over 3M words of exposure with the exact BabyLM marks, every checkpoint kept."""
    prepared, tokenizer = corpus
    stage = make_stage(corpus, batch_size=256, epochs=1000, max_steps=10**6, eval_every_steps=10**6,
                       log_every_steps=10**6, checkpoints={"resumable": False})  # word_scale unset: exact marks
    stage.validation = {"": prepared.load_blocks("validation").select(range(8))}
    words_per_step = sum(stage.train["num_words"]) / len(stage.train) * 256
    stage.config = stage.config.model_copy(update={"max_steps": int(3_300_000 / words_per_step)})
    rec = Recorder(tmp_path_factory.mktemp("million"))
    state, _ = train_stage(micro_model(tokenizer), tokenizer, stage, DistributedConfig(num_workers=1), rec,
                           log=lambda _: None)
    return rec, state, words_per_step


def test_unscaled_checkpoints_fall_on_the_babylm_marks_of_a_multi_million_word_run(million_word_run):
    rec, state, words_per_step = million_word_run
    assert state.words_seen > 3_000_000
    saved = [load_trainer_state(c) for c in rec.checkpoints]
    words = [s.total_exposure_words for s in saved]
    marks = [1_000_000, 2_000_000, 3_000_000]
    assert len(words) == 4 and words[-1] == state.words_seen  # three marks, then the stage's end
    for mark, seen in zip(marks, words):
        assert mark <= seen < mark + words_per_step * 1.5  # the first step at or past the mark
    assert [c.name.endswith(f"words{w:012d}") for c, w in zip(rec.checkpoints, words)] == [True] * 4
    assert [s.babylm_mark for s in saved] == [*marks, 0]  # the end-of-stage save stands for no mark


def test_export_hub_puts_each_mark_on_its_branch_and_the_final_model_on_main(million_word_run, tmp_path, capsys):
    import subprocess

    from classit.cli import main

    rec, state, _ = million_word_run
    assert main(["export-hub", str(rec.keep), "--out", str(tmp_path / "hub")]) == 0
    git = ["git", "-C", str(tmp_path / "hub")]
    branches = subprocess.run([*git, "branch", "--format=%(refname:short)"], capture_output=True, text=True,
                              check=True).stdout.split()
    assert sorted(branches) == ["chck_1M", "chck_2M", "chck_3M", "main"]
    expected = {"main": rec.checkpoints[-1], "chck_1M": rec.checkpoints[0], "chck_2M": rec.checkpoints[1],
                "chck_3M": rec.checkpoints[2]}
    for branch, checkpoint in expected.items():
        checkout = tmp_path / f"checkout-{branch}"
        subprocess.run(["git", "clone", "-q", "--branch", branch, str(tmp_path / "hub"), str(checkout)], check=True)
        assert not (checkout / "deepspeed").exists() and not (checkout / "trainer_state.json").exists()
        loaded = AutoModelForCausalLM.from_pretrained(checkout)
        original = AutoModelForCausalLM.from_pretrained(checkpoint)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), original.state_dict().values()))
    # An existing, non-empty folder is refused in one line; nothing in it is touched.
    assert main(["export-hub", str(rec.keep), "--out", str(tmp_path / "hub")]) == 2
    # A run folder that is not there is named, before anything is made.
    assert main(["export-hub", str(tmp_path / "no-run"), "--out", str(tmp_path / "hub2")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"classit: error: {tmp_path / 'no-run'}: no such run folder"
    assert not (tmp_path / "hub2").exists()


def test_accumulation_trains_whole_steps_and_counts_every_word_it_trained_on(corpus, tmp_path):
    prepared, tokenizer = corpus
    # 66 rows in micro-batches of 4: 16 per epoch, 5 steps of 3 and one leftover micro-batch (+2 rows).
    stage = make_stage(corpus, batch_size=4, gradient_accumulation_steps=3, epochs=2, eval_every_steps=1000,
                       checkpoints={"schedule": "final", "resumable": False})
    stage.train = prepared.load_blocks("train").select(range(66))
    state, engine = train_stage(build_model("tiny", tokenizer), tokenizer, stage, DistributedConfig(num_workers=1),
                                Recorder(tmp_path), log=lambda _: None)
    words = stage.train["num_words"]
    trained = [i for epoch in range(2)
               for i in torch.randperm(66, generator=torch.Generator().manual_seed(stage.config.seed + epoch))[:60]]
    assert state.step == 10 and engine.global_steps == 10  # no leftover gradient leaks into another step
    assert engine.micro_steps == 30  # the leftover micro-batch of each epoch is not trained ...
    assert state.words_seen == sum(words[int(i)] for i in trained)  # ... and every trained line's words count


def test_aoa_spreads_a_runs_marks_over_the_actors_fits_them_and_exports_the_official_file(
        million_word_run, ray_local, tmp_path, capsys):
    import json
    import shutil

    import pandas as pd

    from classit.cli import main
    from classit.evaluate.tasks.aoa import curve_fitness
    from classit.results import read_table
    from conftest import write_aoa_data

    rec, _, _ = million_word_run
    data = write_aoa_data(tmp_path / "data")
    output = tmp_path / "results" / "eval_scores"
    assert main(["aoa", str(rec.keep), "--data-dir", str(data), "--export", str(tmp_path / "out"),
                 "--output", str(output)]) == 0
    assert "3 checkpoints (chck_1M, chck_2M, chck_3M)" in capsys.readouterr().out  # marks only, not the end
    exported = json.loads((tmp_path / "out" / rec.keep.name / "main" / "zero_shot" / "causal" / "AoA_word"
                           / "surprisal.json").read_text())
    rows = exported["results"]
    assert len(rows) == 3 * 4 * 2  # checkpoints x words x contexts, as the official collation counts them
    assert {r["step"] for r in rows} == {"chck_1M", "chck_2M", "chck_3M"}
    assert {r["word_count"] for r in rows} == {1_000_000, 2_000_000, 3_000_000}
    assert all(r["surprisal"] > 0 for r in rows)
    # One job per mark (its mean surprisal), one score on the final checkpoint, the surprisals in their table.
    scores = read_table(str(output))
    marks = scores[scores["subtask"] == "surprisal"]
    assert sorted(marks["revision"]) == ["chck_1M", "chck_2M", "chck_3M"] and (marks["n_items"] == 8).all()
    [score] = scores[scores["metric"] == "pearson"].to_dict("records")
    assert score["checkpoint"] == str(rec.checkpoints[-1]) and score["revision"] == "main"
    surprisals = read_table(str(tmp_path / "results" / "aoa_surprisal"))
    assert len(surprisals) == 24 and (surprisals["series"] == score["checkpoint"]).all()
    human = pd.read_csv(data / "aoa" / "cdi_human.csv")
    fit = curve_fitness(exported["results"], human)
    assert score["value"] == fit["curve_fitness"] and score["n_items"] == fit["n_words"]
    assert set(scores["hardware"]) == {this_cpu()}  # the marks' processor, the fitted score's too

    # A mark whose checkpoint is corrupt: its error row, and the score refuses to fit the other two.
    broken = tmp_path / "broken"
    shutil.copytree(rec.keep, broken)
    [weights] = (broken / rec.checkpoints[1].name).glob("*.safetensors")
    weights.write_bytes(b"not a checkpoint")
    assert main(["aoa", str(broken), "--data-dir", str(data), "--output", str(tmp_path / "broken-scores")]) == 1
    assert "surprisals of 1 mark checkpoint(s) failed" in capsys.readouterr().err
    # A data folder without the aoa/ files is refused in one line, before Ray starts.
    assert main(["aoa", str(rec.keep), "--data-dir", str(tmp_path)]) == 2


