"""The one typed config tree: YAML in, validated once at the edge, one-line errors out.

Every later step (corpus, tokenizer, training, sweeps, results) reads its slice of a
`ClassitConfig`; `config_hash` of a slice keys the artefacts that slice determines.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)


class ConfigError(ValueError):
    """A bad config value; its message is one line that names the field or file."""


class LoadError(ConfigError):
    """A file or checkpoint that is there but does not load (cut short, damaged, foreign); its
    message names it, then the reader's own reason."""


def output_folder(flag: str, path: str | Path | None) -> None:
    """A folder flag (or config field) a command writes into, checked before it starts work (and Ray):
    a folder, or a path that can become one (no file in its way). Cloud storage URIs are left to
    their filesystem."""
    if not path or "://" in str(path):
        return
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"{flag} {path}: {folder} is a file, not a folder")
            return


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def held_by(what: str, count: int, each: dict[str, float]) -> tuple[str, dict[str, float]]:
    """What `count` workers or actors, each asking `each`, hold together, labelled `what` (see `ray_session`)."""
    return what, {name: count * amount for name, amount in each.items()}


class ModelConfig(Section):
    preset: Literal["tiny", "llama-100m", "llama-140m"] = "tiny"


class TokenizerConfig(Section):
    vocab_size: PositiveInt | None = Field(None, description="defaults to the preset's vocabulary size")
    min_frequency: PositiveInt = 2


class SyntheticCorpusConfig(Section):
    sentences: PositiveInt = 30_000
    seed: int = 0


class CorpusConfig(Section):
    """Exactly one source: a BabyLM folder (`path`), a `datasets` dataset, or the synthetic default."""

    path: Path | None = Field(None, description="folder of BabyLM <source>.train files")
    hf_dataset: str | None = Field(None, description="`datasets` name or local dataset folder")
    hf_split: str = "train"
    text_column: str = "text"
    synthetic: SyntheticCorpusConfig | None = None
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    block_size: PositiveInt = 128
    split_seed: int = 0
    num_proc: PositiveInt | None = Field(None, description="processes tokenizing the corpus; default: every core")

    @model_validator(mode="after")
    def _one_source(self) -> CorpusConfig:
        chosen = [n for n in ("path", "hf_dataset", "synthetic") if getattr(self, n) is not None]
        if not chosen:
            object.__setattr__(self, "synthetic", SyntheticCorpusConfig())
        elif len(chosen) > 1:
            raise ValueError(f"give one corpus source, not {' and '.join(chosen)}")
        if self.path is not None and not self.path.is_dir():
            raise ValueError(f"no such corpus folder: {self.path}")
        return self


class CheckpointConfig(Section):
    """Checkpoints at the BabyLM word marks of total exposure (1M..10M by 1M, 10M..100M by 10M,
    100M..1B by 100M), the base model's words included, plus one at the end of every stage.

    `word_scale` (unset: the marks exactly) multiplies every mark, so a small run (a demo, a test)
    gets the same shape of schedule.
    """

    schedule: Literal["babylm", "final"] = "babylm"
    word_scale: PositiveFloat | None = None
    resumable: bool = Field(True, description="also save DeepSpeed optimizer state, for resuming")


class TrainConfig(Section):
    """Optimisation of one training stage; pretraining and instruction-tuning stages share it."""

    learning_rate: PositiveFloat = 2e-4
    batch_size: PositiveInt = Field(8, description="micro-batch per worker (with global_batch_size: the largest)")
    gradient_accumulation_steps: PositiveInt = 1
    global_batch_size: PositiveInt | None = Field(
        None, description="rows per optimizer step over all workers, whatever their number: split at load into "
                          "the largest per-worker micro-batch up to batch_size that divides it, times accumulation")
    epochs: PositiveInt = 8
    max_steps: PositiveInt | None = Field(None, description="stop after this many optimizer steps")
    warmup_steps: NonNegativeInt = 5000
    schedule: Literal["linear", "cosine_with_restarts", "constant"] = "linear"
    restarts: PositiveInt = Field(1, description="cosine cycles for cosine_with_restarts")
    weight_decay: NonNegativeFloat = 0.0
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    max_grad_norm: PositiveFloat = 1.0
    eval_every_steps: PositiveInt = 200
    max_validation_rows: PositiveInt | None = Field(
        None, description="evaluate on this many rows of each validation set, evenly spaced through it "
                          "(every source alike); default: all")
    log_every_steps: PositiveInt = 10
    seed: int = 42
    checkpoints: CheckpointConfig = CheckpointConfig()

    def warmup_outlasting(self, steps: int) -> str:
        """'' or, where the warm-up is no shorter than the `steps` the stage runs, what that leaves of
        the learning rate: its ramp (`train.loop.lr_factor`) ends at steps / (warmup + 1) of the peak."""
        if self.warmup_steps < steps:
            return ""
        return (f"warm-up of {self.warmup_steps:,} steps, no shorter than the {steps:,} it runs: its learning rate "
                f"peaks at {steps / (self.warmup_steps + 1):.0%} of {self.learning_rate:g}")


