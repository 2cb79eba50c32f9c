"""A real sweep on local Ray: Tune + Optuna/grid, Train workers with DeepSpeed, the evaluation pool."""

import json
from pathlib import Path

import pytest

from classit.config import parse_config
from conftest import this_cpu
from classit.results import read_table
from classit.sweep.runner import run_sweep
from classit.sweep.space import grid_trials
from classit.sweep.status import sweep_status
from classit.sweep.trial import trial_key

CURRICULA = ["pt", "switch", "wiki", "merged", "switch_wiki", "wiki_switch"]


def sweep_config(tmp: Path, **sweep) -> dict:
    """The tiny preset on a small synthetic corpus; trials of a few steps each, one training worker
    each (the sweep is under test; ZeRO across workers is in test_train_ray, test_instruct_ray and
    the node-loss sweep of test_cluster_ray): two trials at once then fit the machine's two cores."""
    return {
        "corpus": {"synthetic": {"sentences": 4000, "seed": 1}, "block_size": 64, "num_proc": 1},
        # The BabyLM marks x 0.001 (1k, 2k, ... words): the base keeps a series of marks for AoA.
        "pretrain": {"learning_rate": 2e-3, "batch_size": 8, "max_steps": 30, "warmup_steps": 5,
                     "eval_every_steps": 15, "checkpoints": {"word_scale": 0.001, "resumable": False}},
        "instruct": {"datasets": {"switch": {"synthetic": "conversation", "max_records": 120},
                                  "wiki": {"synthetic": "qa", "max_records": 120}},
                     "train": {"learning_rate": 2e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 2,
                               "eval_every_steps": 5, "log_every_steps": 5}},
        "distributed": {"num_workers": 1, "zero_stage": 2},
        "evaluation": {"tasks": ["blimp"], "actors": 1, "cpus_per_actor": 0},
        "sweep": {"name": "test", "search": "grid", "metrics": ["blimp"], "modes": ["max"],
                  "space": {"curriculum": {"choice": CURRICULA}, "learning_rate": {"choice": [2e-3]}}, **sweep},
        "run": {"storage_path": str(tmp / "runs"), "cache_dir": str(tmp / "cache")},
    }


def test_a_base_built_ahead_that_fails_leaves_its_error_to_the_trials(ray_local, tmp_path):
    """The driver asks for every missing base as the sweep starts and waits for none: a failure
    is not raised to it (nobody reads that reply) but by each trial's own `ensure`."""
    from classit.sweep.services import BaseBuilder

    over_budget = sweep_config(tmp_path) | {"budget": {"max_input_words": 1000}}
    cfg_json = parse_config(over_budget).model_dump(mode="json")
    builder = BaseBuilder.remote()
    try:
        assert ray_local.get(builder.build_ahead.remote(cfg_json)) is None
        with pytest.raises(ray_local.exceptions.RayTaskError, match="over the BabyLM word limits"):
            ray_local.get(builder.ensure.remote(cfg_json))
    finally:
        ray_local.kill(builder)


