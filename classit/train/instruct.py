"""Instruction tuning on Ray Train: every curriculum stage in one job, each from the last one's weights.

The driver loads, splits, plans (word budget included) and encodes the data before Ray is needed
(`prepare_instruct`); the workers run `loop.train_stage` once per stage. Every instruction
dataset of the config is loaded and split whatever the curriculum uses, so every run of a sweep
is validated on the same records: the union of every dataset's validation split.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pydantic import BaseModel

from classit.config import ClassitConfig, ConfigError, InstructTrainConfig
from classit.train.runner import MetricRows, RayReporter, WorkerPayload, make_trainer, named, quiet_worker

BASE_ONLY_CHECKPOINT = "pt-final"


class PlannedStage(BaseModel):
    name: str
    train: InstructTrainConfig
    input_words: int  # words of the records this stage uses for the first time


class InstructPayload(WorkerPayload):
    """What every instruction-tuning worker receives: the base, the encoded data's folder and the plan."""

    base: str
    data_root: str  # `stage-<i>` and `validation-<name>` datasets, encoded on the driver
    curriculum: str
    base_input_words: int
    base_exposure_words: int
    validation_sets: list[str]
    validation_records: str  # a hash of the validation records, equal across a sweep's runs
    stages: list[PlannedStage]


WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth"}  # a checkpoint's files that do not shape its encoded data


def instruct_kind(cfg: ClassitConfig) -> str:
    icfg = cfg.instruct
    name = icfg.curriculum if isinstance(icfg.curriculum, str) else "custom"
    return f"instruct-{name}" + (f"-mix{icfg.mix_ratio:g}" if icfg.mix_ratio is not None else "")


def _model_with(base: Path, weights: dict | None):
    from transformers import AutoConfig, AutoModelForCausalLM

    from classit.models import load_checkpoint

    if weights is None:
        return load_checkpoint(base)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    model.load_state_dict(weights)
    return model


def score_base(payload_json: dict, checkpoint_uri: str) -> dict:
    """The `pt` curriculum, in one process: no training. The base's validation losses are the run's
    metrics (one `train_metrics` row), and the base, saved again with its tokenizer at
    `checkpoint_uri`, is the run's only checkpoint."""
    import pyarrow.fs as pafs

    from classit.results import filesystem
    from classit.train.checkpoints import checkpoint_scratch, save_tokenizer_and_model
    from classit.train.distributed import device
    from classit.train.loop import validation_losses

    quiet_worker()
    payload = InstructPayload.model_validate(payload_json)
    cfg = payload.config
    tokenizer, validation, collate = _run_inputs(payload)
    model = _model_with(Path(payload.base), None).to(device())
    metrics = {"stage": "pt", "stage_index": 0, "step": 0, "total_steps": 0, "words_seen": 0,
               **validation_losses(model, validation, collate, cfg.instruct.train.batch_size),
               "input_words": payload.base_input_words, "exposure_words": payload.base_exposure_words,
               **_run_columns(payload)}
    rows = MetricRows(payload, validation_sets=list(validation))
    rows.add(metrics)
    rows.flush(key=f"{cfg.run.name}/pt")  # a rerun (a resumed sweep) replaces the run's one row
    fs, path = filesystem(checkpoint_uri)
    with checkpoint_scratch() as tmp:
        save_tokenizer_and_model(model, tokenizer, tmp)
        fs.delete_dir_contents(path, missing_dir_ok=True)
        fs.create_dir(path)
        pafs.copy_files(tmp, path, destination_filesystem=fs)
    return metrics


