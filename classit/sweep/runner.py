"""The sweep driver: Ray Tune + Optuna over curricula, mix ratios and learning rates.

Validates everything before Ray starts, starts the two shared services (base builder,
evaluation pool), runs (or restores) the Tuner, prints a live table of trials while they run and
a leaderboard at the end. Results: `<storage>/<sweep>/results/{trials,train_metrics,eval_scores}`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from classit.config import ClassitConfig, ConfigError, config_hash
from classit.sweep.space import (
    DefineByRun,
    check_space,
    corner_trials,
    format_params,
    gpu_hours,
    grid_trials,
    planned_trial_count,
    text_table,
)
from classit.evaluate.aggregates import NAMES as AGGREGATES
from classit.evaluate.aggregates import component_tasks
from classit.evaluate.catalog import objective_key
from classit.sweep.trial import EVAL_SCORES, TRIALS
from classit.units import format_bytes, format_count
from classit.train.checkpoints import planned_checkpoints, run_disk_bytes

STATE_FILE = "tuner.pkl"  # what Tune writes into an experiment folder it can restore
OPTUNA_JOURNAL = "optuna.journal"  # a TPE or random sweep's Optuna study, on disk: optuna-dashboard reads it
# A trial only drives its Ray Train run, whose workers ask for the CPUs/GPUs: the trial takes no
# core (Tune wants some resource, so a little memory), and the cluster's cores go to training.
TRIAL_RESOURCES = {"cpu": 0, "memory": 256 * 2**20}


def named_sweep(cfg: ClassitConfig) -> ClassitConfig:
    if cfg.sweep is None:
        raise ConfigError("sweep: the config has no sweep section (see sweeps/configs/demo.yaml)")
    if cfg.sweep.name is not None:
        return cfg
    name = f"sweep-{config_hash(cfg.model_dump(mode='json', exclude={'run', 'tracking'}))[:8]}"
    return cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"name": name})})


def validate(cfg: ClassitConfig) -> ClassitConfig:
    """Everything that can be checked without Ray, each failure one line naming the field."""
    from classit.sweep.tracking import check_trackers

    cfg = named_sweep(cfg)
    check_space(cfg)
    check_trackers(cfg)
    for spec in cfg.sweep.metrics:
        try:
            key = objective_key(spec)
        except ValueError as err:
            raise ConfigError(f"sweep.metrics: {spec!r}: {err}") from None
        needed = [] if key == "val_loss" else component_tasks(key) if key in AGGREGATES else [key.split(":")[0]]
        missing = [task for task in needed if task not in cfg.evaluation.tasks]
        if missing:
            raise ConfigError(f"sweep.metrics: {spec!r} needs task{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(missing)} in evaluation.tasks")
    return cfg


def experiment_dir(cfg: ClassitConfig) -> Path:
    return Path(cfg.run.storage_path).expanduser().resolve() / cfg.sweep.name


def budget_candidates(cfg: ClassitConfig) -> list[dict]:
    """Parameters whose plans bound every trial's word counts: each grid trial, or for a search
    every combination of the choices and the ends of every range (conditional parameters only
    where they apply)."""
    return grid_trials(cfg) if cfg.sweep.search == "grid" else corner_trials(cfg)


def plan_trials(cfg: ClassitConfig) -> tuple[list[tuple[dict, object]], dict]:
    """Every budget candidate's curriculum plan (base words included), each checked against the
    budget, and the bases (per model preset) with their planned words. Reads and cleans the
    corpus and the instruction data; tokenizes nothing and needs no Ray."""
    from classit.budget import check_budget, pretraining_exposure
    from classit.data.corpus import corpus_train_words
    from classit.sweep.space import apply_params
    from classit.train.instruct import load_instruct_data, plan_instruct

    words_of, data_of, bases, plans = {}, {}, {}, []
    for params in budget_candidates(cfg):
        trial_cfg = apply_params(cfg, params)
        corpus_key = config_hash(trial_cfg.corpus, trial_cfg.run.cache_dir)
        if corpus_key not in words_of:
            words_of[corpus_key] = corpus_train_words(trial_cfg)
        words = words_of[corpus_key]
        exposure = pretraining_exposure(trial_cfg.pretrain, words, None, trial_cfg.distributed.num_workers)
        preset = trial_cfg.model.preset
        if preset not in bases:
            check_budget(words, exposure, trial_cfg.budget, f"the {preset} base's pretraining "
                                                            f"({words:,} input words, {exposure:,} of exposure)")
            bases[preset] = (words, exposure)
        data_key = config_hash(trial_cfg.instruct.datasets, trial_cfg.instruct.split_seed,
                               trial_cfg.instruct.validation_fraction)
        if data_key not in data_of:
            data_of[data_key] = load_instruct_data(trial_cfg)
        try:
            plan = plan_instruct(trial_cfg, words, exposure, data_of[data_key])[0]
        except ConfigError as err:
            shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed")
            raise type(err)(f"sweep trial {shown}: {err}") from None
        plans.append((params, plan))
    return plans, bases


def batch_line(cfg: ClassitConfig, section: str, tcfg) -> str:
    workers = cfg.distributed.num_workers
    rows = tcfg.batch_size * workers * tcfg.gradient_accumulation_steps
    return (f"{section}: {rows} rows per optimizer step ({tcfg.batch_size} per worker x {workers} workers x "
            f"{tcfg.gradient_accumulation_steps} accumulation)")


def describe_plan(cfg: ClassitConfig) -> str:
    """The expanded plan: trials, batches, every trial's word budget with the base, and the GPU-hours."""
    from classit.models import parameter_count

    sweep = cfg.sweep
    lines = [f"sweep {sweep.name}: {sweep.search} search, {planned_trial_count(cfg)} trials "
             f"({len(sweep.seeds)} seed(s) each), objective {', '.join(map(objective_key, sweep.metrics))} "
             f"({', '.join(sweep.modes)}), at most {sweep.max_concurrent_trials} at once"]
    if sweep.search == "grid":
        lines += [f"  trial {i + 1}: {p}" for i, p in enumerate(grid_trials(cfg))]
    else:
        lines += [f"  {name}: {dim.model_dump(exclude_none=True, by_alias=True)}" for name, dim in sweep.space.items()]
    lines += [f"  batch, {batch_line(cfg, 'pretraining', cfg.pretrain)}",
              f"  batch, {batch_line(cfg, 'instruction tuning', cfg.instruct.train)}"]
    plans, bases = plan_trials(cfg)
    budget = cfg.budget
    lines.append(f"  word budgets (base included; limits {format_count(budget.max_input_words)} input, "
                 f"{format_count(budget.max_exposure_words)} exposure)"
                 + (":" if sweep.search == "grid" else ", at every corner of the search space:"))
    groups: dict[tuple, list] = {}  # candidates whose plans are the same (they differ by lr, seed, ...)
    for params, plan in plans:
        groups.setdefault((params.get("model_preset", cfg.model.preset), plan.summary()), []).append((params, plan))
    most_hours = most_disk = 0.0
    for (preset, summary), members in groups.items():
        common = {k: v for k, v in members[0][0].items() if k != "seed" and all(p.get(k) == v for p, _ in members)}
        shown = format_params(common)
        plan = members[0][1]
        hours = gpu_hours(parameter_count(preset), plan.exposure_words - plan.base_exposure_words)
        checkpoints, disk = trial_disk(cfg, preset, plan)
        most_hours, most_disk = max(most_hours, hours), max(most_disk, disk)
        label = (shown or "every trial") + ("" if "model_preset" in common else f" ({preset})")
        lines.append(f"    {label}: {format_count(plan.input_words)} input / "
                     f"{format_count(plan.exposure_words)} exposure words, within budget; ~{hours:.3g} GPU-h, "
                     f"{format_disk(checkpoints, disk)}")
        lines.append(f"      {summary}")
    base_disk = 0
    for preset, (words, exposure) in bases.items():
        checkpoints = planned_checkpoints(0, exposure, cfg.pretrain.checkpoints)
        disk = run_disk(cfg, preset, checkpoints, cfg.pretrain.checkpoints.resumable)
        base_disk += disk
        lines.append(f"  base {preset}: pretraining on {format_count(words)} words, {format_count(exposure)} of "
                     f"exposure, ~{gpu_hours(parameter_count(preset), exposure):.3g} GPU-h, "
                     f"{format_disk(checkpoints, disk)}, once (cached)")
    estimate = sum(gpu_hours(parameter_count(p), e) for p, (_, e) in bases.items()) + \
        most_hours * planned_trial_count(cfg)
    lines.append(f"  estimate: at most ~{estimate:.3g} GPU-hours (A100 bf16 at 40% utilisation) and "
                 f"~{format_bytes(base_disk + most_disk * planned_trial_count(cfg))} of checkpoints in all "
                 f"(optimizer state in the newest {cfg.run.keep_optimizer_states or 'all'} of each run)")
    return "\n".join(lines)


