"""The one typed config tree: YAML in, validated once at the edge, one-line errors out.

Every later step (corpus, tokenizer, training, sweeps, results) reads its slice of a
`ClassitConfig`; `config_hash` of a slice keys the artefacts that slice determines.
"""

from __future__ import annotations

import hashlib
import json
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


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    num_proc: PositiveInt = 2

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
    """Checkpoints at the BabyLM word marks (1M..10M by 1M, 10M..100M by 10M, 100M..1B by 100M).

    `word_scale` multiplies every mark so a small run gets the same shape of schedule;
    None scales the 1B-word schedule down to the run's planned exposure.
    """

    schedule: Literal["babylm", "final"] = "babylm"
    word_scale: PositiveFloat | None = None
    resumable: bool = Field(True, description="also save DeepSpeed optimizer state, for resuming")


class TrainConfig(Section):
    """Optimisation of one training stage; pretraining and instruction-tuning stages share it."""

    learning_rate: PositiveFloat = 2e-4
    batch_size: PositiveInt = Field(8, description="micro-batch per worker")
    gradient_accumulation_steps: PositiveInt = 1
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
    log_every_steps: PositiveInt = 10
    seed: int = 42
    checkpoints: CheckpointConfig = CheckpointConfig()


class DistributedConfig(Section):
    num_workers: PositiveInt = 2
    zero_stage: Literal[0, 1, 2, 3] = 2
    use_gpu: bool = False
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    cpus_per_worker: PositiveFloat = 1.0
    max_failures: NonNegativeInt = Field(3, description="worker failures survived by resuming")


class RunConfig(Section):
    name: str = Field("pretrain", min_length=1)
    storage_path: str = Field("runs", description="Ray storage: local folder or cloud URI")
    cache_dir: Path = Path(".cache/classit")


class ClassitConfig(Section):
    model: ModelConfig = ModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    corpus: CorpusConfig = CorpusConfig()
    pretrain: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()
    run: RunConfig = RunConfig()


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict):
        msg += f" (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {field}: {msg}{more}"


def parse_config(data: dict[str, Any], source: str = "config") -> ClassitConfig:
    try:
        return ClassitConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, lists, bools)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. pretrain.learning_rate=1e-4")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw)


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
    return parse_config(data, source)


def config_hash(*parts: BaseModel | dict | str | int | None) -> str:
    """A short stable content hash of config slices (and any extra key material)."""
    payload = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
