"""Pretraining on a real local Ray cluster: 2 Ray Train workers, gloo, DeepSpeed ZeRO-2."""

import os
import signal
import threading
import time
from pathlib import Path

from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from classit.results import read_table, table_dir
from classit.models import count_parameters
from classit.train.checkpoints import DEEPSPEED_DIR, checkpoint_bytes, load_trainer_state
from classit.train.loop import lr_factor
from classit.train.runner import run_pretraining
from conftest import actors, small_config


def metrics_of(cfg):
    return read_table(table_dir(cfg.run.storage_path, cfg.run.name, "train_metrics"))


def test_pretrain_two_workers_zero2_learns_and_checkpoints_load(ray_local, tmp_path):
    cfg = small_config(tmp_path)
    result = run_pretraining(cfg)
    assert result.error is None
    rows = metrics_of(cfg)
    evals = rows.dropna(subset=["val_loss"]).sort_values("step")
    assert evals.iloc[-1]["val_loss"] <= 0.7 * evals.iloc[0]["val_loss"]  # fell by at least 30%
    total = rows["total_steps"].iloc[0]
    assert rows["step"].max() == total
    assert (rows.groupby("step").size() == 1).all()  # one row per reported step, none lost or doubled
    # Every logged training step keeps loss, lr, tokens/s and the counts; every evaluation its val_loss.
    logged = rows[rows["step"] > 0]
    assert len(logged) == logged["loss"].notna().sum() == logged["lr"].notna().sum() == logged["tokens_per_s"].notna().sum()
    assert logged[["epoch", "words_seen", "tokens_seen", "exposure_words"]].notna().all().all()
    assert {*range(10, total + 1, 10), total} <= set(logged["step"])  # log_every_steps 10
    evaluations = {0, *range(20, total + 1, 20), total}  # eval_every_steps 20, and the end
    assert set(rows.loc[rows["val_loss"].notna(), "step"]) == evaluations

    final = Path(result.checkpoint.path)
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    out = model.generate(**tokenizer("the dog", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.startswith("the dog") and len(text.split()) > 2
    # One checkpoint at each 10k-word mark (word_scale 0.01) plus the final one, all in HF format.
    words = [int(Path(c.path).name.split("words")[1]) for c, _ in result.best_checkpoints]
    marks_crossed = [w // 10_000 for w in words[:-1]]
    assert len(words) >= 4 and marks_crossed == list(range(1, len(words)))
    assert all((Path(c.path) / "config.json").exists() for c, _ in result.best_checkpoints)


def test_killed_worker_resumes_from_the_newest_checkpoint_the_only_one_with_optimizer_state(ray_local, tmp_path):
    """run.keep_optimizer_states 1 (the default): every mark keeps its weights, the newest registered
    checkpoint alone its optimizer state, and a worker killed after the 4th mark resumes from there."""
    cfg = small_config(tmp_path, pretrain={"epochs": 3, "checkpoints": {"word_scale": 0.005}})
    assert cfg.run.keep_optimizer_states == 1
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_pretraining(cfg)))
    thread.start()
    run_dir = Path(cfg.run.storage_path) / cfg.run.name

    def with_state() -> list[bool]:
        return [(c / DEEPSPEED_DIR).is_dir() for c in sorted(run_dir.glob("pretrain-step*"))]

    # The 4th checkpoint is registered once the first 3 have lost their optimizer state.
    deadline = time.time() + 300
    while time.time() < deadline and with_state()[:4] != [False, False, False, True]:
        time.sleep(0.2)
    workers = actors("RayTrainWorker")
    assert len(workers) == 2 and len(with_state()) >= 4, "training never registered its fourth checkpoint"
    killed_at = time.time()
    os.kill(workers[1].pid, signal.SIGKILL)
    thread.join(timeout=600)

    result = outcome["result"]
    assert result.error is None
    checkpoints = sorted(run_dir.glob("pretrain-step*"))
    assert len(checkpoints) >= 5 and Path(result.checkpoint.path) == checkpoints[-1]
    assert all((c / "config.json").is_file() and (c / "model.safetensors").is_file() for c in checkpoints)
    assert with_state() == [False] * (len(checkpoints) - 1) + [True]
    # The sizes --dry-run plans disk with (fp32, ZeRO-2 over 2 workers) are the ones written.
    parameters = count_parameters(AutoModelForCausalLM.from_pretrained(checkpoints[-1]))
    weights, state = checkpoint_bytes(parameters, bf16=False, zero_stage=2)
    assert (checkpoints[0] / "model.safetensors").stat().st_size == pytest.approx(weights, rel=0.01)
    written = sum(f.stat().st_size for f in (checkpoints[-1] / DEEPSPEED_DIR).rglob("*") if f.is_file())
    assert written == pytest.approx(state, rel=0.05)
    rows = metrics_of(cfg)
    assert rows["step"].is_unique  # the steps trained again after the kill replaced their rows
    assert rows["step"].max() == rows["total_steps"].iloc[0]
    # The restarted workers' first row follows the checkpoint they resumed from: the 4th or a newer
    # one registered before the kill landed.
    first_after = rows.loc[rows["time"] > killed_at, "step"].min()
    steps = [load_trainer_state(c).step for c in checkpoints]
    resumed_from = max(k for k, step in enumerate(steps) if step < first_after)
    assert resumed_from >= 3
    # With its optimizer and schedule state: every step's learning rate is the uninterrupted schedule's.
    logged = rows[rows["step"] > 0]
    total = int(rows["total_steps"].iloc[0])
    expected = [2e-3 * lr_factor(int(step), 10, total, "linear") for step in logged["step"]]
    assert logged["lr"].tolist() == pytest.approx(expected, rel=1e-6)
    killed = [a for a in actors("RayTrainWorker", alive_only=False) if a.pid == workers[1].pid]
    assert killed and killed[0].state == "DEAD"


def test_zero3_across_two_workers_gathers_a_whole_checkpoint(ray_local, tmp_path):
    cfg = small_config(tmp_path, pretrain={"max_steps": 12, "checkpoints": {"schedule": "final"}},
                       distributed={"zero_stage": 3})
    result = run_pretraining(cfg)
    assert result.error is None
    model = AutoModelForCausalLM.from_pretrained(result.checkpoint.path)
    tokenizer = AutoTokenizer.from_pretrained(result.checkpoint.path)
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in model.parameters())
    rows = metrics_of(cfg).dropna(subset=["val_loss"]).sort_values("step")
    # The saved weights are the trained ones: they score validation as the run did at its end.
    from classit.data.corpus import prepare_corpus
    from classit.train.loop import collate_blocks, validation_losses

    corpus = prepare_corpus(cfg)
    loss = validation_losses(model, {"": corpus.load_blocks("validation")},
                             partial(collate_blocks, pad_id=tokenizer.pad_token_id), 8)["val_loss"]
    assert loss == pytest.approx(rows.iloc[-1]["val_loss"], rel=1e-4)
