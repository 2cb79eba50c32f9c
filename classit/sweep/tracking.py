"""Experiment tracking for sweeps: Ray Tune's MLflow, Weights & Biases and TensorBoard logger
callbacks, one tracker run per trial with its parameters, its training steps and its scores.

Tune hears from a trial at validation and checkpoint reports only (reporting every step would
throttle training). The training steps logged in between ride along in the next report as
`tracked_steps` (rank 0 keeps them), and the trial's last report carries each evaluated
checkpoint's scores the same way, so no worker talks to a tracker and one run holds everything.
The callbacks here log those steps one by one, then the report itself, each entry at its
exposure words (the BabyLM x-axis, as Tune's `timesteps_total`).
"""

from __future__ import annotations

import json
import os

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
from ray.tune.logger import TBXLoggerCallback

from classit.config import ClassitConfig
from classit.sweep.plan import experiment_dir
from classit.train.runner import TRACKED_STEPS

def log_entries(result: dict) -> list[dict]:
    """What one Tune result is logged as: each step it carries, then the result itself."""
    steps = json.loads(result.get(TRACKED_STEPS) or "[]")
    rest = {k: v for k, v in result.items() if k != TRACKED_STEPS}
    return [*steps, rest]


class StepwiseLogging:
    """For a Tune logger callback: log a result's carried steps, then the result, each at its
    exposure words; `training_iteration` counts the entries, so trackers that key rows by it
    (W&B) keep every step."""

    def log_trial_result(self, iteration: int, trial, result: dict):
        counts = self.__dict__.setdefault("_entries_logged", {})
        for entry in log_entries(result):
            counts[trial.trial_id] = counts.get(trial.trial_id, 0) + 1
            entry = {**entry, "training_iteration": counts[trial.trial_id]}
            if entry.get("exposure_words") is not None:
                entry["timesteps_total"] = int(entry["exposure_words"])
            super().log_trial_result(iteration, trial, entry)


class MLflowTracker(StepwiseLogging, MLflowLoggerCallback):
    pass


class WandbRunWriter(_WandbLoggingActor):
    """Tune's W&B logging actor, returning only once W&B's service process has written the run:
    `wandb.finish()` returns before it has, and Tune kills the actor as soon as `run` returns.
    At a sweep's end that kill came within milliseconds and the last trial's run file kept no
    history (earlier trials' actors are killed at the next trial's end, seconds later)."""

    def run(self):
        super().run()
        self._wandb.teardown()  # waits for the service process to finish every run and exit


class WandbTracker(StepwiseLogging, WandbLoggerCallback):
    _logger_actor_cls = WandbRunWriter


class TensorBoardTracker(StepwiseLogging, TBXLoggerCallback):
    pass


def tracking_callbacks(cfg: ClassitConfig) -> list:
    """The Tune callbacks for the config's trackers (none by default)."""
    tracking, name = cfg.tracking, cfg.sweep.name
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