def _run_inputs(payload: InstructPayload):
    """The base's tokenizer, the encoded validation sets by name, and the batch collator."""
    import datasets

    from classit.tokenizer import load_tokenizer
    from classit.train.loop import collate_instruct

    tokenizer = load_tokenizer(Path(payload.base))
    validation = {name: datasets.load_from_disk(str(Path(payload.data_root) / f"validation-{name}"))
                  for name in payload.validation_sets}
    collate = partial(collate_instruct, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    return tokenizer, validation, collate


def _run_columns(payload: InstructPayload) -> dict:
    """The columns every metric row of an instruction-tuning run carries."""
    return {"curriculum": payload.curriculum, "mix_ratio": payload.config.instruct.mix_ratio,
            "validation_records": payload.validation_records}


def instruct_worker(loop_config: dict) -> None:
    """Runs every curriculum stage in order on every Ray Train worker, each from the last one's weights."""
    import datasets
    import ray.train

    from classit.train.checkpoints import load_trainer_state
    from classit.train.loop import Stage, full_state_dict, train_stage

    quiet_worker()
    payload = InstructPayload.model_validate(loop_config)
    cfg = payload.config
    base, data_root = Path(payload.base), Path(payload.data_root)
    tokenizer, validation, collate = _run_inputs(payload)
    report = RayReporter(payload, validation_sets=list(validation))
    prior_input, prior_exposure = payload.base_input_words, payload.base_exposure_words
    extra = _run_columns(payload)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as resume_dir:
        resumed = load_trainer_state(Path(resume_dir)) if resume_dir else None
        weights = None
        for index, planned in enumerate(payload.stages):
            if resumed is not None and index < resumed.stage_index:
                continue  # finished before the restart
            resume_here = Path(resume_dir) if resumed is not None and index == resumed.stage_index else None
            stage = Stage(planned.name, datasets.load_from_disk(str(data_root / f"stage-{index}")), validation,
                          planned.train, collate, index=index, prior_input_words=prior_input,
                          prior_exposure_words=prior_exposure, input_words=planned.input_words, extra_metrics=extra)
            state, engine = train_stage(_model_with(base, weights), tokenizer, stage, cfg.distributed, report,
                                        resume_from=resume_here)
            weights = full_state_dict(engine)
            del engine
            prior_input, prior_exposure = state.total_input_words, state.total_exposure_words
    if report.rank == 0:
        report.flush()


def base_word_counts(base: Path) -> tuple[int, int]:
    """Input and exposure words of everything that made a base checkpoint (0, 0 if it does not say)."""
    from classit.train.checkpoints import TRAINER_STATE, load_trainer_state

    if not (base / TRAINER_STATE).exists():
        return 0, 0
    state = load_trainer_state(base)
    return state.total_input_words, state.total_exposure_words


def load_instruct_data(cfg: ClassitConfig) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Every instruction dataset of the config, loaded and split into train and validation records."""
    from classit.data.curriculum import split_records
    from classit.data.instruct import load_records

    icfg = cfg.instruct
    records = {name: load_records(name, spec, seed=icfg.split_seed, cache_dir=Path(cfg.run.cache_dir))
               for name, spec in icfg.datasets.items()}
    return split_records(records, icfg)


def validation_fingerprint(valid: dict[str, list[dict]]) -> str:
    """A hash of the validation records: equal for every run that is validated on the same ones."""
    from classit.config import config_hash

    return config_hash([[name, r["prompt"], r["reply"]] for name in sorted(valid) for r in valid[name]])


def plan_instruct(cfg: ClassitConfig, base_input: int, base_exposure: int, data=None):
    """The curriculum's stages with their word counts, checked against the budget (data loaded if not given)."""
    from classit.data.curriculum import plan_curriculum

    train, valid = data or load_instruct_data(cfg)
    plan = plan_curriculum(cfg.instruct, train, cfg.distributed.num_workers, base_input, base_exposure, cfg.budget)
    return plan, train, valid


@dataclass
class InstructJob:
    """What the driver prepared for one instruction-tuning run: its plan, the records cut or dropped
    while encoding, and the workers' payload (the named config within)."""

    plan: object  # CurriculumPlan
    counts: dict
    payload: InstructPayload

    @property
    def cfg(self) -> ClassitConfig:
        return self.payload.config


def prepare_instruct(cfg: ClassitConfig, base: Path) -> InstructJob:
    """On the driver, no Ray needed: load, split, plan (with the budget check), then every stage's
    data and the validation sets encoded, or found already encoded in the cache (keyed by the
    records each holds, the base's files but its weights (the tokenizer's among them) and the
    encoding settings: trials that differ only in training settings share it). Bad data or an
    over-budget plan fails here."""
    from classit.artefacts import artefact_dir, commit_folder, files_fingerprint, is_complete, read_marker
    from classit.config import config_hash
    from classit.models import check_weights, checkpoint_shape

    check_weights(base)  # cut short or damaged: named now, not by every training worker once Ray has started
    positions = checkpoint_shape(base).max_position_embeddings
    if positions and cfg.instruct.max_length > positions:
        raise ConfigError(f"instruct.max_length: {cfg.instruct.max_length} tokens, more than the base's {positions} "
                          f"positions ({base / 'config.json'})")
    base_files = [p for p in base.iterdir() if p.is_file()]
    if cfg.run.name is None:  # by the base's content, not its path: a base saved again in its folder is a new run
        cfg = named(cfg, instruct_kind(cfg), files_fingerprint(base_files))
    icfg = cfg.instruct
    base_input, base_exposure = base_word_counts(base)
    plan, train, valid = plan_instruct(cfg, base_input, base_exposure)

    stages = [[train[d][i] for d, i in stage.items] for stage in plan.stages]
    made_by = {"tokenizer": files_fingerprint(p for p in base_files if p.suffix not in WEIGHT_SUFFIXES),
               "max_length": icfg.max_length, "template": icfg.template.model_dump(),
               "stages": config_hash([[[r["prompt"], r["reply"]] for r in records] for records in stages]),
               "validation": validation_fingerprint(valid)}
    root = artefact_dir(cfg.run.cache_dir, "instruct", made_by)
    if is_complete(root):
        counts = read_marker(root)["counts"]
    else:
        encode = partial(encode_instruct_data, base=base, icfg=icfg, stages=stages, valid=valid)
        counts = commit_folder(root, encode, made_by)["counts"]
    payload = InstructPayload(
        config=cfg, base=str(base.resolve()), data_root=str(root.resolve()),
        curriculum=icfg.curriculum if isinstance(icfg.curriculum, str) else "custom",
        base_input_words=base_input, base_exposure_words=base_exposure, validation_sets=sorted(valid),
        validation_records=made_by["validation"],
        stages=[PlannedStage(name=s.name, train=s.train, input_words=s.input_words) for s in plan.stages])
    return InstructJob(plan, counts, payload)


def encode_instruct_data(folder: Path, base: Path, icfg, stages: list[list[dict]], valid: dict) -> dict:
    """Every stage's records and each validation set encoded into `folder` (`stage-<i>`,
    `validation-<name>`); returns the counts of records cut or dropped for length."""
    import datasets

    from classit.data.instruct import encode_record
    from classit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(base)
    counts = {"dropped_too_long": 0, "truncated": 0}

    def encode(recs: list[dict]):
        rows = [encode_record(tokenizer, r, icfg.max_length, icfg.template) for r in recs]
        counts["dropped_too_long"] += sum(r is None for r in rows)
        kept = [r for r in rows if r is not None]
        counts["truncated"] += sum(r["truncated"] for r in kept)
        return datasets.Dataset.from_dict({k: [r[k] for r in kept] for k in ("input_ids", "labels", "num_words")})

    for name in sorted(valid):
        encode(valid[name]).save_to_disk(str(folder / f"validation-{name}"))
    for index, records in enumerate(stages):
        encode(records).save_to_disk(str(folder / f"stage-{index}"))
    return {"counts": counts}


def train_instruct(job: InstructJob, log=print, metrics_dir: str | None = None, callbacks: list = ()):
    """Run a prepared job on Ray Train workers (`pt`, which trains nothing, as one task); returns Ray's
    Result. The one instruction-tuning path: `classit instruct` and every sweep trial (which adds
    its metrics folder and Tune's callback)."""
    log(f"plan: {job.plan.summary()}")
    if job.counts["dropped_too_long"] or job.counts["truncated"]:
        log(f"records longer than instruct.max_length={job.cfg.instruct.max_length}: {job.counts['truncated']} had "
            f"their prompt cut from the left, {job.counts['dropped_too_long']} dropped (reply alone too long)")
    payload = job.payload.model_copy(update={"metrics_dir": metrics_dir})
    if not payload.stages:
        return _score_base_as_a_task(payload)
    return make_trainer(instruct_worker, payload, callbacks).fit()


def _score_base_as_a_task(payload: InstructPayload):
    """`score_base` as one Ray task with one training worker's resources (a GPU where they have one):
    a validation pass needs no worker group, DeepSpeed or Ray Train's controller. Returns a Ray
    Train `Result` like a trained run's (its one checkpoint, where Ray Train would put it, also its
    best) and fails like one (`WorkerGroupError`)."""
    import ray
    from ray.exceptions import RayTaskError
    from ray.train import Checkpoint, Result, WorkerGroupError
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from classit.results import filesystem, run_dir

    cfg = payload.config
    dcfg = cfg.distributed
    task = ray.remote(score_base).options(
        num_cpus=dcfg.cpus_per_worker, num_gpus=int(dcfg.use_gpu), resources=dcfg.worker_resources,
        # Not the calling Tune trial's placement group (it holds no CPU): the cluster's free resources.
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    run = run_dir(cfg.run.storage_path, cfg.run.name)
    saved_to = f"{run}/{BASE_ONLY_CHECKPOINT}"
    try:
        metrics = ray.get(task.remote(payload.model_dump(mode="json"), saved_to))
    except RayTaskError as err:
        raise WorkerGroupError(str(err), {0: err.cause}) from None
    fs, path = filesystem(saved_to)
    checkpoint = Checkpoint(path, filesystem=fs)
    return Result(metrics=metrics, checkpoint=checkpoint, error=None, path=filesystem(run)[1],
                  best_checkpoints=[(checkpoint, metrics)], _storage_filesystem=fs)


def run_instruct(cfg: ClassitConfig, base: Path, log=print):
    """Instruction-tune `base` (an HF checkpoint folder) through the configured curriculum."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return train_instruct(prepare_instruct(cfg, base), log)
