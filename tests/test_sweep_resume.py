"""Kill a sweep's driver after some trials finish; `--resume` completes it without rerunning any.
The same sweeps check the console: quiet when captured, Ray's and the workers' lines back with `--verbose`.
And `classit pretrain` stopped with Ctrl-C, then resumed by the same command."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from ray.train import Result

from classit.config import parse_config
from classit.results import read_table
from classit.sweep.space import grid_trials
from classit.sweep.status import sweep_status
from classit.sweep.trial import trial_key
from classit.train.checkpoints import load_trainer_state
from conftest import ray_processes, ray_processes_left
from test_sweep_ray import sweep_config

REPO = Path(__file__).resolve().parents[1]


def test_a_killed_tpe_driver_resumes_its_optuna_study_without_rerunning_finished_trials(tmp_path, shared):
    import optuna

    from classit.sweep.search import optuna_journal

    config = sweep_config(shared, name="resumable", search="tpe", num_samples=3,
                          space={"curriculum": {"choice": ["switch", "wiki", "merged"]},
                                 "learning_rate": {"loguniform": [5e-4, 5e-3]}})
    # Paths relative to the driver's working directory, as the demo's config has them.
    config["run"].update(storage_path="runs", cache_dir="cache")
    finished_before, _, resumed, storage, resumed_at = stop_and_resume(config, tmp_path, finished=2, cwd=shared)
    assert "leaderboard (3 trials" in resumed.stdout

    # Every trial is in the Optuna study once, none left RUNNING, and the resumed sampler saw the
    # trials from before the kill.
    in_shared = {**config, "run": {"storage_path": str(storage), "cache_dir": str(shared / "cache")}}
    study = optuna.load_study(study_name="resumable", storage=optuna_journal(parse_config(in_shared)))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    drawn = [trial_key({**t.params, "seed": 0}) for t in study.trials]
    assert len(set(drawn)) == 3 and set(drawn[:2]) == finished_before
    assert_quiet_console(resumed.stdout + resumed.stderr, set(drawn) - finished_before, set(drawn))

    trials = read_table(str(storage / "resumable" / "results" / "trials"))
    assert sorted(trials["trial"]) == sorted(drawn) and (trials["status"] == "finished").all()  # each finished once
    # Every checkpoint under the storage folder the config names, none in a Ray session's files.
    assert all(Path(c).is_relative_to(storage) for c in trials["checkpoint"]), list(trials["checkpoint"])
    by_key = trials.set_index("trial")
    assert [t.value for t in study.trials] == pytest.approx([by_key.loc[k, "blimp:average:accuracy"] for k in drawn])
    assert_not_retrained(storage / "resumable", finished_before, resumed_at)
    scores = read_table(str(storage / "resumable" / "results" / "eval_scores"))
    assert set(scores["trial"]) == set(drawn)  # every trial scored, each row once, re-run evaluations included
    assert not scores.duplicated(["trial", "checkpoint", "task", "subtask", "metric"]).any()
    status = subprocess.run([sys.executable, "-m", "classit.cli", "status", str(storage / "resumable")],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("sweep resumable: 3 trials planned: 3 finished\n")
    # Nothing left to run: the driver is gone and the sweep ended, no --resume to suggest.
    assert re.search(r"^driver pid \d+ on .+: ended; elapsed", status.stdout, re.MULTILINE), status.stdout
    assert "--resume" not in status.stdout and "best blimp:average:accuracy" in status.stdout
    command = sweep_command(tmp_path / "sweep.yaml")
    again = subprocess.run(command, cwd=shared, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stdout  # a finished sweep is not rerun


# Ray's prefix on a worker's forwarded output, colored or not.
WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+", re.MULTILINE)


def assert_quiet_console(output: str, must_finish: set[str], planned: set[str]) -> None:
    """Captured (not a terminal): no Ray worker output, no progress bars, no Ray or Tune INFO lines,
    one line per trial finished (a resumed sweep may finish again one whose row it had)."""
    assert "core_worker" not in output and not WORKER_LINE.search(output), output[-3000:]
    assert not re.search(r"\d+%\|", output) and "examples/s" not in output  # no progress bars
    finished = re.findall(r"^trial (\w+) scored and finished: blimp:average:accuracy [\d.]+", output, re.MULTILINE)
    assert len(finished) == len(set(finished)) and must_finish <= set(finished) <= planned, output[-3000:]
    assert re.search(r"^base tiny: reused ", output, re.MULTILINE), output[-3000:]  # built before the kill
    assert "Wrote the latest version" not in output  # Tune's INFO lines
    assert "Started a local Ray instance" not in output and "A new study created" not in output


def sweep_command(path: Path) -> list[str]:
    return [sys.executable, str(REPO / "sweeps" / "curriculum_sweep.py"), "--config", str(path)]


def stop_and_resume(config: dict, tmp_path: Path, finished: int, cwd: Path, stop: int = signal.SIGKILL):
    """Run the sweep in a driver process (in `cwd`), send `stop` to its process group (SIGINT: what
    Ctrl-C in a terminal sends) once `finished` trials have rows, check no Ray process outlives it,
    and resume; returns the trials finished before the stop, the stopped and the resumed runs'
    CompletedProcess and the storage folder."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    storage = cwd / config["run"]["storage_path"]
    trials_dir = str(storage / config["sweep"]["name"] / "results" / "trials")
    # This test's own Ray session folders (short: socket paths are limited), so its processes can be found.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    command = sweep_command(path)
    try:
        with open(tmp_path / "stopped.out", "w+") as out, open(tmp_path / "stopped.err", "w+") as err:
            driver = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True, stdout=out, stderr=err)
            deadline = time.time() + 900
            while time.time() < deadline and driver.poll() is None and len(read_table(trials_dir)) < finished:
                time.sleep(0.5)
            assert driver.poll() is None, "the sweep ended before it could be stopped"
            os.killpg(driver.pid, stop)
            driver.wait(timeout=300)
            out.seek(0), err.seek(0)
            stopped = subprocess.CompletedProcess(command, driver.returncode, out.read(), err.read())
        finished_before = set(read_table(trials_dir)["trial"])
        # `classit status` from the files alone: the trials that ended, none still running.
        status = sweep_status(storage / config["sweep"]["name"])
        counts = status["counts"]
        assert counts["finished"] == len(finished_before) and counts["running"] == 0
        assert counts["stopped"] == 0  # a trial cut short is interrupted, not stopped early (as by ASHA)
        assert sum(counts.values()) == status["planned"] and status["driver_alive"] is False
        # Ray's local processes share the driver's fate (a worker can take a minute).
        leftover = ray_processes_left(str(ray_tmp), seconds=90)
        for line in leftover:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        assert not leftover, leftover

        resumed_at = time.time()
        resumed = subprocess.run([*command, "--resume"], env=env, cwd=cwd, capture_output=True, text=True,
                                 timeout=900)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert len(finished_before) >= finished and not ray_processes(str(ray_tmp))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return finished_before, stopped, resumed, storage, resumed_at