class DistributedConfig(Section):
    num_workers: PositiveInt = 2
    zero_stage: Literal[0, 1, 2, 3] = 2
    use_gpu: bool = False
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    cpus_per_worker: PositiveFloat = 1.0
    worker_resources: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="custom Ray resources per worker, e.g. {train_node: 1}: routes "
                                          "training workers to a cluster's training nodes")
    max_failures: NonNegativeInt = Field(3, description="worker failures survived by resuming")
    compile: bool = Field(False, description="torch.compile the model through DeepSpeed: fixed-shape pretraining "
                                             "blocks compile once per worker (tens of seconds), then steps run faster")

    def held(self) -> tuple[str, dict[str, float]]:
        """What one training run holds while it trains, named by its fields (see `ray_session`)."""
        return held_by(f"distributed (num_workers {self.num_workers}, cpus_per_worker {self.cpus_per_worker:g}"
                       f"{', use_gpu' if self.use_gpu else ''})", self.num_workers,
                       {"CPU": self.cpus_per_worker, "GPU": float(self.use_gpu), **self.worker_resources})

    @model_validator(mode="after")
    def _compile_needs_whole_weights(self) -> DistributedConfig:
        if self.compile and self.zero_stage == 3:
            raise ValueError("compile: not supported with zero_stage 3 (its parameters are gathered in hooks)")
        return self


class InstructTrainConfig(TrainConfig):
    """Instruction-tuning defaults from the paper: lr 2e-5, 10 epochs, cosine with restarts, 500 warm-up."""

    learning_rate: PositiveFloat = 2e-5
    epochs: PositiveInt = 10
    warmup_steps: NonNegativeInt = 500
    schedule: Literal["linear", "cosine_with_restarts", "constant"] = "cosine_with_restarts"


# The study's request (PAPER.md: 3 pairs per article, answers a child can follow, 2-3+ sentences);
# its exact wording is not published, so this is ours. Placeholders: {title}, {article}, {n}.
DEFAULT_QA_TEMPLATE = (
    "Here is an article from Simple English Wikipedia.\n\nTitle: {title}\n\n{article}\n\n"
    "Write {n} questions a curious child might ask about this article, each with an answer a child can "
    "follow: simple words, and at least two or three full sentences. Reply in JSON."
)
QA_PLACEHOLDERS = ("title", "article", "n")


class SamplingConfig(Section):
    """How the teacher samples; with `do_sample: false`, greedy decoding."""

    do_sample: bool = True
    temperature: PositiveFloat = 0.7
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: PositiveInt = Field(512, description="per article: the whole JSON object of its pairs")


