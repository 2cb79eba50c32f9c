"""Instruction tuning on Ray Train: every curriculum stage in one job, each from the last one's weights.

The driver loads, splits, plans (word budget included) and encodes the data; the workers run
`loop.train_stage` once per stage.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from classit.config import ClassitConfig
from classit.train.runner import RayReporter, make_trainer, named, quiet_worker


def instruct_kind(cfg: ClassitConfig) -> str:
    icfg = cfg.instruct
    name = icfg.curriculum if isinstance(icfg.curriculum, str) else "custom"
    return f"instruct-{name}" + (f"-mix{icfg.mix_ratio:g}" if icfg.mix_ratio is not None else "")


def _model_with(base: Path, weights: dict | None):
    from transformers import AutoConfig, AutoModelForCausalLM

    if weights is None:
        return AutoModelForCausalLM.from_pretrained(base)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    model.load_state_dict(weights)
    return model


def _evaluate_base_only(cfg: ClassitConfig, base: Path, tokenizer, validation, collate, report, words: dict) -> None:
    """The `pt` curriculum: no training; the base is scored and recorded as this run's checkpoint."""
    import tempfile

    from classit.train.loop import device, save_tokenizer_and_model, validation_loss

    model = _model_with(base, None).to(device())
    loss = validation_loss(model, validation, collate, cfg.instruct.train.batch_size)
    metrics = {"stage": "pt", "stage_index": 0, "step": 0, "total_steps": 0, "words_seen": 0, "val_loss": loss,
               **words}
    with tempfile.TemporaryDirectory(prefix="classit-ckpt-") as tmp:
        if report.rank == 0:
            save_tokenizer_and_model(model, tokenizer, Path(tmp))
        report(metrics, checkpoint_dir=tmp if report.rank == 0 else None, name="pt-final")


def instruct_worker(loop_config: dict) -> None:
    """Runs every curriculum stage in order on every Ray Train worker, each from the last one's weights."""
    import datasets
    import ray.train

    from classit.config import InstructTrainConfig
    from classit.data.instruct import collate_instruct
    from classit.tokenizer import load_tokenizer
    from classit.train.loop import Stage, full_state_dict, load_trainer_state, train_stage

    quiet_worker()
    cfg = ClassitConfig.model_validate(loop_config["config"])
    base, data_root = Path(loop_config["base"]), Path(loop_config["data_root"])
    tokenizer = load_tokenizer(base)
    validation = datasets.load_from_disk(str(data_root / "validation"))
    collate = partial(collate_instruct, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    report = RayReporter(cfg, trial=cfg.run.name, metrics_dir=loop_config.get("metrics_dir"))
    prior_input, prior_exposure = loop_config["base_input_words"], loop_config["base_exposure_words"]
    extra = {"curriculum": loop_config["curriculum"], "mix_ratio": cfg.instruct.mix_ratio}
    if not loop_config["stages"]:
        _evaluate_base_only(cfg, base, tokenizer, validation, collate, report,
                            {"input_words": prior_input, "exposure_words": prior_exposure, **extra})
        return

    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as resume_dir:
        resumed = load_trainer_state(Path(resume_dir)) if resume_dir else None
        weights = None
        for index, planned in enumerate(loop_config["stages"]):
            if resumed is not None and index < resumed.stage_index:
                continue  # finished before the restart
            resume_here = Path(resume_dir) if resumed is not None and index == resumed.stage_index else None
            stage = Stage(planned["name"], datasets.load_from_disk(str(data_root / f"stage-{index}")), validation,
                          InstructTrainConfig.model_validate(planned["train"]), collate, index=index,
                          prior_input_words=prior_input, prior_exposure_words=prior_exposure,
                          input_words=planned["input_words"], extra_metrics=extra)
            state, engine = train_stage(_model_with(base, weights), tokenizer, stage, cfg.distributed, report,
                                        resume_from=resume_here)
            weights = full_state_dict(engine)
            del engine
            prior_input, prior_exposure = state.total_input_words, state.total_exposure_words
    if report.rank == 0:
        report.flush()


def base_word_counts(base: Path) -> tuple[int, int]:
    """Input and exposure words of everything that made a base checkpoint (0, 0 if it does not say)."""
    from classit.train.loop import TRAINER_STATE, load_trainer_state

    if not (base / TRAINER_STATE).exists():
        return 0, 0
    state = load_trainer_state(base)
    return state.total_input_words, state.total_exposure_words


def plan_instruct(cfg: ClassitConfig, base_input: int, base_exposure: int):
    """Load and split the curriculum's datasets and plan its stages (with the word-budget check)."""
    from classit.data.curriculum import expand_curriculum, plan_curriculum, split_records
    from classit.data.instruct import load_records

    icfg = cfg.instruct
    stages = expand_curriculum(icfg)
    used = sorted({d for s in stages for d in s.datasets} or icfg.datasets)
    records = {name: load_records(name, icfg.datasets[name], seed=icfg.split_seed) for name in used}
    train, valid = split_records(records, icfg)
    return plan_curriculum(icfg, train, cfg.distributed.num_workers, base_input, base_exposure), train, valid, used


def prepare_instruct(cfg: ClassitConfig, base: Path):
    """On the driver: load, split, plan (with the budget check), encode and save every stage's data."""
    import datasets

    from classit.config import config_hash
    from classit.data.instruct import encode_record
    from classit.tokenizer import load_tokenizer

    icfg = cfg.instruct
    base_input, base_exposure = base_word_counts(base)
    plan, train, valid, used = plan_instruct(cfg, base_input, base_exposure)

    tokenizer = load_tokenizer(base)
    root = Path(cfg.run.cache_dir) / f"instruct-{config_hash(icfg, cfg.distributed.num_workers, str(base.resolve()))}"
    counts = {"dropped_too_long": 0, "truncated": 0}

    def encode(recs: list[dict]):
        rows = [encode_record(tokenizer, r, icfg.max_length, icfg.template) for r in recs]
        counts["dropped_too_long"] += sum(r is None for r in rows)
        kept = [r for r in rows if r is not None]
        counts["truncated"] += sum(r["truncated"] for r in kept)
        return datasets.Dataset.from_dict({k: [r[k] for r in kept] for k in ("input_ids", "labels", "num_words")})

    encode([r for name in used for r in valid[name]]).save_to_disk(str(root / "validation"))
    for index, stage in enumerate(plan.stages):
        encode([train[d][i] for d, i in stage.items]).save_to_disk(str(root / f"stage-{index}"))
    loop_config = {
        "base": str(base.resolve()), "data_root": str(root.resolve()),
        "curriculum": icfg.curriculum if isinstance(icfg.curriculum, str) else "custom",
        "base_input_words": base_input, "base_exposure_words": base_exposure,
        "stages": [{"name": s.name, "train": s.train.model_dump(mode="json"), "input_words": s.input_words}
                   for s in plan.stages],
    }
    return plan, counts, loop_config


def run_instruct(cfg: ClassitConfig, base: Path, log=print):
    """Instruction-tune `base` (an HF checkpoint folder) through the configured curriculum."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = named(cfg, instruct_kind(cfg), str(base.resolve()))
    plan, counts, loop_config = prepare_instruct(cfg, base)
    log(f"plan: {plan.summary()}")
    if counts["dropped_too_long"] or counts["truncated"]:
        log(f"records longer than instruct.max_length={cfg.instruct.max_length}: {counts['truncated']} had their "
            f"prompt cut from the left, {counts['dropped_too_long']} dropped (reply alone too long)")
    return make_trainer(cfg, instruct_worker, loop_config).fit()
