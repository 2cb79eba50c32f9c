"""`classit instruct` on Ray (2 workers, ZeRO-2, CPU) from one pretrained tiny base: the word budget,
the checkpoint schedule and learning. Every curriculum preset runs end to end in the sweep test
(`test_sweep_ray.py`), through the same `train_instruct`. The base is pretrained in this process
by the same loop (pretraining on Ray is `test_train_ray.py`'s): a Ray Train run fewer."""

from pathlib import Path

import pytest

from classit.results import read_table, table_dir
from classit.train.instruct import run_instruct
from conftest import small_config, train_tiny_checkpoint


@pytest.fixture(scope="module")
def base(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    return tmp, train_tiny_checkpoint(tmp)


def instruct_config(tmp, curriculum, run_name, **instruct):
    return small_config(tmp, instruct={
        "curriculum": curriculum,
        "datasets": {"switch": {"synthetic": "conversation", "max_records": 240},
                     "wiki": {"synthetic": "qa", "max_records": 240}},
        "train": {"learning_rate": 2e-3, "epochs": 2, "warmup_steps": 4, "batch_size": 8, "eval_every_steps": 10,
                  "log_every_steps": 10},
        **instruct,
    }, run={"name": run_name})


def test_over_budget_fails_before_training(base):
    tmp, checkpoint = base
    from classit.budget import BudgetError
    from classit.config import WordBudgetConfig

    cfg = instruct_config(tmp, "switch_wiki", "over-budget")
    cfg = cfg.model_copy(update={"budget": WordBudgetConfig(max_exposure_words=1000)})

    with pytest.raises(BudgetError, match="exposure .* > 1,000"):
        run_instruct(cfg, checkpoint)
    assert not (Path(cfg.run.storage_path) / cfg.run.name).exists()


def test_instruction_tuning_continues_the_checkpoint_schedule_past_the_base_and_lowers_the_reply_loss(base):
    from classit.train.checkpoints import checkpoint_marks, load_trainer_state

    tmp, checkpoint = base
    base_exposure = load_trainer_state(checkpoint).total_exposure_words
    scale = base_exposure / 3_500_000  # the base sits half way between the 3M and 4M marks
    cfg = instruct_config(tmp, "switch_wiki", "marks", train={
        "learning_rate": 2e-3, "epochs": 4, "warmup_steps": 4, "batch_size": 8, "eval_every_steps": 10,
        "log_every_steps": 1, "checkpoints": {"word_scale": scale}})
    result = run_instruct(cfg, checkpoint)
    assert result.error is None
    words = sorted(int(Path(c.path).name.split("words")[1]) for c, _ in result.best_checkpoints)
    assert words[0] > base_exposure  # checkpoints are named by total exposure, the base's words included
    rows = read_table(table_dir(cfg.run.storage_path, cfg.run.name, "train_metrics"))
    ends = set(rows.groupby("stage")["exposure_words"].max())  # each stage's last step is saved too
    per_step = rows.sort_values(["stage_index", "step"])["exposure_words"].diff().max()
    marks = [m for m in checkpoint_marks(base_exposure, scale) if m <= words[-1]]
    assert len(marks) >= 2  # the schedule went on from the base's exposure: its "4M", "5M", ...
    for mark in marks:
        assert any(mark <= w < mark + per_step for w in words)  # saved at the first step at or past it
    assert all(w in ends or any(m <= w < m + per_step for m in marks) for w in words)
    # switch then wiki lowers the reply loss below the base's: the loss before the first step
    # is the base's own on these validation records (the sweep test checks it equals `pt`'s).
    losses = rows.dropna(subset=["val_loss"]).sort_values(["stage_index", "step"])["val_loss"]
    assert losses.iloc[-1] < losses.iloc[0]


def test_pt_trains_nothing_and_records_the_base_as_its_run_with_its_validation_loss(base):
    """`pt` is one Ray task, not a worker group: the base saved again as the run's `pt-final` and
    one metric row at step 0 in the run's own table (the sweep test checks its loss is the one
    every trained run starts from)."""
    from safetensors.torch import load_file

    tmp, checkpoint = base
    cfg = instruct_config(tmp, "pt", "pt")
    result = run_instruct(cfg, checkpoint)
    saved = Path(result.checkpoint.path)
    assert saved == Path(cfg.run.storage_path).resolve() / "pt" / "pt-final"
    assert [c.path for c, _ in result.best_checkpoints] == [result.checkpoint.path]
    copied, original = load_file(saved / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    assert copied.keys() == original.keys() and all((copied[k] == original[k]).all() for k in original)
    assert (saved / "tokenizer.json").is_file()
    again = run_instruct(cfg, checkpoint)  # rerun, as a resumed sweep may: the same one row
    assert again.metrics["val_loss"] == result.metrics["val_loss"]
    rows = read_table(table_dir(cfg.run.storage_path, cfg.run.name, "train_metrics"))
    assert rows[["stage", "step", "words_seen"]].values.tolist() == [["pt", 0, 0]]
    assert rows["val_loss"].item() == result.metrics["val_loss"] > 0
    assert rows[["val_loss:switch", "val_loss:wiki"]].notna().all(axis=None)


def test_pt_on_a_base_whose_weights_do_not_load_fails_like_a_training_run_naming_the_base(base):
    """Weights that do not load fail as a training run does; a file cut short, before it starts."""
    import shutil

    from ray.train import WorkerGroupError

    from safetensors.torch import load_file, save_file

    from classit.config import LoadError

    tmp, checkpoint = base
    # A whole file whose first tensor has the wrong shape: only loading the model finds it.
    bad = tmp / "wrong-shape"
    shutil.copytree(checkpoint, bad)
    tensors = load_file(bad / "model.safetensors")
    first = sorted(tensors)[0]
    save_file({**tensors, first: tensors[first][:1].clone()}, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WorkerGroupError, match=f"{bad}: the checkpoint does not load"):
        run_instruct(instruct_config(tmp, "pt", "pt-wrong-shape"), bad)
    # A file cut short is named before anything starts.
    cut = tmp / "cut-short"
    shutil.copytree(checkpoint, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(LoadError, match=f"{weights}: not a whole safetensors file"):
        run_instruct(instruct_config(tmp, "pt", "pt-cut-short"), cut)
