"""Experiment tracking for sweeps: Ray Tune's MLflow, Weights & Biases and TensorBoard logger
callbacks, one tracker run per trial with its parameters, its training steps and its scores.

Tune hears from a trial at validation and checkpoint reports only (reporting every step would
throttle training). The training steps logged in between ride along in the next report as
`tracked_steps` (rank 0 keeps them), and the trial's last report carries each evaluated
checkpoint's scores the same way, so no worker talks to a tracker and one run holds everything.
The callbacks (`trackers.py`) log those steps one by one, then the report itself, each entry at its
exposure words (the BabyLM x-axis, as Tune's `timesteps_total`). They are imported only for a config
that names a tracker: MLflow's and W&B's packages take ~2 s of CPU to import.
"""

from __future__ import annotations

import importlib.util
import json
import os

from classit.config import ClassitConfig, ConfigError
from classit.sweep.plan import experiment_dir
from classit.train.runner import TRACKED_STEPS

PACKAGES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}


def check_trackers(cfg: ClassitConfig) -> None:
    """A named tracker whose package is missing fails here, before Ray starts."""
    for name, package in PACKAGES.items():
        if getattr(cfg.tracking, name) is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"tracking.{name}: the {package} package is not installed "
                              f"(pip install 'classit[{name}]')")


def log_entries(result: dict) -> list[dict]:
    """What one Tune result is logged as: each step it carries, then the result itself."""
    steps = json.loads(result.get(TRACKED_STEPS) or "[]")
    rest = {k: v for k, v in result.items() if k != TRACKED_STEPS}
    return [*steps, rest]


def tracking_callbacks(cfg: ClassitConfig) -> list:
    """The Tune callbacks for the config's trackers (none by default)."""
    tracking, name = cfg.tracking, cfg.sweep.name
    if all(getattr(tracking, tracker) is None for tracker in PACKAGES):
        return []
    from classit.sweep.trackers import MLflowTracker, TensorBoardTracker, WandbTracker

    callbacks = []
    if tracking.mlflow is not None:
        callbacks.append(MLflowTracker(tracking_uri=tracking.mlflow.tracking_uri,
                                       experiment_name=tracking.mlflow.experiment or name, tags={"sweep": name}))
    if tracking.wandb is not None:
        if tracking.wandb.mode != "online":  # Ray asks for an API key unless the mode says none is needed
            os.environ["WANDB_MODE"] = tracking.wandb.mode
        # Runs written straight into a local sweep folder (Tune's copy of a trial's folder can be
        # taken before W&B has finished writing): `wandb sync <storage>/<sweep>/wandb/offline-run-*`.
        local = "://" not in cfg.run.storage_path
        callbacks.append(WandbTracker(project=tracking.wandb.project, group=tracking.wandb.group or name,
                                      mode=tracking.wandb.mode, **({"dir": str(experiment_dir(cfg))} if local else {})))
    if tracking.tensorboard is not None:
        callbacks.append(TensorBoardTracker())
    return callbacks