def test_six_trials_share_one_base_built_once_and_all_get_scores(ray_local, shared):
    # Two trials at a time: the first two both wait for the base the driver asked for, and must not build it again.
    cfg = parse_config(sweep_config(shared, max_concurrent_trials=2))
    board = run_sweep(cfg, log=lambda _: None)
    storage = shared / "runs"
    # A finished trial's Tune actor runs the next trial: two processes for six trials, two at a time,
    # as Tune records them (the `pid` of every report; Ray's state API once listed none of its actors).
    reports = [json.loads(line) for path in (storage / "test").glob("*/result.json")
               for line in path.read_text().splitlines()]
    assert len({r["trial_id"] for r in reports}) == 6 and len({r["pid"] for r in reports}) == 2

    assert len(list((storage / "bases").glob("base-*/artefact.json"))) == 1
    base_runs = [p for p in storage.iterdir() if p.name.startswith("base-")]
    assert len(base_runs) == 1
    pretrain_rows = read_table(str(base_runs[0] / "results" / "train_metrics"))
    assert (pretrain_rows["step"] == 0).sum() == 1  # pretraining ran exactly once

    planned = {trial_key(p) for p in grid_trials(cfg)}
    assert set(board["trial"]) == planned and len(board) == 6
    assert set(board["param.curriculum"]) == set(CURRICULA)
    assert board["val_loss"].notna().all() and board["blimp:average:accuracy"].between(0, 100).all()
    assert (board["status"] == "finished").all()
    # The learning rate is drawn for every curriculum that trains, never for pt.
    trains = board["param.curriculum"] != "pt"
    assert (board.loc[trains, "param.learning_rate"] == 2e-3).all() and board.loc[~trains, "param.learning_rate"].isna().all()
    # One validation set for the sweep: every trial, pt included, scored on the same records,
    # with one loss per instruction dataset and the base's own pretraining loss.
    assert board["validation_records"].nunique() == 1 and board["validation_records"].notna().all()
    assert board[["val_loss:switch", "val_loss:wiki", "base_val_loss"]].notna().all().all()
    assert board["base_val_loss"].nunique() == 1
    # Each row names that one base's checkpoint: what `classit export-hub` takes beside the trial's run.
    [base_checkpoint] = set(board["base_checkpoint"])
    assert Path(base_checkpoint).parent.resolve() == base_runs[0].resolve() and (Path(base_checkpoint) / "config.json").is_file()
    # Every trial's config is written whole into its row.
    assert all(json.loads(c)["instruct"]["train"]["learning_rate"] == 2e-3 for c in board["config"])
    # What trained each (pt: its base) and what scored it: this machine's processor.
    assert (board["hardware"] == this_cpu()).all(), board["hardware"]

    scores = read_table(str(storage / "test" / "results" / "eval_scores"))
    assert not scores.duplicated(["trial", "checkpoint", "task", "subtask", "metric"]).any()
    assert set(scores["trial"]) == planned and (scores["error"] == "").all()
    assert (scores["hardware"] == this_cpu()).all(), scores["hardware"].unique()
    metrics = read_table(str(storage / "test" / "results" / "train_metrics"))
    # ... and into every metric and score row.
    assert all(json.loads(c)["instruct"]["train"]["learning_rate"] == 2e-3 for c in scores["config"])
    assert all(json.loads(c)["run"]["name"] == t for c, t in zip(metrics["config"], metrics["trial"]))
    trained = metrics[metrics["stage"] != "pt"]
    assert trained["trial"].nunique() == 5  # every curriculum but pt trained, each in its own run
    assert (trained.groupby(["trial", "stage"])["step"].apply(lambda s: (s == 0).sum()) == 1).all()
    logged = trained[trained["step"] > 0]  # every logged step of every trial keeps loss and lr
    assert len(logged) > 0 and logged["loss"].notna().all() and logged["lr"].notna().all()
    assert (metrics["validation_records"] == board["validation_records"].iloc[0]).all()
    evaluations = metrics[(metrics["step"] == 0) | (metrics["step"] % 5 == 0) | (metrics["step"] == metrics["total_steps"])]
    assert evaluations["val_loss"].notna().all()  # eval_every_steps 5, and each stage's start and end

    # Every preset end to end: its stages in order, each reporting from its own step 0 and ending in
    # a checkpoint; `pt` trains nothing and is the base itself, scored as the run's only checkpoint.
    pt_loss = board.loc[board["param.curriculum"] == "pt", "val_loss"].item()
    for trial in board.to_dict("records"):
        curriculum = trial["param.curriculum"]
        stages = {"pt": ["pt"], "merged": ["merged"]}.get(curriculum, curriculum.split("_"))
        rows = metrics[metrics["trial"] == trial["run"]].sort_values(["stage_index", "step"])
        assert list(dict.fromkeys(rows["stage"])) == stages
        assert (rows.groupby("stage")["step"].min() == 0).all()
        assert (rows["exposure_words"] >= rows["words_seen"]).all() and rows["input_words"].notna().all()
        saved = [p.name for p in (storage / trial["run"]).iterdir() if (p / "config.json").is_file()]
        if curriculum == "pt":
            assert saved == ["pt-final"]
        else:  # `<stage>-step<N>-words<W>`, in the order trained: by total exposure
            by_words = sorted(saved, key=lambda name: int(name.split("words")[1]))
            assert [name.split("-step")[0] for name in by_words] == stages
            # Before its first step a run is the base: its loss there is pt's, on the same records.
            assert rows["val_loss"].iloc[0] == pytest.approx(pt_loss, rel=1e-5)


