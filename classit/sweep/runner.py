"""The sweep driver: Ray Tune + Optuna over curricula, mix ratios and learning rates.

Validates and plans everything before Ray starts (`plan.py`), starts the shared services (base builder,
evaluation pool, trial claims), runs (or restores) the Tuner, prints a live table of trials while they run and
the analysis layer's per-trial leaderboard at the end.
Results: `<storage>/<sweep>/results/{trials,train_metrics,eval_scores}`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from classit.analysis.trials import format_leaderboard, leaderboard
from classit.config import ClassitConfig, ConfigError
from classit.evaluate.catalog import objective_key
from classit.sweep.plan import base_configs, experiment_dir, plan_trials, validate
from classit.sweep.space import planned_trial_count
from classit.sweep.trial import EVAL_SCORES, TRIALS

STATE_FILE = "tuner.pkl"  # what Tune writes into an experiment folder it can restore
# A trial only drives its Ray Train run, whose workers ask for the CPUs/GPUs: the trial takes no
# core (Tune wants some resource, so a little memory), and the cluster's cores go to training.
TRIAL_RESOURCES = {"cpu": 0, "memory": 256 * 2**20}


def run_sweep(cfg: ClassitConfig, address: str | None = None, resume: bool = False, log=None,
              verbose: bool = False):
    """Run (or resume) the sweep to completion; returns the leaderboard DataFrame. Without
    `verbose` the console has classit's event lines only: the output of Ray's workers (Train,
    DeepSpeed, datasets, transformers) stays in Ray's log files, and errors come through Tune."""
    import ray

    from classit.data.synthetic import cached_probe_data
    from classit.generate.job import ensure_generated
    from classit.ray_session import ray_session
    from classit.sweep.console import echo
    from classit.sweep.services import start_services
    from classit.sweep.status import ended_trials, write_sweep_file

    log = log or echo
    cfg = validate(cfg)
    ensure_generated(cfg, address, log, verbose)  # teacher-written sets: reused, or made once now
    plan_trials(cfg)  # every planned trial within the word budget, before the sweep's Ray starts
    experiment = experiment_dir(cfg)
    results_root = str(experiment / "results")
    objectives = [objective_key(m) for m in cfg.sweep.metrics]
    finished = finished_sweep(cfg, experiment, results_root, objectives, resume)
    if finished is not None:
        log(f"sweep {cfg.sweep.name} already finished at {experiment} (choose another sweep.name to run it again)")
        log(leaderboard_text(finished, objectives, results_root))
        return finished
    write_sweep_file(experiment, cfg)  # for `classit status`
    data_dir = cfg.evaluation.data_dir or cached_probe_data(cfg.run.cache_dir)
    pending_bases = log_bases(cfg, log)
    quiet_driver(verbose)
    with ray_session(address, quiet=not verbose, holds=[cfg.distributed.held(), cfg.evaluation.held()]):
        services = start_services(cfg, f"{results_root}/{EVAL_SCORES}", pending_bases)  # held for the whole sweep
        grid = make_tuner(cfg, experiment, resume, results_root, str(Path(data_dir).resolve()),
                          pending_bases, log).fit()
        for actor in services:
            ray.kill(actor)
    ended = ended_trials(experiment)
    record_unfinished(grid, cfg, results_root, ended)
    board = leaderboard(read_trials(results_root), objectives, cfg.sweep.modes)
    log(leaderboard_text(board, objectives, results_root))
    log(f"results: {results_root}/{{{TRIALS},train_metrics,{EVAL_SCORES}}}")
    planned = planned_trial_count(cfg)
    if len(ended) < planned:  # Tune stops early only on a signal (Ctrl-C, SIGUSR1)
        raise SweepInterrupted(f"sweep {cfg.sweep.name}: {len(ended)} of {planned} trials ended; Tune saved its "
                               f"state in {experiment}: the same command with --resume continues it")
    return board


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped on a signal before every planned trial ended (its state saved for `--resume`):
    a KeyboardInterrupt, as the Ctrl-C that Tune caught to stop it."""


def leaderboard_text(board, objectives: list[str], results_root: str) -> str:
    """The leaderboard, with a warning under it for each trial whose scores were mostly won by ties."""
    from classit.analysis.trials import tie_won
    from classit.results import read_table

    return format_leaderboard(board, objectives, tie_won(board, read_table(f"{results_root}/{EVAL_SCORES}")))


def read_trials(results_root: str):
    from classit.results import read_table

    return read_table(f"{results_root}/{TRIALS}")


def finished_sweep(cfg: ClassitConfig, experiment: Path, results_root: str, objectives: list[str], resume: bool):
    """The leaderboard of a sweep of this name that already finished (None if there is none, or
    when resuming); a sweep of this name left unfinished is refused without `--resume`. Finished:
    Tune ended every planned trial (twins, the same parameters drawn twice, share one row)."""
    from classit.sweep.status import ended_trials, started_config

    if resume and not (experiment / STATE_FILE).exists():
        raise ConfigError(f"--resume: no sweep to resume at {experiment}")
    if not experiment.exists():
        return None
    started = started_config(experiment)
    if started is not None and (changes := config_changes(started, cfg)):
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        if resume:
            raise ConfigError(f"--resume: sweep {cfg.sweep.name} was started with another config ({shown}): resume "
                              f"it with that one (its sweep.json holds it) or choose another sweep.name")
        raise ConfigError(f"sweep.name: {cfg.sweep.name} already exists at {experiment}, started with another config "
                          f"({shown}): choose another sweep.name")
    if resume:
        return None
    if len(ended_trials(experiment)) < planned_trial_count(cfg):
        raise ConfigError(f"sweep.name: {cfg.sweep.name} already exists at {experiment}, unfinished; "
                          f"pass --resume to continue it or choose another sweep.name")
    return leaderboard(read_trials(results_root), objectives, cfg.sweep.modes)


# Where a sweep runs and is tracked, not what it computes: a sweep may go on with these changed.
# (Tune keeps its own search settings on a resume, and every trial shares its sweep's config.)
PLACEMENT_FIELDS = ("run.storage_path", "run.cache_dir", "run.keep_optimizer_states", "tracking.",
                    "evaluation.actors", "evaluation.cpus_per_actor", "evaluation.gpus_per_actor",
                    "evaluation.actor_resources", "distributed.cpus_per_worker", "distributed.worker_resources",
                    "distributed.max_failures", "sweep.max_failures")


def config_changes(started: ClassitConfig, now: ClassitConfig) -> list[str]:
    """`field: before -> now` for every field but the placement ones that differs."""
    from classit.results import config_columns

    before, after = (config_columns(c, prefix="", exclude=frozenset()) for c in (started, now))
    return [f"{column[1:]}: {before.get(column)} -> {value}" for column, value in after.items()
            if before.get(column) != value and not column[1:].startswith(PLACEMENT_FIELDS)]


def log_bases(cfg: ClassitConfig, log) -> dict[str, ClassitConfig]:
    """Say which base models are cached; returns the configs of the missing ones, which the base builder
    pretrains as soon as it starts."""
    from classit.sweep.services import cached_base

    pending = {}
    for preset, base_cfg in base_configs(cfg).items():
        found = cached_base(base_cfg)
        if found is None:
            pending[preset] = base_cfg
        log(f"base {preset}: reused {found}" if found else f"base {preset}: not cached; pretrained as the sweep starts")
    return pending


def without_tunes_resume_hint(record: logging.LogRecord) -> bool:
    """Tune's hint on an interruption names its Python API (`Tuner.restore(...)`); classit's names `--resume`."""
    return not record.getMessage().startswith("Experiment has been interrupted")


def quiet_driver(verbose: bool) -> None:
    """Tune's settings for classit's reports, and the driver's own loggers at WARNING unless verbose."""
    # Intermediate reports carry the validation loss only; the objective comes with the last one.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune.tune").addFilter(without_tunes_resume_hint)
    if verbose:
        return
    for name in ("ray.tune", "ray.train"):  # their INFO lines (state saved, trial dirs) on the driver
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in Journal ..."