def run_disk(cfg: ClassitConfig, preset: str, checkpoints: int, resumable: bool) -> int:
    """Bytes a run of `checkpoints` checkpoints of the preset leaves on disk, under the config's retention."""
    from classit.models import parameter_count

    return run_disk_bytes(parameter_count(preset), checkpoints, cfg.distributed, cfg.run.keep_optimizer_states,
                          resumable)


def format_disk(checkpoints: int, disk: int) -> str:
    return f"{checkpoints} checkpoint{'s' * (checkpoints != 1)} ~{format_bytes(disk)}"


def trial_disk(cfg: ClassitConfig, preset: str, plan) -> tuple[int, int]:
    """A trial's planned checkpoints and their bytes on disk at its end."""
    start, checkpoints = plan.base_exposure_words, 0
    for stage in plan.stages:
        checkpoints += planned_checkpoints(start, start + stage.exposure_words, stage.train.checkpoints)
        start += stage.exposure_words
    resumable = any(stage.train.checkpoints.resumable for stage in plan.stages)
    checkpoints = max(checkpoints, 1)  # the `pt` curriculum records its base as one
    return checkpoints, run_disk(cfg, preset, checkpoints, resumable)


def _tune_setup(cfg: ClassitConfig):
    """param_space and TuneConfig for the chosen search."""
    from ray import tune

    sweep = cfg.sweep
    objectives = [objective_key(m) for m in sweep.metrics]
    scheduler = None
    if sweep.asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric="val_loss", mode="min", time_attr="training_iteration", grace_period=2)
    if sweep.search == "grid":
        return {"params": tune.grid_search(grid_trials(cfg))}, tune.TuneConfig(
            num_samples=1, max_concurrent_trials=sweep.max_concurrent_trials, scheduler=scheduler)
    import optuna

    sampler = (optuna.samplers.TPESampler(seed=sweep.search_seed, multivariate=True) if sweep.search == "tpe"
               else optuna.samplers.RandomSampler(seed=sweep.search_seed))
    curriculum = cfg.instruct.curriculum if isinstance(cfg.instruct.curriculum, str) else "custom"
    # Objectives as lists even when there is one: OptunaSearch then takes only each trial's final
    # result (a single metric would be read from every intermediate report, which carries only the
    # validation loss), and a one-objective study stays a plain single-objective Optuna study.
    search = _journal_search()(DefineByRun(sweep.space, curriculum), metric=objectives, mode=list(sweep.modes),
                          sampler=sampler, study_name=sweep.name, storage=optuna_journal(cfg))
    if len(sweep.seeds) > 1:  # the searcher sees the mean over seeds of each draw
        search = _seed_repeater(search, len(sweep.seeds))
    return {}, tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=sweep.num_samples * len(sweep.seeds),
                               max_concurrent_trials=sweep.max_concurrent_trials)