def test_parameters_drawn_again_while_their_first_trial_runs_train_once_and_share_its_row(ray_local, shared):
    """Twins: a search drawing the same parameters while their first trial still runs (here every
    draw is the same, two at once) trains them once, in one run, and both trials get its scores; the
    objective here is one instruction dataset's validation loss."""
    import optuna

    from classit.sweep.search import optuna_journal

    config = sweep_config(shared, name="twins", search="random", num_samples=2, max_concurrent_trials=2,
                          metrics=["val_loss:wiki"], modes=["min"],
                          space={"curriculum": {"choice": ["switch"]}, "learning_rate": {"choice": [2e-3]}})
    lines = []
    board = run_sweep(parse_config(config), log=lines.append)

    assert len(board) == 1 and board["status"].item() == "finished"
    started = [line for line in lines if line.startswith(f"trial {board['trial'].item()} started: ")]
    assert len(started) == 2 and started[1].endswith("(drawn again: trained once, one row with the earlier trial)")
    assert "drawn again" not in started[0]
    results = shared / "runs" / "twins" / "results"
    metrics = read_table(str(results / "train_metrics"))
    assert set(metrics["trial"]) == {board["run"].item()} and (metrics["step"] == 0).sum() == 1  # trained once
    scores = read_table(str(results / "eval_scores"))
    assert not scores.duplicated(["trial", "checkpoint", "task", "subtask", "metric"]).any()  # scored once
    study = optuna.load_study(study_name="twins", storage=optuna_journal(parse_config(config)))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert board["val_loss:wiki"].item() != board["val_loss"].item()  # its own part of the validation set
    assert [t.values for t in study.trials] == [[board["val_loss:wiki"].item()]] * 2
    # `classit status` shows the second draw as the first's twin, not as a second finished trial.
    status = sweep_status(shared / "runs" / "twins")
    assert [r["state"] for r in status["trials"]] == ["finished", "twin"]
    assert status["counts"]["finished"] == 1 and status["counts"]["twin"] == 1
    # Both Tune trials ended: the sweep is finished (one row for its two trials), not rerun.
    again = run_sweep(parse_config(config), log=lambda _: None)
    assert again["trial"].tolist() == board["trial"].tolist()


def test_asha_stops_a_trial_that_falls_behind_keeps_its_metrics_and_optuna_records_it_pruned(ray_local, shared):
    """ASHA with a random search, one trial at a time: the second draw (a learning rate too small
    to learn) is behind the first at the first rung and stopped there. It is a `stopped` row, not
    scored, PRUNED in the Optuna study (not left RUNNING), and its reported metrics are on disk."""
    import optuna

    from classit.sweep.search import optuna_journal

    # The random sampler's seed 0 draws the second choice, then the first.
    config = sweep_config(shared, name="asha", search="random", num_samples=2, asha=True, search_seed=0,
                          space={"curriculum": {"choice": ["switch"]}, "learning_rate": {"choice": [1e-6, 2e-3]}})
    lines = []
    run_sweep(parse_config(config), log=lines.append)

    results = shared / "runs" / "asha" / "results"
    trials = read_table(str(results / "trials")).set_index("param.learning_rate")
    assert trials["status"].to_dict() == {2e-3: "finished", 1e-6: "stopped"}
    stopped = trials.loc[1e-6, "trial"]
    assert [line for line in lines if line.startswith(f"trial {stopped} ")][-1].startswith(
        f"trial {stopped} stopped early by ASHA: stage switch, ")
    assert not any(line.startswith(f"trial {stopped} scored") for line in lines)
    study = optuna.load_study(study_name="asha", storage=optuna_journal(parse_config(config)))
    assert [(t.params["learning_rate"], t.state) for t in study.trials] == [
        (2e-3, optuna.trial.TrialState.COMPLETE), (1e-6, optuna.trial.TrialState.PRUNED)]
    assert study.trials[0].values == [trials.loc[2e-3, "blimp:average:accuracy"]]
    # The stopped trial's reports up to the rung it was stopped at (its start and first evaluation)
    # are in train_metrics, though its workers were stopped before any checkpoint.
    metrics = read_table(str(results / "train_metrics"))
    reported = metrics[metrics["trial"] == f"asha-{stopped}"]
    assert {0, 5} <= set(reported.loc[reported["val_loss"].notna(), "step"])
    assert not reported.duplicated(["stage", "step"]).any()
    assert sweep_status(shared / "runs" / "asha")["counts"]["stopped"] == 1