class GenerateConfig(Section):
    """Teacher-written Q&A (`classit generate-qa`): articles from exactly one source, a teacher causal LM
    asked for `pairs_per_article` question/answer pairs each, decoding constrained to a JSON schema, every
    pair checked. The set is cached by a hash of (articles, teacher, template, the settings below but the
    execution ones), in shards a rerun keeps."""

    articles: Path | None = Field(None, description="a BabyLM simple_wiki.train file: '= = = Title = = =' lines "
                                                    "start articles (without any, blank lines part them)")
    hf_dataset: str | None = Field(None, description="`datasets` name or local dataset folder, an article a row")
    hf_split: str = "train"
    text_column: str = "text"
    title_column: str | None = None
    synthetic: SyntheticCorpusConfig | None = Field(None, description="the articles of the synthetic corpus")
    max_articles: PositiveInt | None = Field(None, description="the first this many articles")
    max_article_words: PositiveInt = Field(400, description="longer articles are cut to their first words")
    teacher: str = Field(description="a local Hugging Face model folder or a hub name; `synthetic`: a tiny teacher "
                                     "classit trains on the synthetic articles (the embedded demo)")
    chat_template: bool = Field(True, description="wrap the prompt in the teacher's chat template where it has one")
    template: str = DEFAULT_QA_TEMPLATE
    pairs_per_article: PositiveInt = Field(3, description="question/answer pairs asked of each article")
    min_answer_sentences: PositiveInt = 2
    min_answer_words: PositiveInt = 10
    max_attempts: PositiveInt = Field(3, description="generations per article until it has all its valid pairs")
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0
    batch_size: PositiveInt = Field(8, description="articles per generate call")
    articles_per_shard: PositiveInt = Field(64, description="the unit of work, of the cache, and of resuming")
    actors: PositiveInt = Field(2, description="Ray Data actors, each holding the teacher")
    cpus_per_actor: PositiveFloat = 1.0
    gpus_per_actor: NonNegativeFloat = 0.0
    jsonl: bool = Field(False, description="also write records.jsonl beside records.parquet")

    @model_validator(mode="after")
    def _checked(self) -> GenerateConfig:
        chosen = [n for n in ("articles", "hf_dataset", "synthetic") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one article source: articles, hf_dataset or synthetic "
                             f"(got {' and '.join(chosen) or 'none'})")
        if self.articles is not None and not self.articles.is_file():
            raise ValueError(f"articles: no such file: {self.articles}")
        if self.teacher == "synthetic" and self.synthetic is None:
            raise ValueError("teacher: the synthetic teacher writes about the synthetic corpus's articles "
                             "(set synthetic)")
        fields = {name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None}
        if "article" not in fields:
            raise ValueError("template: has no {article} placeholder (the article's text goes there)")
        unknown = sorted(fields - set(QA_PLACEHOLDERS))
        if unknown:
            raise ValueError(f"template: unknown placeholder {{{unknown[0]}}} (known: {', '.join(QA_PLACEHOLDERS)})")
        return self