def optuna_journal(cfg: ClassitConfig):
    """The sweep's Optuna study in a journal file in its folder: the study outlives the driver
    (`--resume` continues it, the searcher's state pointing at the same file), and
    `optuna-dashboard <sweep>/optuna.journal` shows it live."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    experiment_dir(cfg).mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(experiment_dir(cfg) / OPTUNA_JOURNAL)))


def _journal_search():
    """OptunaSearch for a study kept in the sweep's journal. Tune snapshots the searcher now and
    then; a driver killed after Optuna was asked for a trial but before the next snapshot leaves
    that trial RUNNING in the journal, unknown to the restored searcher. The next trial Tune asks
    for adopts it (its parameters, hence its training run, resume) instead of asking anew, so the
    study holds every trial once and none stays RUNNING."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class JournalOptunaSearch(OptunaSearch):
        def suggest(self, trial_id: str):
            if trial_id not in self._ot_trials and self._ot_study is not None:
                known = {trial._trial_id for trial in self._ot_trials.values()}
                running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                orphan = next((t for t in running if t._trial_id not in known), None)
                if orphan is not None:
                    self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphan._trial_id)
            return super().suggest(trial_id)

    return JournalOptunaSearch


def _seed_repeater(searcher, repeats: int):
    """Tune's Repeater for one or several objectives: each draw runs once per seed, and the
    searcher is told the mean of every objective over the seeds (Repeater handles only one)."""
    import numpy as np
    from ray.tune.search import Repeater

    class SeedRepeater(Repeater):
        def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs):
            metrics = self.searcher.metric if isinstance(self.searcher.metric, list) else [self.searcher.metric]
            group = self._trial_id_to_group[trial_id]
            group.report(trial_id, [float((result or {}).get(m, np.nan)) for m in metrics])
            if group.finished_reporting():
                means = np.nanmean(np.array(group.scores(), dtype=float), axis=0)
                self.searcher.on_trial_complete(group.primary_trial_id, result=dict(zip(metrics, means)), **kwargs)

    return SeedRepeater(searcher, repeat=repeats)