OBJECTIVE = "blimp:UID:agreement_attractor:accuracy"


def test_tpe_multi_objective_with_seeds_repeats_each_draw_scores_aoa_on_the_marks_and_feeds_the_trackers(
        ray_local, shared):
    """Optuna TPE over curriculum x mix ratio x learning rate, two objectives (the validation loss and
    one BLiMP paradigm's accuracy, a breakdown row rather than a headline score), two seeds per draw;
    each trial's age of acquisition from the base's mark checkpoints, one job per mark; MLflow (a
    local SQLite store), TensorBoard and W&B (offline) fed by Tune's logger callbacks."""
    import pandas as pd

    from classit.data.synthetic import write_probe_data
    from classit.evaluate.tasks.aoa import curve_fitness
    from conftest import write_aoa_data

    data = write_aoa_data(write_probe_data(shared / "evaluation_data"))
    config = sweep_config(shared, name="tpe", search="tpe", num_samples=2, seeds=[0, 1],
                          metrics=["val_loss", "blimp:UID:agreement_attractor"], modes=["min", "max"],
                          space={"curriculum": {"choice": ["merged", "switch_wiki"]},
                                 "mix_ratio": {"uniform": [0.2, 0.8]},
                                 "learning_rate": {"loguniform": [5e-4, 5e-3]}})
    config["evaluation"] |= {"tasks": ["blimp", "aoa"], "data_dir": str(data), "actors": 2}
    config["tracking"] = {"mlflow": {"tracking_uri": f"sqlite:///{shared / 'mlflow.db'}"}, "tensorboard": {},
                          "wandb": {"mode": "offline"}}
    board = run_sweep(parse_config(config), log=lambda _: None)
    assert len(board) == 4 and set(board["param.seed"]) == {0, 1}
    draws = board.groupby(["param.curriculum", "param.learning_rate"])["param.seed"].apply(sorted)
    assert all(seeds == [0, 1] for seeds in draws)  # each draw ran once per seed
    assert (board["param.mix_ratio"].notna() == (board["param.curriculum"] == "merged")).all()
    assert board["pareto"].any()
    # The Optuna study is on disk, in the sweep's folder: one trial per draw, told the seed means.
    import optuna

    from classit.sweep.search import optuna_journal

    study = optuna.load_study(study_name="tpe", storage=optuna_journal(parse_config(config)))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    drawn = {(t.params["curriculum"], t.params["learning_rate"]) for t in study.trials}
    assert drawn == set(zip(board["param.curriculum"], board["param.learning_rate"]))
    for t in study.trials:
        seeds = board[(board["param.curriculum"] == t.params["curriculum"])
                      & (board["param.learning_rate"] == t.params["learning_rate"])]
        assert t.values == pytest.approx([seeds["val_loss"].mean(), seeds[OBJECTIVE].mean()])

    assert (board["status"] == "finished").all() and board["aoa:average:pearson"].notna().all()
    results = shared / "runs" / "tpe" / "results"
    scores = read_table(str(results / "eval_scores"))
    # The objective, a breakdown row of BLiMP (not a headline score), as its final checkpoint's row has it.
    breakdown = scores[(scores["subtask"] == "UID:agreement_attractor") & (scores["metric"] == "accuracy")]
    assert board[OBJECTIVE].tolist() == [breakdown.set_index("checkpoint")["value"][c] for c in board["checkpoint"]]
    marks = scores[(scores["task"] == "aoa") & (scores["subtask"] == "surprisal")]
    base_marks = {p.name for p in (shared / "runs").glob("base-*/*") if (p / "trainer_state.json").is_file()
                  and json.loads((p / "trainer_state.json").read_text())["babylm_mark"]}
    assert len(base_marks) >= 3 and marks.groupby("trial")["checkpoint"].nunique().eq(len(base_marks)).all()
    surprisals = read_table(str(results / "aoa_surprisal"))
    assert len(surprisals) == 4 * len(base_marks) * 4 * 2  # trials x marks x words x contexts
    human = pd.read_csv(data / "aoa" / "cdi_human.csv")
    for trial in board.to_dict("records"):  # each trial's score: the fit of its own surprisals, on its checkpoint
        mine = surprisals[surprisals["trial"] == trial["trial"]]
        assert (mine["series"] == trial["checkpoint"]).all()
        assert trial["aoa:average:pearson"] == curve_fitness(mine.to_dict("records"), human)["curve_fitness"]
    assert_trackers_got_every_trial(config, board)


