"""A real multi-node Ray cluster on this machine: a head and two worker nodes, separate raylets.

A sweep runs across it while a worker node is killed under a training trial, and an evaluation
actor is killed mid-job; everything finishes and every result row is written exactly once.
"""

import os
import shutil
import tempfile
import threading
import time

import pytest

from classit.config import parse_config
from classit.evaluate.actors import EvaluationPool
from classit.evaluate.jobs import EvalJob
from classit.results import read_table
from classit.sweep.runner import run_sweep
from conftest import actors, remove_ray_folder
from test_eval_pool import make_data_dir
from test_sweep_ray import sweep_config


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    from classit.ray_session import RAY_JOB_ENV, local_ray_processes

    for key, value in RAY_JOB_ENV.items():
        os.environ.setdefault(key, value)
    temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    # Ray keeps its sessions, and the cluster its address file, in $RAY_TMPDIR/ray (by default
    # /tmp/ray, which a fresh machine lacks): here, inside this fixture's own folder.
    previous_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    c = Cluster()  # the head is added inside the try, so a failed start is shut down too
    try:
        # The head holds no CPU (like cluster.yaml's): training and evaluation go to the workers.
        c.add_node(num_cpus=0, include_dashboard=True)
        c.connect()
        workers = [c.add_node(num_cpus=2, resources={"train_slot": 2, "eval_slot": 2}) for _ in range(2)]
        c.wait_for_nodes()
        yield c, workers
    finally:
        started = local_ray_processes()  # every node's, before their shutdown
        ray.shutdown()
        c.shutdown()
        if previous_tmpdir is None:
            os.environ.pop("RAY_TMPDIR")
        else:
            os.environ["RAY_TMPDIR"] = previous_tmpdir
        remove_ray_folder(temp_dir, started)


def test_sweep_survives_losing_the_node_a_trial_trains_on(cluster, tmp_path):
    c, workers = cluster
    config = sweep_config(tmp_path, name="nodeloss", space={"curriculum": {"choice": ["switch_wiki", "wiki_switch"]}})
    config["instruct"]["datasets"] = {"switch": {"synthetic": "conversation", "max_records": 240},
                                      "wiki": {"synthetic": "qa", "max_records": 240}}
    config["instruct"]["train"].update(epochs=4, checkpoints={"schedule": "babylm", "word_scale": 0.002})
    config["distributed"].update(num_workers=2, worker_resources={"train_slot": 1}, max_failures=3)
    config["evaluation"].update(actor_resources={"eval_slot": 1})
    metrics_dir = tmp_path / "runs" / "nodeloss" / "results" / "train_metrics"
    killed = {}

    def registered_checkpoint() -> tuple[str, str, int] | None:
        """(run, stage, step) of a checkpoint Ray Train has registered for certain: rows are written
        just before each report, and a report returns only once the controller has taken the one
        before, so two evaluations' rows written after a checkpoint mean its report was taken."""
        if not list(metrics_dir.glob("part-*.parquet")):
            return None
        evaluated = read_table(str(metrics_dir)).dropna(subset=["val_loss"])
        for folder in sorted((tmp_path / "runs").glob("nodeloss-*/*-step*-words*")):
            stage, step = folder.name.split("-step")[0], int(folder.name.split("-step")[1].split("-")[0])
            run = folder.parent.name
            later = evaluated[(evaluated["trial"] == run) & (evaluated["stage"] == stage) & (evaluated["step"] > step)]
            if len(later) >= 2:
                return run, stage, step
        return None

    def kill_a_training_node():
        deadline = time.time() + 600
        while time.time() < deadline and not (actors("RayTrainWorker") and (found := registered_checkpoint())):
            time.sleep(0.2)
        node_id = actors("RayTrainWorker")[0].node_id
        victim = next(w for w in workers if w.node_id == node_id)
        killed["run"], killed["stage"], killed["step"] = found
        killed["time"] = time.time()
        c.remove_node(victim, allow_graceful=False)
        killed["node"] = node_id

    killer = threading.Thread(target=kill_a_training_node, daemon=True)
    killer.start()
    board = run_sweep(parse_config(config), log=lambda _: None)
    killer.join(60)

    assert killed.get("node"), "no training node was killed"
    assert len(board) == 2 and board["val_loss"].notna().all()  # every planned trial finished
    trials = read_table(str(tmp_path / "runs" / "nodeloss" / "results" / "trials"))
    assert len(trials) == 2 and trials["trial"].is_unique  # each trial exactly once
    scores = read_table(str(tmp_path / "runs" / "nodeloss" / "results" / "eval_scores"))
    assert not scores.duplicated(["trial", "checkpoint", "task", "subtask", "metric"]).any()
    assert (scores["error"] == "").all() and set(scores["trial"]) == set(trials["trial"])
    metrics = read_table(str(metrics_dir))
    interrupted = metrics[metrics["trial"] == killed["run"]]
    assert set(interrupted["stage"]) == {"switch", "wiki"} and not interrupted.duplicated(["stage", "step"]).any()
    # It resumed from its newest registered checkpoint: what it trained up to that checkpoint (the
    # stages before, the killed stage's steps up to it) was not trained again, so those rows are
    # the ones written before the kill; the steps after it were trained (and written) again.
    killed_index = interrupted.loc[interrupted["stage"] == killed["stage"], "stage_index"].iloc[0]
    kept = interrupted[(interrupted["stage_index"] < killed_index)
                       | ((interrupted["stage_index"] == killed_index) & (interrupted["step"] <= killed["step"]))]
    assert len(kept) and (kept["time"] < killed["time"]).all(), kept[["stage", "step", "time"]]
    assert (interrupted["time"] > killed["time"]).any()


def test_killed_evaluation_actor_job_is_retried_once(cluster, tmp_path):
    import ray
    from ray.util.state import list_tasks

    from conftest import SHARED_DATA, train_tiny_checkpoint

    checkpoint = train_tiny_checkpoint(tmp_path / "train")
    data = make_data_dir(tmp_path)
    for path in sorted((SHARED_DATA / "blimp").glob("*.jsonl"))[:6]:  # a job that takes a few seconds
        shutil.copy(path, data / "blimp" / path.name)
    jobs = [EvalJob(str(checkpoint), task, str(data), trial="t") for task in ("blimp", "blimp_supplement")]
    pool = EvaluationPool(num_actors=2, num_cpus=0, resources={"eval_slot": 1})
    original = {a._actor_id.hex(): a for a in pool.actors}
    killed = []

    def kill_a_busy_actor():  # as soon as an actor is running a job
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for task in list_tasks(address=cluster[0].address, filters=[("func_or_class_name", "=", "Evaluator.run"),
                                                                        ("state", "=", "RUNNING")]):
                if task.actor_id in original:
                    ray.kill(original[task.actor_id])
                    killed.append(task.actor_id)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_busy_actor, daemon=True)
    killer.start()
    results_dir = str(tmp_path / "eval_scores")
    try:
        rows = pool.run(jobs, results_dir=results_dir)
    finally:
        killer.join(60)
        pool.shutdown()
    assert killed and killed[0] not in {a._actor_id.hex() for a in pool.actors}  # replaced by a fresh actor
    table = read_table(results_dir)
    assert len(table) == len(rows) and not table.duplicated(["trial", "task", "subtask", "metric"]).any()
    assert set(table.loc[table["subtask"] == "average", "task"]) == {"blimp", "blimp_supplement"}
    assert (table["error"] == "").all()