def assert_not_retrained(experiment: Path, finished_before: set[str], resumed_at: float) -> None:
    """A trial finished before the kill never trained again: its rows (a run trained again would
    replace them) are all from before the resume, one per step."""
    metrics = read_table(str(experiment / "results" / "train_metrics"))
    for key in finished_before:
        runs = metrics[metrics["trial"] == f"{experiment.name}-{key}"]
        assert len(runs) and (runs["time"] < resumed_at).all() and not runs.duplicated(["stage", "step"]).any()


def test_ctrl_c_saves_the_sweep_names_resume_and_exits_130_and_resume_finishes_it(tmp_path, shared):
    config = sweep_config(shared, name="ctrl-c", space={"curriculum": {"choice": ["pt", "switch"]}})
    planned = {trial_key(p) for p in grid_trials(parse_config(config))}
    finished_before, stopped, resumed, storage, resumed_at = stop_and_resume(
        config, tmp_path, finished=1, cwd=tmp_path, stop=signal.SIGINT)
    assert stopped.returncode == 130, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    # "0 of 2" when the stop lands between the first trial's row and Tune's receipt of its last
    # report: Tune then stops it as running, and the resumed sweep reports its row without training.
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"classit: interrupted: sweep ctrl-c: [01] of 2 trials ended; Tune saved its state in "
                        r"\S+/ctrl-c: the same command with --resume continues it", last_line), last_line
    assert "Tuner.restore" not in stopped.stdout + stopped.stderr  # Tune's hint names its Python API, not the CLI
    assert "leaderboard (1 trials" in stopped.stdout  # what ended so far
    # The trial the stop cut short has no row (it is not over: no `stopped` as if ASHA had stopped it).
    assert len(finished_before) == 1
    trials = read_table(str(storage / "ctrl-c" / "results" / "trials"))
    assert sorted(trials["trial"]) == sorted(planned) and (trials["status"] == "finished").all()
    assert_not_retrained(storage / "ctrl-c", finished_before, resumed_at)