def assert_trackers_got_every_trial(config: dict, board) -> None:
    """One run per trial in each tracker, with its parameters, every logged training loss at its
    exposure and the trial's scores. Tune's trial folders tell which trial each run is (its trial
    id -> the parameters Tune gave it)."""
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from classit.sweep.trial import trial_params
    from conftest import wandb_history

    experiment = Path(config["run"]["storage_path"]) / config["sweep"]["name"]
    steps = read_table(str(experiment / "results" / "train_metrics")).dropna(subset=["loss"])
    expected = {key: steps[steps["trial"] == f"{experiment.name}-{key}"].sort_values("exposure_words")
                for key in board["trial"]}
    final = board.set_index("trial")

    def tune_trial_id(trial_dir: Path) -> str:
        return json.loads((trial_dir / "result.json").read_text().splitlines()[0])["trial_id"]

    trial_dirs = {tune_trial_id(path): path for path in experiment.glob("run_trial_*")}
    key_of = {trial_id: trial_key(trial_params(json.loads((path / "params.json").read_text()), config["sweep"]["seeds"]))
              for trial_id, path in trial_dirs.items()}
    assert sorted(key_of.values()) == sorted(board["trial"])

    mlflow.set_tracking_uri(config["tracking"]["mlflow"]["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=[experiment.name])
    assert len(runs) == len(board)
    client = mlflow.MlflowClient()
    for _, run in runs.iterrows():
        key = key_of[run["tags.trial_name"].removeprefix("run_trial_")]  # Tune's trial name
        assert run["params.curriculum"] == final.loc[key, "param.curriculum"]  # the searcher's draw, as Tune had it
        assert float(run["params.learning_rate"]) == pytest.approx(final.loc[key, "param.learning_rate"])
        history = sorted(client.get_metric_history(run["run_id"], "train/loss"), key=lambda m: m.step)
        assert [m.value for m in history] == pytest.approx(expected[key]["loss"].tolist())  # every logged step
        assert [m.step for m in history] == expected[key]["exposure_words"].tolist()
        assert run["metrics.blimp:average:accuracy"] == pytest.approx(final.loc[key, "blimp:average:accuracy"])
        assert run["metrics.eval/blimp:average:accuracy"] == pytest.approx(final.loc[key, "blimp:average:accuracy"])
        assert run["metrics.val_loss"] == pytest.approx(final.loc[key, "val_loss"])

    event_files = list(experiment.glob("*/events.out.tfevents.*"))
    assert len(event_files) == len(board)
    for path in event_files:
        events = EventAccumulator(str(path)).Reload()
        key = key_of[tune_trial_id(path.parent)]
        losses = [e.value for e in events.Scalars("ray/tune/train/loss")]
        assert losses == pytest.approx(expected[key]["loss"].tolist(), rel=1e-6)  # float32
        assert len(events.Scalars("ray/tune/blimp_average_accuracy")) == 1  # TensorBoard writes : as _

    run_files = list((experiment / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == len(board)
    for path in run_files:
        rows = wandb_history(path)
        key = key_of[path.stem.removeprefix("run-")]  # W&B's run id is Tune's trial id
        assert [r["train/loss"] for r in rows if "train/loss" in r] == pytest.approx(expected[key]["loss"].tolist())
        assert [r["blimp:average:accuracy"] for r in rows if "blimp:average:accuracy" in r] == \
            pytest.approx([final.loc[key, "blimp:average:accuracy"]])
