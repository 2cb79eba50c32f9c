"""The sweep driver: Ray Tune + Optuna over curricula, mix ratios and learning rates.

Validates and plans everything before Ray starts (`plan.py`), starts the two shared services (base builder,
evaluation pool), runs (or restores) the Tuner, prints a live table of trials while they run and
the analysis layer's per-trial leaderboard at the end. Results: `<storage>/<sweep>/results/{trials,train_metrics,eval_scores}`.
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
    from ray import tune

    from classit.data.synthetic import write_probe_data
    from classit.generate.job import ensure_generated
    from classit.results import read_table
    from classit.sweep.console import SweepConsole, echo
    from classit.sweep.search import tune_setup
    from classit.sweep.services import cached_base, evaluation_service_name, start_services
    from classit.sweep.status import write_sweep_file
    from classit.sweep.tracking import tracking_callbacks
    from classit.sweep.trial import run_trial
    from classit.ray_session import ray_session

    log = log or echo
    cfg = validate(cfg)
    sweep = cfg.sweep
    ensure_generated(cfg, address, log, verbose)  # teacher-written sets: reused, or made once now
    plan_trials(cfg)  # every planned trial within the word budget, before the sweep's Ray starts
    experiment = experiment_dir(cfg)
    if resume and not (experiment / STATE_FILE).exists():
        raise ConfigError(f"--resume: no sweep to resume at {experiment}")
    results_root = str(experiment / "results")
    objectives = [objective_key(m) for m in sweep.metrics]
    if not resume and experiment.exists():
        board = leaderboard(read_table(f"{results_root}/{TRIALS}"), objectives, sweep.modes)
        if len(board) < planned_trial_count(cfg):
            raise ConfigError(f"sweep.name: {sweep.name} already exists at {experiment}, unfinished; "
                              f"pass --resume to continue it or choose another sweep.name")
        log(f"sweep {sweep.name} already finished at {experiment} (choose another sweep.name to run it again)")
        log(format_leaderboard(board, objectives))
        return board
    write_sweep_file(experiment, cfg)  # for `classit status`
    data_dir = cfg.evaluation.data_dir or write_probe_data(Path(cfg.run.cache_dir) / "probes")
    # Intermediate reports carry the validation loss only; the objective comes with the last one.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    pending_bases = {}
    for preset, base_cfg in base_configs(cfg).items():
        found = cached_base(base_cfg)
        if found is None:
            pending_bases[preset] = base_cfg
        log(f"base {preset}: reused {found}" if found else f"base {preset}: not cached; the first trial pretrains it")

    if not verbose:
        for name in ("ray.tune", "ray.train"):  # their INFO lines (state saved, trial dirs) on the driver
            logging.getLogger(name).setLevel(logging.WARNING)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in Journal ..."
    with ray_session(address, quiet=not verbose):
        services = start_services(cfg, f"{results_root}/{EVAL_SCORES}")  # held for the whole sweep
        service_name = evaluation_service_name(sweep.name)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, sweep_config=cfg.model_dump(mode="json"), results_root=results_root,
                                 data_dir=str(Path(data_dir).resolve()), service_name=service_name),
            TRIAL_RESOURCES)
        if resume:
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
        else:
            param_space, tune_config = tune_setup(cfg)
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                               run_config=tune.RunConfig(
                                   name=sweep.name, storage_path=str(experiment.parent), verbose=0,
                                   failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                   callbacks=[SweepConsole(objectives, sweep.seeds, pending_bases,
                                                           planned_trial_count(cfg), log=log),
                                              *tracking_callbacks(cfg)]))
        grid = tuner.fit()
        for actor in services:
            ray.kill(actor)
    record_unfinished(grid, cfg, results_root)
    board = leaderboard(read_table(f"{results_root}/{TRIALS}"), objectives, sweep.modes)
    log(format_leaderboard(board, objectives))
    log(f"results: {results_root}/{{{TRIALS},train_metrics,{EVAL_SCORES}}}")
    return board


def record_unfinished(grid, cfg: ClassitConfig, results_root: str) -> None:
    """Trials that ended without a row of their own (stopped by ASHA, failed past their retries)
    get one, with their status and error, so the trials table accounts for every trial."""
    from classit.results import read_table, trials_schema, write_rows
    from classit.sweep.trial import trial_key, trial_params, unfinished_row

    sweep = cfg.sweep
    done = read_table(f"{results_root}/{TRIALS}")
    known = set(done["trial"]) if not done.empty else set()
    for result in grid:
        params = trial_params(result.config, sweep.seeds)
        if trial_key(params) not in known:
            write_rows(f"{results_root}/{TRIALS}", [unfinished_row(sweep.name, params, result.error)],
                       trials_schema(cfg), key=trial_key(params))
