"""Starting Ray the way every classit command and test needs it: one place for the job settings."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from classit.config import ConfigError

# Ray Train's controller takes a worker's report, checkpoint included, on its health-check tick
# (2 s by default) and the worker waits for it: a quarter second keeps training from idling.
# Its preemption watcher only logs node drains (a worker lost is retried by `max_failures`
# anyway), yet costs an actor per run and prints an error line when it starts.
# Tune moves each trial into a folder of Ray's session by default: a relative path of the config
# (`run.storage_path: runs`, a dataset file) would then lead there, checkpoints would be written
# into Ray's temporary files and inputs not found. Trials keep the job's working directory, as
# every other process of the job does.
RAY_JOB_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
               "RAY_CHDIR_TO_TRIAL_DIR": "0"}


@contextmanager
def ray_session(address: str | None = None, quiet: bool = False, holds: list[tuple[str, dict[str, float]]] = (),
                **kwargs):
    """Start (or join) Ray with the job settings classit's training needs; shut it down afterwards.
    `quiet`: the driver's console keeps classit's lines only (no worker output, no "Started a local Ray").
    `holds`: what the job holds at once (a training run's workers, the evaluation actors), each named
    by the fields that ask for it; checked against a Ray this process started (`check_fits`)."""
    import logging

    import ray

    if quiet:
        kwargs = {"log_to_driver": False, "logging_level": logging.WARNING, **kwargs}

    # Ray Train passes these from the driver's environment to its controller and workers.
    for key, value in RAY_JOB_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():  # already connected (a notebook, a test): use it, leave it running
        yield
        return
    ray.init(address=address, **kwargs)
    try:
        if started_here():
            check_fits(holds, ray.cluster_resources())
        yield
    finally:
        leftovers = forkserver_folders()
        ray.shutdown()
        for folder in leftovers:
            shutil.rmtree(folder, ignore_errors=True)


def started_here() -> bool:
    """Whether this process started the Ray it is connected to (Ray's GCS is its child) rather than
    joined one: with no address, `ray.init()` also joins a cluster `ray start` left running here."""
    import psutil

    return any(child.name() == "gcs_server" for child in psutil.Process().children())


def check_fits(holds: list[tuple[str, dict[str, float]]], have: dict[str, float]) -> None:
    """A Ray started by this command is this machine alone, and nothing will join it: a job that holds
    more than it has would wait forever (Ray only logs that it cannot schedule it). One line instead."""
    for resource in dict.fromkeys(name for _, held in holds for name in held):
        parts = [(amount, what) for what, held in holds if (amount := held.get(resource, 0.0))]
        needed = sum(amount for amount, _ in parts)
        if needed > have.get(resource, 0.0) + 1e-9:
            raise ConfigError(f"{needed:g} {resource} needed at once: "
                              + ", ".join(f"{amount:g} by {what}" for amount, what in parts)
                              + f"; the Ray started on this machine has {have.get(resource, 0.0):g} "
                                f"(ask for less, or pass --address of a cluster that has them)")


def local_ray_processes() -> list:
    """The processes of the local Ray this process started: its node processes (GCS, raylet,
    dashboard, ...: their command lines name Ray's files) and every process they started. A process
    of the caller's own (a multiprocessing helper, a subprocess) is not among them."""
    import psutil

    processes = []
    for node_process in psutil.Process().children():
        try:
            if any("/ray/" in word for word in node_process.cmdline()):
                processes += [node_process, *node_process.children(recursive=True)]
        except psutil.Error:  # gone meanwhile
            continue
    return processes


def forkserver_folders() -> set[Path]:
    """The folders (`$TMPDIR/pymp-*`) of the multiprocessing forkservers that the local Ray this
    process started runs (its dashboard starts one): killed with Ray, they never remove their own."""
    import psutil

    folders = set()
    for process in local_ray_processes():
        try:
            folders |= {Path(s.laddr).parent for s in process.net_connections(kind="unix")
                        if Path(s.laddr).parent.name.startswith("pymp-")}
        except psutil.Error:  # gone meanwhile
            continue
    return folders
