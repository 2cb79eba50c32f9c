"""The search a sweep runs: Tune's grid, or Optuna (TPE or random) through Tune's OptunaSearch,
with its study kept in a journal file in the sweep's folder, each draw repeated once per seed, twin
draws let past the concurrency limit, and ASHA when asked for. Imported when a sweep starts (it
loads Ray Tune and Optuna)."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Repeater
from ray.tune.search.optuna import OptunaSearch

from classit.config import ClassitConfig
from classit.evaluate.catalog import objective_key
from classit.sweep.plan import experiment_dir
from classit.sweep.space import DefineByRun, grid_trials
from classit.sweep.trial import FINAL_REPORT, trial_key, trial_params

ASHA_RUNGS_UP_TO = 2 * 4**10  # reports: ASHA's last rung, far past any run's evaluations
OPTUNA_JOURNAL = "optuna.journal"  # a TPE or random sweep's Optuna study, on disk: optuna-dashboard reads it


def tune_setup(cfg: ClassitConfig):
    """param_space and TuneConfig for the chosen search."""
    sweep = cfg.sweep
    objectives = [objective_key(m) for m in sweep.metrics]
    scheduler = None
    if sweep.asha:
        from ray.tune.schedulers import ASHAScheduler

        # Time is the trial's reports (its evaluations and checkpoints), rungs at the 2nd, 8th, 32nd,
        # ... report. A trial is never stopped for reaching ASHA's `max_t` (its default, 100, would
        # stop a long run at its 100th report, unscored): it ends when its curriculum does.
        scheduler = ASHAScheduler(metric="val_loss", mode="min", time_attr="training_iteration", grace_period=2,
                                  max_t=ASHA_RUNGS_UP_TO, stop_last_trials=False)
    # A finished trial's actor runs the next one: no new process importing Tune and classit per trial.
    if sweep.search == "grid":
        return {"params": tune.grid_search(grid_trials(cfg))}, tune.TuneConfig(
            num_samples=1, max_concurrent_trials=sweep.max_concurrent_trials, scheduler=scheduler, reuse_actors=True)
    sampler = (optuna.samplers.TPESampler(seed=sweep.search_seed, multivariate=True) if sweep.search == "tpe"
               else optuna.samplers.RandomSampler(seed=sweep.search_seed))
    curriculum = cfg.instruct.curriculum if isinstance(cfg.instruct.curriculum, str) else "custom"
    # Objectives as lists even when there is one: OptunaSearch then takes only each trial's final
    # result (a single metric would be read from every intermediate report, which carries only the
    # validation loss), and a one-objective study stays a plain single-objective Optuna study.
    search = JournalOptunaSearch(DefineByRun(sweep.space, curriculum), metric=objectives, mode=list(sweep.modes),
                                 sampler=sampler, study_name=sweep.name, storage=optuna_journal(cfg))
    if len(sweep.seeds) > 1:  # the searcher sees the mean over seeds of each draw
        search = SeedRepeater(search, repeat=len(sweep.seeds))
    search = TwinPassingLimiter(search, sweep.max_concurrent_trials, sweep.seeds)
    return {}, tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=sweep.num_samples * len(sweep.seeds),
                                reuse_actors=True)


def optuna_journal(cfg: ClassitConfig):
    """The sweep's Optuna study in a journal file in its folder: the study outlives the driver
    (`--resume` continues it, the searcher's state pointing at the same file), and
    `optuna-dashboard <sweep>/optuna.journal` shows it live."""
    experiment_dir(cfg).mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(experiment_dir(cfg) / OPTUNA_JOURNAL)))


def outcome(result: dict | None, error: bool, objectives: list[str]) -> tuple[list[float] | None, bool]:
    """What Optuna is told of an ended trial: its objective values, from its final report; or None
    and whether it failed (an error, or an objective missing because its evaluation failed: FAIL)
    rather than was stopped early by ASHA (no final report: PRUNED)."""
    final = bool(result and result.get(FINAL_REPORT))
    values = [result.get(o) for o in objectives] if final else []
    if not final or any(v is None or np.isnan(v) for v in values):
        return None, error or final
    return [float(v) for v in values], error


class JournalOptunaSearch(OptunaSearch):
    """OptunaSearch for a study kept in the sweep's journal. Tune snapshots the searcher now and
    then; a driver killed after Optuna was asked for a trial but before the next snapshot leaves
    that trial RUNNING in the journal, unknown to the restored searcher. The next trial Tune asks
    for adopts it (its parameters, hence its training run, resume) instead of asking anew, so the
    study holds every trial once and none stays RUNNING."""

    def suggest(self, trial_id: str):
        if trial_id not in self._ot_trials and self._ot_study is not None:
            known = {trial._trial_id for trial in self._ot_trials.values()}
            running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            orphan = next((t for t in running if t._trial_id not in known), None)
            if orphan is not None:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphan._trial_id)
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        """A trial without objective values is told as PRUNED (stopped early) or FAIL (failed, or
        scored with errors), never left RUNNING: Tune's OptunaSearch would tell a list of objectives
        [None] as COMPLETE, which Optuna refuses, and the trial stays RUNNING in the study."""
        values, failed = outcome(result, error, self.metric)
        if values is None:
            super().on_trial_complete(trial_id, None, error=failed)
        else:
            super().on_trial_complete(trial_id, dict(zip(self.metric, values)), error=error)


class SeedRepeater(Repeater):
    """Tune's Repeater for one or several objectives: each draw runs once per seed, and the
    searcher is told the mean of every objective over the seeds that finished (Repeater handles
    only one objective); a draw none of whose seeds finished is told as failed or stopped early."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        objectives = self.searcher.metric
        group = self._trial_id_to_group[trial_id]
        values, failed = outcome(result, error, objectives)
        group.report(trial_id, {"values": values, "failed": failed})
        if group.finished_reporting():
            ends = group.scores()
            finished = [end["values"] for end in ends if end["values"] is not None]
            if finished:
                means = np.mean(np.array(finished), axis=0)
                result = {**dict(zip(objectives, means)), FINAL_REPORT: True}
                self.searcher.on_trial_complete(group.primary_trial_id, result)
            else:
                self.searcher.on_trial_complete(group.primary_trial_id, None, error=any(end["failed"] for end in ends))


class TwinPassingLimiter(ConcurrencyLimiter):
    """Tune's limit on trials at once (`sweep.max_concurrent_trials`), except for twins: a draw of
    the parameters of a trial still running trains nothing and waits for that trial's row (see
    `claims.py`), so it takes no slot and the next draw starts beside it. (If the first trial then
    fails, its twin trains in its place, one over the limit; Ray's resources still bound the workers.)"""

    def __init__(self, searcher, max_concurrent: int, seeds: list[int]):
        super().__init__(searcher, max_concurrent)
        self.seeds = seeds
        self.slot_keys: dict[str, str] = {}  # trial id -> trial key, of the trials holding a slot
        self.twins: set[str] = set()

    def suggest(self, trial_id: str):
        suggestion = super().suggest(trial_id)
        if isinstance(suggestion, dict):
            key = trial_key(trial_params(suggestion, self.seeds))
            if key in self.slot_keys.values():
                self.live_trials.discard(trial_id)
                self.num_unfinished_live_trials -= 1
                self.twins.add(trial_id)
            else:
                self.slot_keys[trial_id] = key
        return suggestion

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self.twins:
            self.twins.discard(trial_id)
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return
        self.slot_keys.pop(trial_id, None)
        super().on_trial_complete(trial_id, result=result, error=error)
