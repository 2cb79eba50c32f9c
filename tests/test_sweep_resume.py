"""Kill a sweep's driver after some trials finish; `--resume` completes it without rerunning any."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from classit.config import parse_config
from classit.results import read_table
from classit.sweep.space import grid_trials
from classit.sweep.trial import trial_key
from test_sweep_ray import sweep_config

REPO = Path(__file__).resolve().parents[1]


def ray_processes(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    config = sweep_config(tmp_path, name="resumable", space={"curriculum": {"choice": ["switch", "wiki", "merged"]}})
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    # This test's own Ray session folders (short: socket paths are limited), so its processes can be found.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    try:
        run_kill_and_resume(config, tmp_path, ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_kill_and_resume(config: dict, tmp_path: Path, ray_tmp: Path) -> None:
    path = tmp_path / "sweep.yaml"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    command = [sys.executable, str(REPO / "sweeps" / "curriculum_sweep.py"), "--config", str(path)]
    trials_dir = str(tmp_path / "runs" / "resumable" / "results" / "trials")

    driver = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None and len(read_table(trials_dir)) < 1:
        time.sleep(1)
    assert driver.poll() is None, "the sweep ended before it could be interrupted"
    finished_before = set(read_table(trials_dir)["trial"])
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    for _ in range(30):  # Ray's local processes share the driver's fate
        if not ray_processes(str(ray_tmp)):
            break
        time.sleep(1)
    leftover = ray_processes(str(ray_tmp))
    for line in leftover:
        os.kill(int(line.split()[0]), signal.SIGKILL)
    assert not leftover, leftover

    resumed = subprocess.run([*command, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "leaderboard (3 trials" in resumed.stdout

    trials = read_table(trials_dir)
    planned = {trial_key(p) for p in grid_trials(parse_config(config))}
    assert set(trials["trial"]) == planned and len(trials) == len(planned)  # each finished once
    metrics = read_table(str(tmp_path / "runs" / "resumable" / "results" / "train_metrics"))
    for key in finished_before:  # a trial finished before the kill never trained again
        runs = metrics[metrics["trial"] == f"resumable-{key}"]
        assert (runs.groupby("stage")["step"].apply(lambda s: (s == 0).sum()) == 1).all()
    assert len(finished_before) >= 1 and not ray_processes(str(ray_tmp))
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stdout  # a finished sweep is not rerun
