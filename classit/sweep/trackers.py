"""Tune's MLflow, Weights & Biases and TensorBoard logger callbacks, each logging the training steps
and scores a result carries one by one (`tracking.log_entries`)."""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
from ray.tune.logger import TBXLoggerCallback

from classit.sweep.tracking import log_entries


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
