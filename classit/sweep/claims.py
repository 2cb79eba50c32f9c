"""Which trial parameters are being trained, for a sweep's trials and its driver.

A search can draw parameters again while their first trial still runs (Optuna's TPE returning to
`pt`, which has no learning rate to vary); that twin would train the same run in the same folder
beside it. It claims the parameters first and waits instead, then reports the first one's row like
a trial of a resumed sweep. Apart from `services.py` because the driver's callback loads Ray Tune,
which the other services' actors do without.
"""

from __future__ import annotations

import asyncio

import ray
from ray import tune


@ray.remote(num_cpus=0)
class TrialClaims:
    def __init__(self):
        self.holders: dict[str, str] = {}  # trial key -> the Tune trial training it
        self.changed = asyncio.Condition()

    async def claim(self, key: str, trial_id: str) -> None:
        """Returns once no other Tune trial holds `key` (the same trial, retried, holds it still)."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.holders.get(key, trial_id) == trial_id)
            self.holders[key] = trial_id

    async def release(self, trial_id: str) -> None:
        async with self.changed:
            self.holders = {key: holder for key, holder in self.holders.items() if holder != trial_id}
            self.changed.notify_all()


def claims_name(sweep_name: str) -> str:
    return f"classit-claims-{sweep_name}"


class ReleaseClaims(tune.Callback):
    """The driver's side of `TrialClaims`: a trial's claim ends when Tune sees the trial end, with
    its row written or with an error, also when its process died (retries keep the claim)."""

    def __init__(self, sweep_name: str):
        self.sweep_name = sweep_name

    def on_trial_complete(self, iteration, trials, trial, **info):
        ray.get_actor(claims_name(self.sweep_name)).release.remote(trial.trial_id)

    on_trial_error = on_trial_complete