def test_a_corrupt_final_checkpoint_ends_eval_failed_and_the_sweep_exits_non_zero(tmp_path, shared):
    config = sweep_config(shared, name="broken", space={"curriculum": {"choice": ["switch"]}})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    command = sweep_command(path)
    try:
        # --verbose brings back what the console keeps out by default (assert_quiet_console).
        first = subprocess.run([*command, "--verbose"], env=env, cwd=tmp_path, capture_output=True, text=True,
                               timeout=900)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert WORKER_LINE.search(first.stdout + first.stderr) and "Started a local Ray instance" in first.stdout + first.stderr
        key = trial_key(grid_trials(parse_config(config))[0])
        # The trial's training run stays; its final checkpoint's weights are damaged, and the sweep
        # is started afresh: the trial finds its run finished and hands that checkpoint to evaluation.
        final = max((shared / "runs" / f"broken-{key}").glob("switch-step*"))
        (final / "model.safetensors").write_bytes(b"not a safetensors file")
        shutil.rmtree(shared / "runs" / "broken")
        second = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    last_line = second.stderr.strip().splitlines()[-1]
    assert last_line.startswith("classit: error: evaluation failed for trial(s)") and key in last_line
    trials = read_table(str(shared / "runs" / "broken" / "results" / "trials"))
    assert trials["status"].tolist() == ["eval_failed"] and trials["error"].iloc[0]  # the reason, from the error rows
    assert f"{key}  eval_failed" in second.stdout  # on the leaderboard too


def registered_checkpoint(run: Path):
    """The checkpoint Ray Train would resume `run` from: the newest its snapshot file names. A
    checkpoint folder on disk is not yet one: the workers write it before the controller registers it."""
    try:
        return Result.from_path(run).checkpoint
    except (RuntimeError, ValueError):  # no snapshot yet, or read while it is being written
        return None


def test_ctrl_c_stops_classit_pretrain_with_130_naming_the_checkpoint_the_same_command_resumes_from(tmp_path):
    """Ray Train's own Ctrl-C handler ends the driver with a bare exit 1; classit makes it the
    interruption it is and names what resumes it, which a rerun then does."""
    config = {"corpus": {"synthetic": {"sentences": 3000, "seed": 1}, "block_size": 64, "num_proc": 1},
              # Long enough to be stopped; a mark every 10k words, the first ~25 steps in.
              "pretrain": {"batch_size": 8, "max_steps": 5000, "eval_every_steps": 1000,
                           "checkpoints": {"word_scale": 0.01}},
              "distributed": {"num_workers": 1},
              # Relative to the command's working directory, as the demo's config has them.
              "run": {"name": "stopped", "storage_path": "runs", "cache_dir": "cache"}}
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "runs" / "stopped"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    command = [sys.executable, "-m", "classit.cli", "pretrain", "--config", str(path)]
    try:
        with open(tmp_path / "stopped.err", "w+") as err:
            driver = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.time() + 300
            while time.time() < deadline and driver.poll() is None and registered_checkpoint(run) is None:
                time.sleep(0.25)
            assert driver.poll() is None, "the run ended before it could be stopped"
            os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
            driver.wait(timeout=120)
            err.seek(0)
            stopped = err.read()
        assert driver.returncode == 130, stopped[-3000:]
        last_line = stopped.strip().splitlines()[-1]
        named = re.fullmatch(r"classit: interrupted: pretraining stopped; the same command resumes it from (\S+)",
                             last_line)
        assert named and Path(named.group(1)).parent == run, last_line
        leftover = ray_processes_left(str(ray_tmp), seconds=60)
        assert not leftover, leftover

        # Resumed there, then ended two steps on (a smaller max_steps; run.name keeps the run the same).
        step = load_trainer_state(Path(named.group(1))).step
        resumed = subprocess.run([*command, "--set", f"pretrain.max_steps={step + 2}"], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert f"[pretrain] resumed at step {step} " in resumed.stdout + resumed.stderr
        assert f"step {step + 2}  " in resumed.stdout  # the final line's
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