class InstructDataset(Section):
    """Prompt/reply records from exactly one source."""

    path: Path | None = Field(None, description="JSONL, JSON or Parquet file, or a datasets save_to_disk folder")
    hf_dataset: str | None = Field(None, description="`datasets` name or local dataset folder")
    hf_split: str = "train"
    switchboard: Path | None = Field(None, description="a BabyLM switchboard.train file, cut into pairs")
    synthetic: Literal["conversation", "qa"] | None = None
    generate: GenerateConfig | None = Field(None, description="teacher-written Q&A, made by classit generate-qa")
    max_records: PositiveInt | None = Field(None, description="keep a seeded subset, e.g. to fit the word budget")

    @model_validator(mode="after")
    def _one_source(self) -> InstructDataset:
        sources = ("path", "hf_dataset", "switchboard", "synthetic", "generate")
        chosen = [n for n in sources if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of {', '.join(sources)} (got {chosen or 'none'})")
        for name in ("path", "switchboard"):
            value = getattr(self, name)
            if value is not None and not value.exists():
                raise ValueError(f"no such file: {value}")
        return self


class StageConfig(Section):
    """One curriculum stage: a mixture of datasets and how long to train on it.

    `weights` (summing to 1) set each dataset's share of the stage's items; without them the
    datasets are concatenated at their natural sizes. The other fields override `instruct.train`.
    """

    datasets: list[str] = Field(min_length=1)
    weights: list[float] | None = None
    name: str | None = None
    epochs: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    max_words: PositiveInt | None = Field(None, description="stop after this many words of exposure")
    learning_rate: PositiveFloat | None = None
    warmup_steps: NonNegativeInt | None = None
    schedule: Literal["linear", "cosine_with_restarts", "constant"] | None = None

    @model_validator(mode="after")
    def _weights(self) -> StageConfig:
        if self.weights is not None:
            if len(self.weights) != len(self.datasets):
                raise ValueError(f"weights: {len(self.weights)} weights for {len(self.datasets)} datasets")
            if any(w < 0 for w in self.weights) or abs(sum(self.weights) - 1.0) > 1e-6:
                raise ValueError(f"weights: must be >= 0 and sum to 1 (got {self.weights}, sum {sum(self.weights):g})")
        return self


class WordBudgetConfig(Section):
    """The BabyLM limits, checked for pretraining and every planned trial before anything runs:
    words of input data (pretraining corpus and instruction records, teacher-written ones
    included) and words of exposure (counting repeated epochs)."""

    max_input_words: PositiveInt = 100_000_000
    max_exposure_words: PositiveInt = 1_000_000_000
    allow_over_budget: bool = False


class TemplateConfig(Section):
    """A record becomes: prompt_prefix + prompt, the <|reply|> boundary token, reply_prefix + reply, EOS."""

    prompt_prefix: str = ""
    reply_prefix: str = ""


def _default_instruct_datasets() -> dict[str, InstructDataset]:
    return {"switch": InstructDataset(synthetic="conversation"), "wiki": InstructDataset(synthetic="qa")}


class InstructConfig(Section):
    datasets: dict[str, InstructDataset] = Field(default_factory=_default_instruct_datasets)
    curriculum: Literal["pt", "switch", "wiki", "merged", "switch_wiki", "wiki_switch"] | list[StageConfig] = \
        "switch_wiki"
    mix_ratio: float | None = Field(None, ge=0.0, le=1.0, description="merged only: the conversational share")
    train: InstructTrainConfig = InstructTrainConfig()
    max_length: PositiveInt = Field(256, description="tokens per sequence; longer prompts are cut from the left")
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    split_seed: int = 0
    template: TemplateConfig = TemplateConfig()

    @model_validator(mode="after")
    def _stages_name_known_datasets(self) -> InstructConfig:
        if self.mix_ratio is not None and self.curriculum != "merged":
            raise ValueError("mix_ratio: only applies to the merged curriculum")
        if isinstance(self.curriculum, str):
            needed = {"pt": []}.get(self.curriculum, ["switch", "wiki"] if self.curriculum in
                                    ("merged", "switch_wiki", "wiki_switch") else [self.curriculum])
            where = f"curriculum {self.curriculum}"
        elif not self.curriculum:
            raise ValueError("curriculum: a list of no stages (the base alone is the curriculum pt)")
        else:
            needed = [d for stage in self.curriculum for d in stage.datasets]
            where = "curriculum"
        unknown = sorted(set(needed) - set(self.datasets))
        if unknown:
            raise ValueError(f"{where}: unknown dataset {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(sorted(self.datasets)) or 'none'})")
        return self


class EvaluationConfig(Section):
    """What each trial's checkpoints are scored on, by the pool of Ray evaluation actors."""

    tasks: list[str] = Field(default_factory=lambda: ["blimp"], min_length=1)
    finetune_pooling: Literal["final", "official"] = Field(
        "final", description="(Super)GLUE head input: final = the last real token (sees the whole input); official = "
                             "right padding and the first position, as the official pipeline runs it")
    data_dir: Path | None = Field(None, description="the official evaluation_data layout; None: probe sets "
                                                    "generated from the synthetic grammar")
    fast: bool = True
    checkpoints: Literal["final", "all"] = Field("final", description="all: every word-budget checkpoint too")
    actors: PositiveInt = 2
    cpus_per_actor: NonNegativeFloat = 1.0
    gpus_per_actor: NonNegativeFloat = 0.0
    actor_resources: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="custom Ray resources per actor, e.g. {eval_node: 1}: routes the "
                                          "evaluation actors to a cluster's evaluation nodes")

    def held(self) -> tuple[str, dict[str, float]]:
        """What the evaluation actors hold for a whole sweep, named by its fields (see `ray_session`)."""
        return held_by(f"evaluation (actors {self.actors}, cpus_per_actor {self.cpus_per_actor:g}, "
                       f"gpus_per_actor {self.gpus_per_actor:g})", self.actors,
                       {"CPU": self.cpus_per_actor, "GPU": self.gpus_per_actor, **self.actor_resources})

    @model_validator(mode="after")
    def _known(self) -> EvaluationConfig:
        from classit.evaluate.catalog import task_names_problem

        if problem := task_names_problem(self.tasks):
            raise ValueError(f"tasks: {problem}")
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ValueError(f"data_dir: no such folder: {self.data_dir}")
        return self