def base_configs(cfg: ClassitConfig) -> dict[str, ClassitConfig]:
    """A trial config per model preset the sweep's trials pretrain a base for."""
    from classit.sweep.space import apply_params

    configs: dict[str, ClassitConfig] = {}
    for params in budget_candidates(cfg):
        trial_cfg = apply_params(cfg, params)
        configs.setdefault(trial_cfg.model.preset, trial_cfg)
    return configs


def run_sweep(cfg: ClassitConfig, address: str | None = None, resume: bool = False, log=None,
              verbose: bool = False):
    """Run (or resume) the sweep to completion; returns the leaderboard DataFrame. Without
    `verbose` the console has classit's event lines only: the output of Ray's workers (Train,
    DeepSpeed, datasets, transformers) stays in Ray's log files, and errors come through Tune."""
    import ray
    from ray import tune

    from classit.data.synthetic import write_probe_data
    from classit.results import read_table
    from classit.sweep.console import SweepConsole, echo
    from classit.sweep.services import cached_base, evaluation_service_name, start_services
    from classit.sweep.status import write_sweep_file
    from classit.sweep.tracking import tracking_callbacks
    from classit.sweep.trial import run_trial
    from classit.train.runner import ray_session

    log = log or echo
    cfg = validate(cfg)
    sweep = cfg.sweep
    plan_trials(cfg)  # every planned trial within the word budget, before Ray starts
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
    quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.WARNING}  # "Started a local Ray ..."
    with ray_session(address, **quiet):
        services = start_services(cfg, f"{results_root}/{EVAL_SCORES}")  # held for the whole sweep
        service_name = evaluation_service_name(sweep.name)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, sweep_config=cfg.model_dump(mode="json"), results_root=results_root,
                                 data_dir=str(Path(data_dir).resolve()), service_name=service_name),
            TRIAL_RESOURCES)
        if resume:
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
        else:
            param_space, tune_config = _tune_setup(cfg)
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


def pareto_front(board, objectives: list[str], modes: list[str]):
    """Rows no other row beats on every objective (and strictly on one); a row missing an
    objective (its evaluation failed) is never on the front."""
    import numpy as np

    from classit.analysis.stats import pareto_mask

    points = np.column_stack([board[o].to_numpy(float) * (1 if m == "max" else -1) for o, m in zip(objectives, modes)])
    complete = ~np.isnan(points).any(axis=1)
    front = np.zeros(len(points), dtype=bool)
    front[complete] = pareto_mask(points[complete])
    return list(front)


SCORED = ("finished", "eval_failed")  # trials that trained to the end, whatever their evaluation gave


def leaderboard(trials, objectives: list[str], modes: list[str]):
    """One row per trial that trained to the end (`eval_failed` ones too, with their status),
    best first by the first objective; the Pareto front marked."""
    if trials.empty:
        return trials
    board = trials[trials["status"].isin(SCORED)].drop_duplicates("trial").copy()
    for o in objectives:
        if o not in board:
            board[o] = float("nan")
    if len(objectives) > 1:
        board["pareto"] = pareto_front(board, objectives, modes)
    return board.sort_values(objectives[0], ascending=modes[0] == "min").reset_index(drop=True)


def format_leaderboard(board, objectives: list[str]) -> str:
    if board.empty:
        return "leaderboard: no finished trials"
    params = [c for c in board.columns if c.startswith("param.")]
    scores = [c for c in board.columns if c.count(":") == 2]
    scores = [o for o in objectives if o in scores] + [c for c in scores if c not in objectives]
    scores += [a for a in AGGREGATES if a in board and a not in scores and board[a].notna().any()]
    header = ["trial", "status", *[p.removeprefix("param.") for p in params], "val_loss", *scores]
    rows = [header]
    for _, r in board.iterrows():
        cells = [("* " if r.get("pareto") else "") + r["trial"], r["status"]]
        cells += ["-" if _missing(r[p]) else (f"{r[p]:.3g}" if isinstance(r[p], float) else str(r[p])) for p in params]
        cells += [f"{r['val_loss']:.4f}", *[f"{r[s]:.4g}" if not _missing(r[s]) else "-" for s in scores]]
        rows.append(cells)
    text = text_table(rows)
    note = "\n(* on the Pareto front of the objectives)" if "pareto" in board else ""
    failed = board.loc[board["status"] == "eval_failed", "trial"].tolist()
    if failed:
        note += f"\nevaluation failed for trial(s) {', '.join(failed)}: see the error rows of eval_scores"
    return f"leaderboard ({len(board)} trials, best first by {objectives[0]}):\n{text}{note}"


def failed_evaluations(board) -> list[str]:
    return [] if board.empty else board.loc[board["status"] == "eval_failed", "trial"].tolist()


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
