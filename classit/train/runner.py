"""Ray Train wiring: a TorchTrainer whose workers run `loop.train_stage` and report to Ray.

A worker failure restarts the worker group from the newest reported checkpoint
(`FailureConfig.max_failures`); rerunning with the same run name resumes the same way.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from pydantic import BaseModel
from ray.train import UserCallback

from classit.config import ClassitConfig, ConfigError, config_json
from classit.results import storage_uri, table_dir, train_metrics_schema, write_rows
from classit.train.checkpoints import prune_optimizer_states

# Workers print their own progress lines; Ray's print patch would log each one twice.
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}

# A report's key for the steps logged since the previous report, as JSON: a list of
# {"exposure_words": n, "train": {metric: value}} (experiment trackers log each one).
TRACKED_STEPS = "tracked_steps"
TRACKED_METRICS = ("loss", "lr", "tokens_per_s", "step", "stage_index")


class WorkerPayload(BaseModel):
    """What every Ray Train worker of a run receives (as JSON, through `train_loop_config`)."""

    config: ClassitConfig
    metrics_dir: str | None = None  # where `train_metrics` rows go: a sweep gathers all its trials' in one


class PretrainPayload(WorkerPayload):
    corpus_root: str


def quiet_worker() -> None:
    """Progress bars and deprecation chatter from libraries drown the training log."""
    import logging
    import warnings

    import datasets
    import transformers
    from ray.train.v2._internal.execution import context

    # Ray logs every report at INFO under a logger named by file path, outside LoggingConfig's reach.
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


class MetricRows:
    """A run's `train_metrics` rows, each with the run's name, the time and the whole config;
    written to Parquet (the payload's metrics folder, else the run's own) at each `flush`."""

    def __init__(self, payload: WorkerPayload, validation_sets=()):
        cfg = payload.config
        self.folder = payload.metrics_dir or table_dir(cfg.run.storage_path, cfg.run.name, "train_metrics")
        self.trial = cfg.run.name
        self.config = config_json(cfg)  # whole, in every row
        self.schema = train_metrics_schema([name for name in validation_sets if name])
        self.rows: list[dict] = []

    def add(self, metrics: dict) -> None:
        self.rows.append({"trial": self.trial, "time": time.time(), **metrics, "config": self.config})

    def flush(self, key: str | None = None) -> None:
        """`key`: the part file replaces an earlier one of the same key (a run's rerun of the same rows)."""
        write_rows(self.folder, self.rows, self.schema, key=key)
        self.rows = []


class RayReporter:
    """Rank 0 keeps every metric row; Ray Train hears of evaluations and checkpoints only, and at
    each of them the rows since the last one are written first (a trial stopped early, or killed,
    keeps every row it reported). A part file is keyed by the run, stage and step it ends at: a
    run resumed from a checkpoint ends its parts at the same steps and replaces them, never doubles them.

    A `ray.train.report` waits for the controller to take the previous one, which it does on its
    health-check tick: reporting every log line would throttle training to that tick.
    """

    def __init__(self, payload: WorkerPayload, validation_sets=()):
        import ray.train

        self.train = ray.train
        self.rank = ray.train.get_context().get_world_rank()
        self.rows = MetricRows(payload, validation_sets)
        self.unreported_steps: list[dict] = []

    def __call__(self, metrics: dict, checkpoint_dir: str | None = None, name: str | None = None) -> None:
        if self.rank == 0:
            self.rows.add(metrics)
            if "loss" in metrics:
                self.unreported_steps.append({"exposure_words": metrics["exposure_words"], "train": {
                    k: metrics[k] for k in TRACKED_METRICS if k in metrics}})
        if checkpoint_dir is None and "val_loss" not in metrics:
            return  # every rank decides alike, so all still report the same number of times
        if self.rank == 0:
            self.flush()
        checkpoint = self.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        steps, self.unreported_steps = self.unreported_steps, []
        self.train.report({**metrics, TRACKED_STEPS: json.dumps(steps)}, checkpoint=checkpoint,
                          checkpoint_dir_name=name)

    def flush(self) -> None:
        if self.rows.rows:
            last = self.rows.rows[-1]
            self.rows.flush(key=f"{self.rows.trial}/{last['stage_index']}/{last['stage']}/{last['step']}")


def pretrain_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train

    from classit.data.corpus import PreparedCorpus
    from classit.models import build_model
    from classit.tokenizer import load_tokenizer
    from classit.train.loop import Stage, collate_blocks, train_stage

    quiet_worker()
    payload = PretrainPayload.model_validate(loop_config)
    cfg = payload.config
    corpus = PreparedCorpus.load(Path(payload.corpus_root))
    tokenizer = load_tokenizer(corpus.tokenizer_path)
    model = build_model(cfg.model.preset, tokenizer, seed=cfg.pretrain.seed)
    stage = Stage("pretrain", corpus.load_blocks("train"), {"": corpus.load_blocks("validation")}, cfg.pretrain,
                  partial(collate_blocks, pad_id=tokenizer.pad_token_id), input_words=corpus.stats["train"]["words"])
    report = RayReporter(payload)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as resume_dir:
        train_stage(model, tokenizer, stage, cfg.distributed, report,
                    resume_from=Path(resume_dir) if resume_dir else None)
    if report.rank == 0:
        report.flush()


class OptimizerStateRetention(UserCallback):
    """Runs in Ray Train's controller: once a checkpoint is registered, the older checkpoints beyond
    the newest `keep` lose their optimizer state (their weights stay)."""

    def __init__(self, keep: int):
        self.keep = keep

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is not None:
            prune_optimizer_states(checkpoint.filesystem, checkpoint.path, self.keep)


def make_trainer(worker_fn, payload: WorkerPayload, callbacks: list = ()):
    """A TorchTrainer running `worker_fn(payload)` on the payload's config's workers.
    Ray keeps every checkpoint (each mark's weights are evaluated); the optimizer state is pruned
    to `run.keep_optimizer_states`."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = payload.config
    dcfg = cfg.distributed
    env = dict(WORKER_ENV, **({} if dcfg.use_gpu else {"DS_ACCELERATOR": "cpu"}))
    keep = cfg.run.keep_optimizer_states
    retention = [OptimizerStateRetention(keep)] if keep else []
    return TorchTrainer(
        worker_fn,
        train_loop_config=payload.model_dump(mode="json"),
        torch_config=TorchConfig(backend="nccl" if dcfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=dcfg.num_workers, use_gpu=dcfg.use_gpu,
                                     resources_per_worker={"CPU": dcfg.cpus_per_worker, **dcfg.worker_resources}),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage_uri(cfg.run.storage_path),
                             failure_config=FailureConfig(max_failures=dcfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=None),
                             worker_runtime_env={"env_vars": env}, callbacks=[*retention, *callbacks],
                             logging_config=LoggingConfig(log_level="WARNING")),
    )


def named(cfg: ClassitConfig, kind: str, *key) -> ClassitConfig:
    """The config with its run name filled in, `<kind>-<hash of the config>` by default.

    Ray Train resumes a run of the same name and storage, so the same command resumes itself and
    a changed config starts a run of its own.
    """
    if cfg.run.name is not None:
        return cfg
    from classit.config import config_hash

    name = f"{kind}-{config_hash(cfg.model_dump(mode='json', exclude={'run', 'tracking'}), *key)[:8]}"
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": name})})


def prepare_pretraining(cfg: ClassitConfig):
    """On the driver, no Ray needed: the named config and its prepared corpus (cached), with the
    planned words checked against the budget before any worker starts."""
    from classit.budget import check_budget, pretraining_exposure
    from classit.data.corpus import corpus_fingerprint, prepare_corpus
    from classit.train.loop import planned_steps

    cfg = named(cfg, "pretrain", corpus_fingerprint(cfg.corpus, Path(cfg.run.cache_dir)))  # an edited corpus: a new run
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    corpus = prepare_corpus(cfg)
    blocks, workers = corpus.stats["train"]["blocks"], cfg.distributed.num_workers
    steps = planned_steps(blocks, cfg.pretrain, workers)
    if steps == 0:
        raise ConfigError(f"pretrain: the corpus's {blocks} training blocks are too few for one step of "
                          f"{cfg.pretrain.batch_size} rows x {workers} workers x "
                          f"{cfg.pretrain.gradient_accumulation_steps} accumulation "
                          "(pretrain.batch_size, distributed.num_workers)")
    if note := cfg.pretrain.warmup_outlasting(steps):
        print(f"warning: pretrain: {note} (pretrain.warmup_steps)")
    words = corpus.stats["train"]["words"]
    exposure = pretraining_exposure(cfg.pretrain, words, blocks, workers)
    check_budget(words, exposure, cfg.budget, f"pretraining ({words:,} input words, {exposure:,} of exposure)")
    return cfg, corpus


def run_pretraining(cfg: ClassitConfig, prepared=None, metrics_dir: str | None = None, callbacks: list = ()):
    """Pretrain on Ray Train workers from the prepared corpus (prepared now if not given); returns
    Ray's Result. The one pretraining path: `classit pretrain`, the sweep's base builder and the tests."""
    cfg, corpus = prepared or prepare_pretraining(cfg)
    payload = PretrainPayload(config=cfg, corpus_root=str(corpus.root.resolve()), metrics_dir=metrics_dir)
    return make_trainer(pretrain_worker, payload, callbacks).fit()