class Dimension(Section):
    """One swept parameter: exactly one of a list of choices, a (log-)uniform range, an integer range."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = None
    integer: tuple[int, int] | None = Field(None, alias="int")

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        kinds = [k for k in ("choice", "uniform", "loguniform", "integer") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of choice, uniform, loguniform, int (got {kinds or 'none'})")
        for kind in ("uniform", "loguniform", "integer"):
            low_high = getattr(self, kind)
            if low_high is not None and low_high[0] > low_high[1]:
                raise ValueError(f"{kind if kind != 'integer' else 'int'}: low {low_high[0]} > high {low_high[1]}")
        return self


class SweepConfig(Section):
    """The search: which parameters vary, how they are searched, and what is optimised."""

    name: str | None = Field(None, min_length=1, description="default: sweep-<config hash>")
    search: Literal["tpe", "random", "grid"] = "tpe"
    space: dict[str, Dimension] = Field(default_factory=dict)
    num_samples: PositiveInt = Field(8, description="tpe/random: configurations drawn (grid: every one)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="each configuration runs once per seed (instruct.train.seed)")
    metrics: list[str] = Field(default_factory=lambda: ["val_loss"], min_length=1,
                               description="val_loss or <task>[:<subtask>[:<metric>]]; two or more: Pareto front")
    modes: list[Literal["min", "max"]] = Field(default_factory=lambda: ["min"], min_length=1)
    max_concurrent_trials: PositiveInt = 1
    max_failures: NonNegativeInt = Field(1, description="trial retries, each from its newest checkpoint")
    asha: bool = Field(False, description="stop poor trials early on their stage validation loss")
    search_seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if not self.space:
            raise ValueError("space: empty search space (give at least one parameter)")
        if len(self.modes) != len(self.metrics):
            raise ValueError(f"modes: {len(self.modes)} modes for {len(self.metrics)} metrics")
        if self.search == "grid":
            ranged = [name for name, dim in self.space.items() if dim.choice is None]
            if ranged:
                raise ValueError(f"space.{ranged[0]}: grid search needs a list of choices")
        if self.asha and len(self.metrics) > 1:
            raise ValueError("asha: early stopping needs a single objective")
        return self


class MLflowTracking(Section):
    tracking_uri: str | None = Field(None, description="default: MLflow's own (MLFLOW_TRACKING_URI, else ./mlruns)")
    experiment: str | None = Field(None, description="default: the sweep's name")


class WandbTracking(Section):
    project: str = "classit"
    group: str | None = Field(None, description="default: the sweep's name")
    mode: Literal["online", "offline", "disabled"] = "online"


class TensorBoardTracking(Section):
    """Event files in each trial's folder of the sweep: `tensorboard --logdir <storage>/<sweep>`."""


class TrackingConfig(Section):
    """Experiment trackers a sweep's trials log to, each through Ray Tune's logger callback; off by default."""

    mlflow: MLflowTracking | None = None
    wandb: WandbTracking | None = None
    tensorboard: TensorBoardTracking | None = None

    def named(self) -> list[str]:
        """The trackers this config turns on."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


class RunConfig(Section):
    name: str | None = Field(None, min_length=1, description="default: <pretrain|instruct-<curriculum>>-<config hash>")
    storage_path: str = Field("runs", description="Ray storage: local folder or cloud URI")
    cache_dir: Path = Path(".cache/classit")
    keep_optimizer_states: PositiveInt | None = Field(
        1, description="checkpoints that keep their DeepSpeed optimizer state (the newest); older ones keep their "
                       "weights only. null: all keep it")


class ClassitConfig(Section):
    model: ModelConfig = ModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    corpus: CorpusConfig = CorpusConfig()
    pretrain: TrainConfig = TrainConfig()
    instruct: InstructConfig = InstructConfig()
    distributed: DistributedConfig = DistributedConfig()
    budget: WordBudgetConfig = WordBudgetConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    sweep: SweepConfig | None = None
    tracking: TrackingConfig = TrackingConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _split_global_batches(self) -> ClassitConfig:
        """A global batch becomes a per-worker micro-batch and accumulation for this worker count."""
        workers = self.distributed.num_workers
        for path, section in (("pretrain", self), ("instruct.train", self.instruct)):
            name = path.split(".")[-1]
            tcfg = getattr(section, name)
            if tcfg.global_batch_size is None:
                continue
            per_worker, rest = divmod(tcfg.global_batch_size, workers)
            if rest or not per_worker:
                raise ValueError(f"{path}.global_batch_size: {tcfg.global_batch_size} rows do not split evenly over "
                                 f"{workers} workers (distributed.num_workers)")
            micro = max(d for d in range(1, min(tcfg.batch_size, per_worker) + 1) if per_worker % d == 0)
            object.__setattr__(section, name, tcfg.model_copy(
                update={"batch_size": micro, "gradient_accumulation_steps": per_worker // micro}))
        return self

    @model_validator(mode="after")
    def _blocks_fit_the_model(self) -> ClassitConfig:
        from classit.models import PRESETS

        positions = PRESETS[self.model.preset]["max_position_embeddings"]
        if self.corpus.block_size > positions:
            raise ValueError(f"corpus.block_size: {self.corpus.block_size} tokens, more than the {self.model.preset} "
                             f"preset's {positions} positions (model.preset)")
        return self


def _is_branch_tag(part) -> bool:
    # Pydantic names the branches of a union in the error location, e.g. "literal['pt',...]".
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


def _relevant(errors: list[dict]) -> dict:
    """Of a union's branch errors, the one for the branch the input was meant for."""
    for e in errors:
        wrong_branch = (e["type"] == "literal_error" and not isinstance(e.get("input"), str)) or \
                       (e["type"] == "list_type" and isinstance(e.get("input"), str))
        if not wrong_branch:
            return e
    return errors[0]