def make_tuner(cfg: ClassitConfig, experiment: Path, resume: bool, results_root: str, data_dir: str,
               pending_bases: dict, log):
    """The Tuner of `run_trial` over the search space (restored from `experiment` when resuming)."""
    from ray import tune

    from classit.sweep.claims import ReleaseClaims
    from classit.sweep.console import SweepConsole
    from classit.sweep.search import tune_setup
    from classit.sweep.services import evaluation_service_name
    from classit.sweep.trial import run_trial

    sweep = cfg.sweep
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep_config=cfg.model_dump(mode="json"), results_root=results_root,
                             data_dir=data_dir, service_name=evaluation_service_name(sweep.name)),
        TRIAL_RESOURCES)
    if resume:
        return tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    objectives = [objective_key(m) for m in sweep.metrics]
    console = SweepConsole(objectives, sweep.seeds, pending_bases, planned_trial_count(cfg), log=log)
    param_space, tune_config = tune_setup(cfg)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=tune.RunConfig(
        name=sweep.name, storage_path=str(experiment.parent), verbose=0,
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
        callbacks=[console, ReleaseClaims(sweep.name), *trackers(cfg)]))


def trackers(cfg: ClassitConfig) -> list:
    """Tune's logger callbacks for the trackers the config names; mlflow and wandb (~1.5 s of
    imports) are loaded only by a sweep that logs to them."""
    if not cfg.tracking.named():
        return []
    from classit.sweep.tracking import tracking_callbacks

    return tracking_callbacks(cfg)


def record_unfinished(grid, cfg: ClassitConfig, results_root: str, ended: list[dict]) -> None:
    """Trials Tune `ended` without a row of their own (stopped by ASHA, failed past their retries)
    get one, with their status and error, so the trials table accounts for every trial. A trial
    an interruption stopped mid-way gets none: it is not over, and `--resume` runs it again."""
    from classit.results import trials_schema, write_rows
    from classit.sweep.trial import trial_key, trial_params, unfinished_row

    sweep = cfg.sweep
    done = read_trials(results_root)
    known = set(done["trial"]) if not done.empty else set()
    # By folder: a trial that never reported has no config in its Result.
    errors = {Path(result.path).name: result.error for result in grid}
    for trial in ended:
        params = trial_params(trial["config"], sweep.seeds)
        if trial_key(params) not in known:
            write_rows(f"{results_root}/{TRIALS}", [unfinished_row(sweep.name, params, errors.get(trial["folder"]))],
                       trials_schema(cfg), key=trial_key(params))
