"""`ray_session`: a local Ray started for a command leaves nothing of its own behind in $TMPDIR, and
its processes are told from the caller's own."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

SCRIPT = """
import json, multiprocessing, os

import psutil

from classit.ray_session import local_ray_processes, ray_session

def forkserver_folders():
    return sorted(name for name in os.listdir(os.environ["TMPDIR"]) if name.startswith("pymp-"))

with multiprocessing.get_context("forkserver").Pool(1) as pool:  # the caller's own forkserver, kept running
    pool.map(abs, [1])
before = forkserver_folders()
own = {p.pid for p in psutil.Process().children(recursive=True)}  # the forkserver, its resource tracker
with ray_session(num_cpus=1, include_dashboard=True):  # Ray's dashboard starts a forkserver of its own
    during = forkserver_folders()
    ray_processes = {p.pid: p.name() for p in local_ray_processes()}
print(json.dumps({"before": before, "during": during, "after": forkserver_folders(), "own": len(own),
                  "ray": sorted(set(ray_processes.values())), "own_as_ray": sorted(own & set(ray_processes))}))
"""


def test_a_local_ray_leaves_no_forkserver_folder_and_the_callers_own_is_kept_apart():
    temp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths (Ray's own folder) live under it
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, "TMPDIR": temp},
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = json.loads(done.stdout.strip().splitlines()[-1])
    # Ray kills its dashboard's forkserver at shutdown, before it can remove its folder.
    assert len(folders["before"]) == 1 and len(folders["during"]) == 2
    assert folders["after"] == folders["before"]
    # Ray's processes (what the tests' Ray fixture waits for at shutdown) hold none of the caller's.
    assert folders["own"] >= 1 and folders["own_as_ray"] == []
    assert {"gcs_server", "raylet"} <= set(folders["ray"]), folders["ray"]


def test_what_a_job_holds_at_once_is_checked_against_the_machine_naming_who_asks():
    import pytest

    from classit.config import ConfigError, parse_config
    from classit.ray_session import check_fits

    cfg = parse_config({"evaluation": {"cpus_per_actor": 1}})  # 2 workers x 1 CPU beside 2 actors x 1 CPU
    holds = [cfg.distributed.held(), cfg.evaluation.held()]
    check_fits(holds, {"CPU": 4.0})
    with pytest.raises(ConfigError) as err:
        check_fits(holds, {"CPU": 3.0, "GPU": 1.0})
    assert str(err.value) == (
        "4 CPU needed at once: 2 by distributed (num_workers 2, cpus_per_worker 1), 2 by evaluation (actors 2, "
        "cpus_per_actor 1, gpus_per_actor 0); the Ray started on this machine has 3 (ask for less, or pass "
        "--address of a cluster that has them)")
    gpus = parse_config({"distributed": {"use_gpu": True, "worker_resources": {"train_node": 1}},
                         "evaluation": {"cpus_per_actor": 0, "gpus_per_actor": 0.5}})
    holds = [gpus.distributed.held(), gpus.evaluation.held()]
    with pytest.raises(ConfigError, match=r"^3 GPU needed at once: 2 by distributed \(.*use_gpu\), 1 by evaluation"):
        check_fits(holds, {"CPU": 8.0, "GPU": 2.0, "train_node": 2.0})
    with pytest.raises(ConfigError, match=r"^2 train_node needed at once: 2 by distributed .* has 0 "):
        check_fits(holds, {"CPU": 8.0, "GPU": 3.0})


def test_a_sweep_that_asks_more_than_this_machine_has_ends_in_one_line_and_leaves_no_ray(tmp_path):
    """Not a wait forever for cores that will never come: the check runs on the Ray the sweep started."""
    from pathlib import Path

    from conftest import ray_processes_left

    repo = Path(__file__).resolve().parents[1]
    ray_tmp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    try:
        done = subprocess.run(
            [sys.executable, str(repo / "sweeps" / "curriculum_sweep.py"), "--set", "corpus.synthetic.sentences=2000",
             "--set", f"distributed.cpus_per_worker={os.cpu_count()}", "--set", f"run.storage_path={tmp_path / 'runs'}",
             "--set", f"run.cache_dir={tmp_path / 'cache'}"],
            env={**os.environ, "RAY_TMPDIR": ray_tmp}, capture_output=True, text=True, timeout=300)
        left = ray_processes_left(ray_tmp, seconds=10)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    cores = os.cpu_count()
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"classit: error: {2 * cores} CPU needed at once: {2 * cores} by distributed (num_workers 2, cpus_per_worker "
        f"{cores}); the Ray started on this machine has {cores} (ask for less, or pass --address of a cluster that "
        f"has them)")
    assert left == []