def validation_line(err: ValidationError, source: str, overrides: Sequence[str] = ()) -> str:
    """A pydantic validation error as one line: `source: field.path: what is wrong (got value)`. A field
    whose value an override gave (`--set KEY=VALUE`, or a flag that sets one) names that override as
    its source, not the file."""
    first = _relevant(err.errors())
    field = ".".join(str(p) for p in first["loc"] if not _is_branch_tag(p)) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    inner = re.match(r"^([A-Za-z_][\w.]*): ", msg)  # a section's check naming its own field
    if inner:
        field = inner.group(1) if field == "<root>" else f"{field}.{inner.group(1)}"
        msg = msg[inner.end():]
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        msg = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict):
        msg += f" (got {first['input']!r})"
    keys = [override.partition("=")[0].strip() for override in overrides]
    set_by = [o for o, key in zip(overrides, keys) if field == key or field.startswith(f"{key}.")]
    return f"{f'override {set_by[-1]}' if set_by else source}: {field}: {msg}"


def parse_config(data: dict[str, Any], source: str = "config", overrides: Sequence[str] = ()) -> ClassitConfig:
    try:
        return ClassitConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_line(err, source, overrides)) from None


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, lists, bools)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. pretrain.learning_rate=1e-4")
    *parents, leaf = key.strip().split(".")
    node = data
    for depth, part in enumerate(parents):
        if part not in node:  # a map's default entries stay, beside the one changed (instruct.datasets.switch...)
            node[part] = map_default(parents[:depth + 1]) or {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw)


def section_class(annotation) -> type[BaseModel] | None:
    """The pydantic section class an annotation holds (`X` or `X | None`), else None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] \
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) else [annotation]
    return args[0] if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel) else None


def map_default(path: list[str]) -> dict[str, Any] | None:
    """The default entries of the config's map field at `path` (e.g. instruct.datasets) as config
    data; None where `path` is not a map field."""
    model = ClassitConfig
    for part in path[:-1]:
        field = model.model_fields.get(part)
        if field is None or (model := section_class(field.annotation)) is None:
            return None
    field = model.model_fields.get(path[-1])
    if field is None or typing.get_origin(field.annotation) is not dict:
        return None
    return {name: entry.model_dump(mode="json", exclude_unset=True) if isinstance(entry, BaseModel) else entry
            for name, entry in field.get_default(call_default_factory=True).items()}


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ClassitConfig:
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(err, 'problem', err)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    for override in overrides:
        apply_override(data, override)
    return parse_config(data, source, overrides)


def config_json(cfg: BaseModel) -> str:
    """The whole config as sorted JSON: the `config` column every result row carries."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


def config_hash(*parts: BaseModel | dict | str | int | None) -> str:
    """A short stable content hash of config slices (and any extra key material)."""
    payload = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
