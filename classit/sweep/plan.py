"""A sweep's config checked and its trials planned, before Ray starts: validation (one line naming
the field), every trial's curriculum plan within the word budget, and `--dry-run`'s description with
GPU-hours and disk."""

from __future__ import annotations

from pathlib import Path

from classit.config import ClassitConfig, ConfigError, config_hash
from classit.evaluate.aggregates import NAMES as AGGREGATES
from classit.evaluate.aggregates import component_tasks
from classit.evaluate.catalog import is_loss_objective, objective_key
from classit.sweep.space import check_space, corner_trials, format_params, gpu_hours, grid_trials, planned_trial_count
from classit.train.checkpoints import planned_checkpoints, run_disk_bytes
from classit.units import format_bytes, format_count


def named_sweep(cfg: ClassitConfig) -> ClassitConfig:
    if cfg.sweep is None:
        raise ConfigError("sweep: the config has no sweep section (see sweeps/configs/demo.yaml)")
    if cfg.sweep.name is not None:
        return cfg
    name = f"sweep-{config_hash(cfg.model_dump(mode='json', exclude={'run', 'tracking'}))[:8]}"
    return cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"name": name})})


# Each tracker's package: checked here, imported (with Tune's callbacks) only by a sweep that names it.
TRACKER_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}


def check_trackers(cfg: ClassitConfig) -> None:
    """A named tracker whose package is missing fails here, before Ray starts."""
    import importlib.util

    for name in cfg.tracking.named():
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise ConfigError(f"tracking.{name}: the {TRACKER_PACKAGES[name]} package is not installed "
                              f"(pip install 'classit[{name}]')")


def validate(cfg: ClassitConfig) -> ClassitConfig:
    """Everything that can be checked without Ray, each failure one line naming the field."""
    cfg = named_sweep(cfg)
    check_space(cfg)
    check_trackers(cfg)
    check_evaluation_inputs(cfg)
    check_objectives(cfg)
    check_sequence_lengths(cfg)
    return cfg


def check_sequence_lengths(cfg: ClassitConfig) -> None:
    """Instruction sequences fit every base's positions: a sweep builds its bases from presets, so
    this is known before the bases train, not once each trial starts on one."""
    from classit.models import PRESETS
    from classit.sweep.space import apply_params

    for params in budget_candidates(cfg):
        trial_cfg = apply_params(cfg, params)
        preset, length = trial_cfg.model.preset, trial_cfg.instruct.max_length
        positions = PRESETS[preset]["max_position_embeddings"]
        if length > positions:
            raise ConfigError(f"instruct.max_length: {length} tokens, more than the {preset} preset's {positions} "
                              f"positions (the base the sweep pretrains)")


def check_objectives(cfg: ClassitConfig) -> None:
    """Each of `sweep.metrics` names a score the sweep's evaluation writes: a known task, subtask
    and metric, every task it needs evaluated, and a breakdown's value present in the task's data."""
    named: dict[str, str] = {}
    for spec in cfg.sweep.metrics:
        try:
            key = objective_key(spec)
        except ValueError as err:
            raise ConfigError(f"sweep.metrics: {spec!r}: {err}") from None
        if key in named:
            raise ConfigError(f"sweep.metrics: {named[key]!r} and {spec!r} are one objective, {key}")
        named[key] = spec
        if is_loss_objective(key):
            dataset = key.removeprefix("val_loss").removeprefix(":")
            if dataset and dataset not in cfg.instruct.datasets:
                raise ConfigError(f"sweep.metrics: {spec!r}: no instruction dataset {dataset!r} "
                                  f"(instruct.datasets: {', '.join(cfg.instruct.datasets)})")
            continue
        needed = component_tasks(key) if key in AGGREGATES else [key.split(":")[0]]
        missing = [task for task in needed if task not in cfg.evaluation.tasks]
        if missing:
            raise ConfigError(f"sweep.metrics: {spec!r} needs task{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(missing)} in evaluation.tasks")
        task, _, subtask = key.rpartition(":")[0].partition(":")
        if ":" in subtask:  # a breakdown row of a zero-shot task, `<key>:<value>`
            name, value = subtask.split(":", 1)
            values = breakdown_values(cfg, task, name)
            if value not in values:
                shown = ", ".join(values[:5]) + (", ..." if len(values) > 5 else "")
                raise ConfigError(f"sweep.metrics: {spec!r}: task {task}'s data has no {name} {value!r} "
                                  f"(it has {len(values)}: {shown})")


def breakdown_values(cfg: ClassitConfig, task: str, name: str) -> list[str]:
    """The values of a zero-shot task's breakdown key in the items the sweep will score (its data
    folder, or the probe sets generated from the synthetic grammar, as the sweep writes them)."""
    import tempfile

    from classit.data.synthetic import write_probe_data
    from classit.evaluate.jobs import FAST_ITEMS_PER_SUBTASK
    from classit.evaluate.tasks.zero_shot import group_sizes, read_for_evaluation

    with tempfile.TemporaryDirectory() as probes:
        data_dir = cfg.evaluation.data_dir or write_probe_data(probes)
        _, items = read_for_evaluation(task, data_dir, cfg.evaluation.fast, FAST_ITEMS_PER_SUBTASK)
    return sorted(group_sizes(task, items)[name])


def check_evaluation_inputs(cfg: ClassitConfig) -> None:
    """Every evaluation task's files, before anything trains: a task that cannot read its data would
    fail on every trial's checkpoints, once the training is done."""
    from classit.data.synthetic import unprobed_tasks
    from classit.evaluate.tasks.inputs import missing_input

    ecfg = cfg.evaluation
    if ecfg.data_dir is None:
        if problem := unprobed_tasks(ecfg.tasks, "evaluation.data_dir"):
            raise ConfigError(f"evaluation.tasks: {problem}")
        return
    for task in ecfg.tasks:
        if missing := missing_input(task, ecfg.data_dir, ecfg.fast):
            raise ConfigError(f"evaluation.data_dir: {missing}")


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


def base_configs(cfg: ClassitConfig) -> dict[str, ClassitConfig]:
    """A trial config per model preset the sweep's trials pretrain a base for."""
    from classit.sweep.space import apply_params

    configs: dict[str, ClassitConfig] = {}
    for params in budget_candidates(cfg):
        trial_cfg = apply_params(cfg, params)
        configs.setdefault(trial_cfg.model.preset, trial_cfg)
    return configs
