"""The sweep's search space, plan and validation, without Ray."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from classit.analysis.trials import leaderboard
from classit.config import ConfigError, LoadError, parse_config
from classit.evaluate.catalog import objective_key
from classit.sweep.plan import validate
from classit.sweep.space import DefineByRun, apply_params, check_space, grid_trials
from conftest import loaded_by

REPO = Path(__file__).resolve().parents[1]


def sweep_config(**sweep):
    return parse_config({"sweep": {"space": {"curriculum": {"choice": ["pt", "merged", "wiki>switch"]},
                                             "mix_ratio": {"choice": [0.25, 0.75]}}, **sweep}})


def test_grid_draws_mix_ratio_only_for_merged_and_repeats_each_seed():
    cfg = sweep_config(search="grid", seeds=[0, 1])
    trials = grid_trials(cfg)
    assert len(trials) == (1 + 2 + 1) * 2  # pt, merged x 2 ratios, wiki>switch; two seeds each
    assert all(("mix_ratio" in t) == (t["curriculum"] == "merged") for t in trials)
    trial_cfg = apply_params(cfg, trials[-1])
    assert [s.datasets for s in trial_cfg.instruct.curriculum] == [["wiki"], ["switch"]]
    assert trial_cfg.instruct.train.seed == 1


def test_optuna_define_by_run_is_conditional():
    cfg = parse_config({"sweep": {"space": {"curriculum": {"choice": ["merged", "switch_wiki"]},
                                            "mix_ratio": {"uniform": [0.2, 0.8]},
                                            "learning_rate": {"loguniform": [1e-5, 1e-3]}}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define = DefineByRun(cfg.sweep.space)
    seen = set()
    for _ in range(20):
        trial = study.ask()
        define(trial)
        assert ("mix_ratio" in trial.params) == (trial.params["curriculum"] == "merged")
        assert 1e-5 <= trial.params["learning_rate"] <= 1e-3
        seen.add(trial.params["curriculum"])
        apply_params(cfg, trial.params)  # every draw is a valid trial config
    assert seen == {"merged", "switch_wiki"}


@pytest.mark.parametrize("sweep, message", [
    ({"space": {"curriculum": {"choice": ["pt", "bogus"]}}}, "sweep.space.curriculum: value 'bogus'"),
    ({"space": {"curriculum": {"choice": ["merged"]}, "mix_ratio": {"uniform": [0.2, 1.5]}}},
     "sweep.space.mix_ratio: value 1.5"),
    # A parameter no curriculum of the sweep draws would be listed, planned and never varied.
    ({"space": {"mix_ratio": {"uniform": [0.2, 0.8]}}},
     "sweep.space.mix_ratio: drawn for merged only, and the sweep's curricula are switch_wiki"),
    ({"space": {"curriculum": {"choice": ["pt"]}, "learning_rate": {"choice": [1e-4]}}},
     "sweep.space.learning_rate: not drawn for pt, which trains nothing, and the sweep's curricula are pt"),
    ({"space": {}}, "sweep.space: empty search space"),
    ({"space": {"learning_rate": {"choice": [1e-4]}}, "sedes": [1]}, "sweep.sedes: unknown key"),
    ({"space": {"instruct.train.lr": {"choice": [1e-4]}}}, "sweep.space.instruct.train.lr: instruct.train.lr is not"),
    ({"search": "grid", "space": {"learning_rate": {"loguniform": [1e-5, 1e-3]}}},
     "sweep.space.learning_rate: grid search needs a list of choices"),
    ({"space": {"learning_rate": {"choice": [1e-4]}}, "metrics": ["rte"], "modes": ["max"]},
     "sweep.metrics: 'rte' needs task rte in evaluation.tasks"),
    ({"space": {"learning_rate": {"choice": [1e-4]}}, "metrics": ["babylm:nlp"], "modes": ["max"]},
     "sweep.metrics: 'babylm:nlp' needs tasks blimp_supplement, ewok, entity_tracking, comps, boolq, mnli, "
     "mrpc, multirc, qqp, rte, wsc in evaluation.tasks"),
    ({"space": {"learning_rate": {"choice": [1e-4]}}, "metrics": ["blimp", "blimp:average:accuracy"],
      "modes": ["max", "max"]}, "sweep.metrics: 'blimp' and 'blimp:average:accuracy' are one objective"),
    # The base is the preset's, so a sequence longer than its positions is known before it trains.
    ({"space": {"instruct.max_length": {"choice": [256, 1024]}}},
     "instruct.max_length: 1024 tokens, more than the tiny preset's 512 positions (the base the sweep pretrains)"),
    ({"space": {"learning_rate": {"choice": [1e-4]}}, "metrics": ["babylm:overall"], "modes": ["max"]},
     "sweep.metrics: 'babylm:overall': unknown aggregate (known: babylm:human_likeness, babylm:nlp, babylm:macro)"),
])
def test_bad_sweep_yaml_fails_with_one_line(tmp_path, sweep, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": sweep}))
    with pytest.raises(ConfigError) as err:
        from classit.config import load_config

        validate(load_config(path))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("tasks, folders, message", [
    (["blimp", "rte"], None, "evaluation.tasks: rte needs evaluation.data_dir (without it the probe sets generated "
                             "from the synthetic grammar are scored: blimp, ewok)"),
    (["blimp", "ewok"], ["blimp"], "evaluation.data_dir: {data}: no ewok or ewok_filtered folder for task ewok"),
    (["blimp_supplement", "reading"], ["supplement_filtered"],
     "evaluation.data_dir: {data}/reading/reading_data.csv: no such file for task reading"),
    (["blimp", "ewok"], ["blimp_filtered", "ewok_filtered"], None),
])
def test_a_task_whose_data_is_missing_stops_the_sweep_before_anything_trains(tmp_path, tasks, folders, message):
    evaluation = {"tasks": tasks, "fast": False}
    if folders is not None:
        data = tmp_path / "evaluation_data"
        for name in folders:
            (data / name).mkdir(parents=True)
        evaluation["data_dir"] = str(data)
    cfg = parse_config({"evaluation": evaluation, "sweep": {"space": {"learning_rate": {"choice": [1e-4]}}}})
    if message is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == message.format(data=tmp_path / "evaluation_data")


def test_a_breakdown_objective_is_checked_against_the_data_the_sweep_scores():
    # Without a data folder the sweep scores the probe sets generated from the synthetic grammar.
    def sweep(metric):
        return parse_config({"sweep": {"metrics": [metric], "modes": ["max"],
                                       "space": {"learning_rate": {"choice": [1e-4]}}}})

    validate(sweep("blimp:UID:agreement_attractor"))
    with pytest.raises(ConfigError) as err:
        validate(sweep("blimp:UID:agreement_atractor"))
    assert str(err.value) == ("sweep.metrics: 'blimp:UID:agreement_atractor': task blimp's data has no UID "
                              "'agreement_atractor' (it has 3: agreement_attractor, agreement_relative, agreement_simple)")


def test_scores_a_trial_row_holds_include_what_an_objective_names():
    from classit.evaluate.catalog import score_columns
    from classit.sweep.trial import scores_of

    columns = score_columns(["blimp", "ewok"], ["val_loss:wiki", "blimp:UID:agreement_simple", "ewok", "babylm:nlp"])
    assert columns == ["blimp:average:accuracy", "ewok:average:accuracy", "blimp:UID:agreement_simple:accuracy"]
    rows = [{"checkpoint": "c", "task": "blimp", "subtask": subtask, "metric": "accuracy", "value": value, "error": ""}
            for subtask, value in (("average", 60.0), ("UID:agreement_simple", 70.0), ("UID:agreement_relative", 50.0))]
    assert scores_of(rows, "c", columns) == {"blimp:average:accuracy": 60.0, "blimp:UID:agreement_simple:accuracy": 70.0}


def test_a_validation_loss_objective_names_an_instruction_dataset():
    cfg = parse_config({"sweep": {"metrics": ["val_loss:qa"], "modes": ["min"],
                                  "space": {"learning_rate": {"choice": [1e-4]}}}})
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == "sweep.metrics: 'val_loss:qa': no instruction dataset 'qa' (instruct.datasets: switch, wiki)"


@pytest.mark.parametrize("sweep, message", [  # one error of the config's own checks, one of the sweep's
    ({"space": {"curriculum": {"choice": ["pt", "bogus"]}}}, "sweep.space.curriculum: value 'bogus'"),
    ({"space": {"learning_rate": {"choice": [1e-4]}}, "metrics": ["rte"], "modes": ["max"]},
     "sweep.metrics: 'rte' needs task rte in evaluation.tasks"),
])
def test_bad_sweep_yaml_stops_the_entry_point_before_ray(tmp_path, sweep, message):
    """Through the real entry point: exit 2, one line on stderr, and Ray never started."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": sweep}))
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    proc = subprocess.run([sys.executable, str(REPO / "sweeps" / "curriculum_sweep.py"), "--config", str(path)],
                          capture_output=True, text=True, env={**os.environ, "RAY_TMPDIR": str(ray_tmp)}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert list(ray_tmp.iterdir()) == []


def small_demo_config(tmp_path) -> Path:
    """The demo sweep's config on a smaller corpus, running and caching under `tmp_path`."""
    path = tmp_path / "sweep.yaml"
    config = yaml.safe_load((REPO / "sweeps" / "configs" / "demo.yaml").read_text())
    config["run"] = {"storage_path": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}
    config["corpus"]["synthetic"]["sentences"] = 3000
    path.write_text(yaml.safe_dump(config))
    return path


def test_dry_run_prints_trials_budgets_and_cost(tmp_path):
    path = small_demo_config(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "sweeps" / "curriculum_sweep.py"), "--config", str(path),
                           "--dry-run"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "6 trials" in proc.stdout and "GPU-h" in proc.stdout and "curriculum=switch_wiki (tiny): " in proc.stdout and "within budget" in proc.stdout
    assert "of checkpoints in all (optimizer state in the newest 1 of each run)" in proc.stdout
    assert re.search(r"curriculum=switch_wiki \(tiny\): .* 2 checkpoints ~[\d.]+ MB", proc.stdout)  # one per stage
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_planned_disk_counts_every_mark_and_the_optimizer_state_kept():
    from classit.config import CheckpointConfig, DistributedConfig
    from classit.train.checkpoints import planned_checkpoints, run_disk_bytes

    scaled = CheckpointConfig(word_scale=0.01)  # marks every 10k words up to 100k
    assert planned_checkpoints(0, 25_000, scaled) == 3  # 10k, 20k and the end
    assert planned_checkpoints(15_000, 20_000, scaled) == 1  # the mark at its end is its last checkpoint
    assert planned_checkpoints(0, 25_000, CheckpointConfig(schedule="final")) == 1
    assert planned_checkpoints(0, 100_000_000, CheckpointConfig()) == 19  # 1M..10M, 20M..90M, 100M
    two = DistributedConfig(num_workers=2, zero_stage=2)  # fp32: 4-byte weights, 4 + 8 + 4 of state
    assert run_disk_bytes(10, 3, two, keep=1, resumable=True) == 3 * 40 + 1 * (40 + 120)
    assert run_disk_bytes(10, 3, two, keep=None, resumable=True) == 3 * 40 + 3 * (40 + 120)
    assert run_disk_bytes(10, 3, two, keep=1, resumable=False) == 3 * 40
    bf16 = DistributedConfig(num_workers=8, zero_stage=2, use_gpu=True)  # auto: bf16 weights, fp32 master
    assert run_disk_bytes(10, 3, bf16, keep=1, resumable=True) == 3 * 20 + (20 + 120)
    alone = DistributedConfig(num_workers=1, zero_stage=2)  # no ZeRO in a world of one: no master copy
    assert run_disk_bytes(10, 1, alone, keep=1, resumable=True) == 40 + (40 + 80)


def test_objectives_and_pareto_front():
    assert objective_key("blimp") == "blimp:average:accuracy"
    assert objective_key("mrpc") == "mrpc:validation:f1"
    assert objective_key("wug_adj") == "wug_adj:average:spearman"
    assert objective_key("reading:self_paced_reading") == "reading:self_paced_reading:r2_gain_pct"
    assert objective_key("babylm:macro") == "babylm:macro" and objective_key("babylm:nlp") == "babylm:nlp"
    # A breakdown row's subtask holds a colon: the last part is the metric only if it names one.
    assert objective_key("blimp:UID:anaphor_gender_agreement") == "blimp:UID:anaphor_gender_agreement:accuracy"
    assert objective_key("ewok:context_type:about:accuracy") == "ewok:context_type:about:accuracy"
    assert objective_key("mrpc:validation:accuracy") == "mrpc:validation:accuracy"
    assert objective_key("val_loss:wiki") == "val_loss:wiki"  # one instruction dataset's validation loss
    for spec in ("blimp:anaphor_gender_agreement", "blimp:average:tied_pct", "blimp:UID:", "wug_adj:UID:x", "mrpc:test"):
        with pytest.raises(ValueError, match="no subtask"):
            objective_key(spec)
    trials = pd.DataFrame({"trial": list("abcd"), "status": "finished", "a": [1.0, 2.0, 0.5, 2.0],
                           "b": [2.0, 1.0, 0.5, 1.0]})
    board = leaderboard(trials, ["a", "b"], ["max", "max"])
    assert dict(zip(board["trial"], board["pareto"])) == {"a": True, "b": True, "c": False, "d": True}
    assert list(board["trial"][:2]) in (["b", "d"], ["d", "b"])  # best first by the first objective


def test_check_space_accepts_the_shipped_configs():
    for name in ("demo.yaml", "mix_lr_sweep.yaml"):
        from classit.config import load_config

        check_space(load_config(REPO / "sweeps" / "configs" / name))


def test_trial_params_and_rows_for_trials_that_did_not_finish():
    from classit.sweep.trial import trial_key, trial_params, unfinished_row

    params = trial_params({"curriculum": "merged", "mix_ratio": 0.3, "__trial_index__": 1}, seeds=[7, 8])
    assert params == {"curriculum": "merged", "mix_ratio": 0.3, "seed": 8}  # the repeat index picks the seed
    assert trial_params({"params": {"curriculum": "pt", "seed": 3}}, seeds=[0]) == {"curriculum": "pt", "seed": 3}
    stopped = unfinished_row("s", params, None)
    failed = unfinished_row("s", params, RuntimeError("Traceback ...\nValueError: loss is NaN at step 4"))
    assert stopped["status"] == "stopped" and stopped["trial"] == trial_key(params)
    assert failed["status"] == "error" and failed["error"] == "ValueError: loss is NaN at step 4"
    assert failed["param.mix_ratio"] == 0.3


ORCHESTRATION_IMPORTS = """
import pkgutil
import classit.data, classit.sweep

for package in (classit.data, classit.sweep):
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        __import__(module.name)
import classit.train.instruct, classit.train.runner, classit.train.checkpoints, classit.models
"""


def test_the_sweep_driver_trial_actors_and_train_controllers_import_no_model():
    """A trial's Tune actor and a Ray Train controller are processes of their own, each importing the
    modules it is handed: transformers' modeling (~2.5 s of CPU) and DeepSpeed wait for the processes
    that build a model."""
    assert loaded_by(ORCHESTRATION_IMPORTS, ("transformers.modeling_utils", "deepspeed")) == []


def test_the_sweep_driver_plans_without_torch(tmp_path):
    """Planning reads the corpus and the records and counts words: torch and transformers (~2 s of
    the driver's start, while no trial trains) wait for the processes that tokenize or build a model,
    and the trackers' packages (mlflow, wandb: ~1.5 s) for a sweep that logs to them."""
    plan = ("from classit.config import load_config\nfrom classit.sweep.plan import plan_trials, validate\n"
            f"plans, bases = plan_trials(validate(load_config({str(small_demo_config(tmp_path))!r})))\n"
            "assert plans and list(bases) == ['tiny'], bases")
    assert loaded_by(plan, ("torch", "transformers", "mlflow", "wandb")) == []


def test_a_tracker_whose_package_is_missing_fails_before_ray_with_one_line(monkeypatch):
    from classit.sweep import plan

    cfg = parse_config({"sweep": {"space": {"learning_rate": {"choice": [1e-4]}}},
                        "tracking": {"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}, "wandb": {"mode": "offline"}}})
    validate(cfg)  # both installed (the dev extra)
    monkeypatch.setitem(plan.TRACKER_PACKAGES, "wandb", "wandb_not_installed_here")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == ("tracking.wandb: the wandb_not_installed_here package is not installed "
                              "(pip install 'classit[wandb]')")
    with pytest.raises(ConfigError, match="tracking.tensorboard.logdir: unknown key"):
        validate(parse_config({"sweep": {"space": {"learning_rate": {"choice": [1e-4]}}},
                               "tracking": {"tensorboard": {"logdir": "x"}}}))



def test_the_console_callback_pickles_after_ray_swaps_the_builtin_print(monkeypatch):
    """Tune pickles its callbacks when the Tuner is made; Ray's tqdm patch may have replaced
    `builtins.print` in the driver by then (a CI run failed so), after which the original builtin
    no longer pickles by reference."""
    import builtins

    from ray import cloudpickle

    from classit.sweep.console import SweepConsole

    console, lines = SweepConsole(["blimp"], [0], {}, planned=2, live=False), []
    # Swapped after the console is made, as Ray does; the builtin itself would then fail to pickle.
    monkeypatch.setattr(builtins, "print", lambda line, **kwargs: lines.append(line))
    restored = cloudpickle.loads(cloudpickle.dumps(console))
    restored.say("trial x started")
    assert lines == ["trial x started"]  # the default sink calls whatever print is now


WANDB_WRITER = """
import os, queue, signal, sys
from ray.air.integrations.wandb import _QueueItem
from classit.sweep.tracking import WandbRunWriter

results = queue.Queue()
for i in range(1, 201):
    results.put((_QueueItem.RESULT, {"training_iteration": i, "train/loss": 1.0 / i}))
results.put((_QueueItem.END, None))
WandbRunWriter(sys.argv[1], results, [], [], id="t1", project="p", mode="offline", dir=sys.argv[1]).run()
os.killpg(0, signal.SIGKILL)  # what Tune's ray.kill does the moment run returns: W&B's service process goes too
"""


def test_the_wandb_writer_returns_only_once_the_run_file_holds_every_logged_row(tmp_path):
    from conftest import wandb_history

    subprocess.run([sys.executable, "-c", WANDB_WRITER, str(tmp_path)], start_new_session=True, timeout=120,
                   env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    run_files = list(tmp_path.glob("wandb/offline-run-*/run-t1.wandb"))
    assert len(run_files) == 1, "W&B wrote no run file before the writer returned"
    assert [row["train/loss"] for row in wandb_history(run_files[0])] == pytest.approx([1.0 / i for i in range(1, 201)])


def test_a_twin_draw_takes_no_slot_and_a_draw_per_seed_does(tmp_path):
    """Twins (parameters drawn again while their first trial runs) wait and train nothing, so the
    limit on trials at once lets them pass; each seed of a draw is a trial of its own and counts."""
    from classit.sweep.search import optuna_journal, tune_setup
    from classit.sweep.trial import FINAL_REPORT

    space = {"curriculum": {"choice": ["switch"]}, "learning_rate": {"choice": [2e-3]}}  # every draw the same
    run = {"storage_path": str(tmp_path)}
    twins = parse_config({"sweep": {"name": "twins", "search": "random", "num_samples": 5, "max_concurrent_trials": 2,
                                    "space": space}, "run": run})
    search = tune_setup(twins)[1].search_alg
    first, *again = (search.suggest(trial_id) for trial_id in ("a", "b", "c"))
    assert again == [first, first] and search.live_trials == {"a"}  # b and c wait for a's row
    search.on_trial_complete("b", {"val_loss": 2.5, FINAL_REPORT: True})  # a twin's end reaches Optuna
    search.on_trial_complete("a", {"val_loss": 2.5, FINAL_REPORT: True})
    assert search.suggest("d") == first and search.live_trials == {"d"}  # a's draw is done: no twin of it
    study = optuna.load_study(study_name="twins", storage=optuna_journal(twins))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "RUNNING", "RUNNING"]

    seeds = parse_config({"sweep": {"name": "seeds", "search": "random", "num_samples": 2, "seeds": [0, 1],
                                    "max_concurrent_trials": 2, "space": space}, "run": run})
    search = tune_setup(seeds)[1].search_alg
    assert search.suggest("s0") == {**first, "__trial_index__": 0} and search.suggest("s1") is not None
    assert search.live_trials == {"s0", "s1"} and search.suggest("s2") is None  # two seeds, two slots


def test_optuna_is_told_each_draw_as_finished_over_its_seeds_stopped_early_or_failed(tmp_path):
    """Per draw (two seeds each): the mean over the seeds that finished (COMPLETE); none finished:
    PRUNED if ASHA stopped them, FAIL if one failed or was scored with an error. None stays RUNNING."""
    from classit.sweep.search import optuna_journal, tune_setup
    from classit.sweep.trial import FINAL_REPORT

    def told(name: str, seeds: list[int], ends: list[tuple[dict | None, bool]]) -> list[tuple[str, list | None]]:
        cfg = parse_config({"sweep": {"name": name, "search": "random", "num_samples": len(ends) // len(seeds),
                                      "seeds": seeds, "max_concurrent_trials": 10, "metrics": ["blimp", "val_loss"],
                                      "modes": ["max", "min"], "space": {"learning_rate": {"loguniform": [1e-4, 1e-2]}}},
                            "run": {"storage_path": str(tmp_path)}})
        search = tune_setup(cfg)[1].search_alg
        ids = [f"t{i}" for i in range(len(ends))]
        assert all(search.suggest(trial_id) is not None for trial_id in ids)
        for trial_id, (result, error) in zip(ids, ends):
            search.on_trial_complete(trial_id, result, error=error)
        return [(t.state.name, t.values) for t in optuna.load_study(study_name=name, storage=optuna_journal(cfg)).trials]

    def scored(blimp, val_loss):
        return {"blimp:average:accuracy": blimp, "val_loss": val_loss, FINAL_REPORT: True}

    stopped = {"val_loss": 3.0, "training_iteration": 2}  # ASHA's stop: the last report is a rung's
    eval_failed = {"val_loss": 2.0, FINAL_REPORT: True}  # scored, but an objective's evaluation failed
    assert told("one_seed", [0], [(scored(60.0, 2.0), False), (stopped, False), (None, True), (eval_failed, False)]) == [
        ("COMPLETE", [60.0, 2.0]), ("PRUNED", None), ("FAIL", None), ("FAIL", None)]
    assert told("two_seeds", [0, 1], [
        (scored(60.0, 2.0), False), (scored(70.0, 3.0), False),  # both seeds finished
        (scored(50.0, 2.5), False), (stopped, False),  # one finished, one stopped
        (stopped, False), (stopped, False),  # both stopped
        (None, True), (stopped, False),  # one failed
        (eval_failed, False), (stopped, False)]) == [
        ("COMPLETE", [65.0, 2.5]), ("COMPLETE", [50.0, 2.5]), ("PRUNED", None), ("FAIL", None), ("FAIL", None)]


def test_asha_never_ends_a_long_trial_for_its_number_of_reports_and_stops_one_behind(tmp_path):
    """ASHA (`sweep.asha`) on Tune's scheduler: a trial ahead at every rung runs to its 500th report
    (Tune's default `max_t` would stop it, unscored, at its 100th); one behind it at a rung stops."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from classit.sweep.search import tune_setup

    cfg = parse_config({"sweep": {"name": "asha", "search": "random", "asha": True, "metrics": ["blimp"],
                                  "modes": ["max"], "space": {"learning_rate": {"loguniform": [1e-4, 1e-2]}}},
                        "run": {"storage_path": str(tmp_path)}})  # its Optuna journal goes there, not to ./runs
    scheduler = tune_setup(cfg)[1].scheduler
    ahead, behind = Trial("trial", stub=True), Trial("trial", stub=True)
    for trial in (ahead, behind):
        scheduler.on_trial_add(None, trial)
    decisions = {scheduler.on_trial_result(None, ahead, {"training_iteration": i, "val_loss": 1.0})
                 for i in range(1, 501)}
    assert decisions == {TrialScheduler.CONTINUE}
    assert scheduler.on_trial_result(None, behind, {"training_iteration": 1, "val_loss": 2.0}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, behind, {"training_iteration": 2, "val_loss": 2.0}) == TrialScheduler.STOP


def test_status_of_a_sweep_whose_record_is_damaged_names_the_file_in_one_line(tmp_path, capsys):
    from classit.cli import main

    (tmp_path / "sweep.json").write_text('{"config": {')  # cut short, as by a full disk
    assert main(["status", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"classit: error: {tmp_path / 'sweep.json'}: not valid JSON "
                                       "(JSONDecodeError: Expecting property name enclosed in double quotes: "
                                       "line 1 column 13 (char 12))\n")
    # JSON, but no sweep's record: the field is named, in one line, whether asked of the sweep or its storage.
    record = tmp_path / "storage" / "sweep" / "sweep.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"config": {}, "pid": "one", "host": "h", "started": 1.5}')
    for folder in (record.parent, record.parent.parent):
        assert main(["status", str(folder)]) == 2
        assert capsys.readouterr().err == (f"classit: error: {record}: pid: Input should be a valid integer, "
                                           "unable to parse string as an integer (got 'one')\n")


def test_a_tune_state_of_another_shape_is_named_with_its_field_by_status_and_resume(tmp_path, capsys):
    from classit.cli import main
    from classit.sweep.status import ended_trials, write_sweep_file

    experiment = tmp_path / "runs" / "s"
    write_sweep_file(experiment, sweep_config(name="s"))
    state = experiment / "experiment_state-2026-12-06_10-00-00.json"
    trial = json.dumps({"config": {}, "status": "TERMINATED", "relative_logdir": "t"})
    for text, line in [
        ('{"trial_data": 5}', "trial_data: Input should be a valid list (got 5)"),
        (json.dumps({"trial_data": [[json.dumps({"config": {}}), "{}"]]}), "trial_data.0.0: status: Field required"),
        (json.dumps({"trial_data": [[trial, '{"start_time": "soon"}']]}),
         "trial_data.0.1: start_time: Input should be a valid number, unable to parse string as a number (got 'soon')"),
    ]:
        state.write_text(text)
        assert main(["status", str(experiment)]) == 2
        assert capsys.readouterr().err == f"classit: error: {state}: {line}\n"
        with pytest.raises(LoadError, match=re.escape(f"{state}: {line}")):
            ended_trials(experiment)  # what --resume reads


def test_status_of_a_storage_folder_is_its_newest_sweeps(tmp_path, capsys):
    from classit.cli import main
    from classit.sweep.status import write_sweep_file

    for name in ("older", "newer"):
        write_sweep_file(tmp_path / "runs" / name, sweep_config(name=name))
    assert main(["status", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.startswith("sweep newer: ")
    assert main(["status", str(tmp_path / "runs" / "older")]) == 0
    assert capsys.readouterr().out.startswith("sweep older: ")


def test_a_sweep_goes_on_only_with_the_config_it_started_with(tmp_path):
    """Tune restores its own search and every trial row is keyed by its parameters alone: a sweep run
    on with another config would mix two studies in one table. Where it runs may change."""
    from classit.sweep.plan import experiment_dir
    from classit.sweep.runner import STATE_FILE, finished_sweep
    from classit.sweep.status import write_sweep_file

    def config(*overrides):
        data = {"sweep": {"name": "s", "space": {"curriculum": {"choice": ["pt", "switch"]}}, "num_samples": 6},
                "run": {"storage_path": str(tmp_path / "runs")}}
        for key, value in overrides:
            *sections, field = key.split(".")
            node = data
            for section in sections:
                node = node.setdefault(section, {})
            node[field] = value
        return validate(parse_config(data))

    started = config()
    experiment = experiment_dir(started)
    write_sweep_file(experiment, started)
    (experiment / STATE_FILE).write_bytes(b"")
    results = str(experiment / "results")
    moved = config(("run.storage_path", os.path.relpath(tmp_path / "runs")), ("evaluation.actors", 1),
                   ("run.keep_optimizer_states", 2), ("distributed.cpus_per_worker", 0.5))
    assert finished_sweep(moved, experiment, results, ["val_loss"], resume=True) is None
    changed = config(("sweep.num_samples", 7), ("instruct.train.learning_rate", 1e-4))
    with pytest.raises(ConfigError) as resumed:
        finished_sweep(changed, experiment, results, ["val_loss"], resume=True)
    assert str(resumed.value) == ("--resume: sweep s was started with another config (instruct.train.learning_rate: "
                                  "2e-05 -> 0.0001; sweep.num_samples: 6 -> 7): resume it with that one (its "
                                  "sweep.json holds it) or choose another sweep.name")
    with pytest.raises(ConfigError, match=r"^sweep.name: s already exists at .*, started with another config "
                                          r"\(instruct.train.learning_rate: 2e-05 -> 0.0001; sweep.num_samples"):
        finished_sweep(changed, experiment, results, ["val_loss"], resume=False)
