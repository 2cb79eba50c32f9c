"""Curricula: named presets -> ordered stages -> sampled, encoded stage datasets and word counts.

Everything here runs on the driver before training starts, so a bad curriculum or an
over-budget plan fails before any worker is started.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from classit.budget import check_budget
from classit.config import ConfigError, InstructConfig, InstructTrainConfig, StageConfig, WordBudgetConfig
from classit.data.corpus import split_train_validation
from classit.data.instruct import record_words


def expand_curriculum(icfg: InstructConfig) -> list[StageConfig]:
    """The stages of a preset name (or the explicit list), in order."""
    if not isinstance(icfg.curriculum, str):
        return list(icfg.curriculum)
    if icfg.curriculum == "merged":
        ratio = icfg.mix_ratio
        weights = None if ratio is None else [ratio, 1.0 - ratio]
        return [StageConfig(name="merged", datasets=["switch", "wiki"], weights=weights)]
    return [StageConfig(name=name, datasets=[name]) for name in icfg.curriculum.split("_") if name != "pt"]


def stage_names(stages: list[StageConfig]) -> list[str]:
    names = [s.name or "+".join(s.datasets) for s in stages]
    return [f"{i}-{n}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def stage_train_config(base: InstructTrainConfig, stage: StageConfig) -> InstructTrainConfig:
    overrides = {k: getattr(stage, k) for k in ("epochs", "max_steps", "learning_rate", "warmup_steps", "schedule")
                 if getattr(stage, k) is not None}
    return base.model_copy(update=overrides)


def sample_mixture(sizes: dict[str, int], datasets: list[str], weights: list[float] | None,
                   seed: int) -> list[tuple[str, int]]:
    """(dataset, record index) items of one stage, shuffled.

    Without weights: every record of every dataset once (natural sizes). With weights: the stage
    keeps the natural total and gives each dataset its share, cycling through a shuffled copy of
    a dataset that has fewer records than its share.
    """
    rng = random.Random(seed)
    if weights is None:
        items = [(name, i) for name in datasets for i in range(sizes[name])]
    else:
        total = sum(sizes[name] for name in datasets)
        items = []
        for name, weight in zip(datasets, weights):
            order = list(range(sizes[name]))
            rng.shuffle(order)
            share = round(weight * total)
            items += [(name, order[k % len(order)]) for k in range(share)]
    rng.shuffle(items)
    return items


@dataclass
class StagePlan:
    name: str
    items: list[tuple[str, int]]
    train: InstructTrainConfig
    steps: int
    input_words: int  # words of records no earlier stage used
    exposure_words: int  # planned words of exposure, repeats included


@dataclass
class CurriculumPlan:
    stages: list[StagePlan]
    base_input_words: int
    base_exposure_words: int

    @property
    def input_words(self) -> int:
        return self.base_input_words + sum(s.input_words for s in self.stages)

    @property
    def exposure_words(self) -> int:
        return self.base_exposure_words + sum(s.exposure_words for s in self.stages)

    def summary(self) -> str:
        parts = [f"{s.name}: {s.steps} steps, {s.input_words:,} new input words, {s.exposure_words:,} exposure"
                 + (f" ({note})" if (note := s.train.warmup_outlasting(s.steps)) else "") for s in self.stages]
        return (f"base {self.base_input_words:,} input / {self.base_exposure_words:,} exposure words; "
                + "; ".join(parts or ["no instruction stages"])
                + f"; total {self.input_words:,} input / {self.exposure_words:,} exposure words")


def split_records(records: dict[str, list[dict]], icfg: InstructConfig):
    """Each dataset split into train and validation records (seeded, disjoint)."""
    train, valid = {}, {}
    for name, recs in records.items():
        train[name], valid[name] = split_train_validation(recs, icfg.validation_fraction, icfg.split_seed)
    return train, valid


def plan_curriculum(icfg: InstructConfig, train_records: dict[str, list[dict]], world_size: int,
                    base_input_words: int, base_exposure_words: int, budget: WordBudgetConfig) -> CurriculumPlan:
    """Stages with their sampled items, step counts and word counts; checks the word budget."""
    sizes = {name: len(recs) for name, recs in train_records.items()}
    used: set[tuple[str, int]] = set()
    stages = []
    for index, (stage, name) in enumerate(zip(expand_curriculum(icfg), stage_names(expand_curriculum(icfg)))):
        tcfg = stage_train_config(icfg.train, stage)
        items = sample_mixture(sizes, stage.datasets, stage.weights, seed=icfg.split_seed + index)
        if not items:
            raise ConfigError(f"instruct: stage {name} has no training records")
        words = [record_words(train_records[d][i]) for d, i in items]
        mean_words = sum(words) / len(words)
        rows_per_step = tcfg.batch_size * world_size * tcfg.gradient_accumulation_steps
        steps = len(items) // rows_per_step * tcfg.epochs
        if tcfg.max_steps:
            steps = min(steps, tcfg.max_steps)
        if stage.max_words:
            steps = min(steps, math.ceil(stage.max_words / (rows_per_step * mean_words)))
        if steps == 0:
            raise ConfigError(f"instruct: stage {name} has {len(items)} records, too few for one step of "
                              f"{rows_per_step} rows")
        tcfg = tcfg.model_copy(update={"max_steps": steps})
        new = set(items) - used
        used |= new
        stages.append(StagePlan(name, items, tcfg, steps, input_words=sum(record_words(train_records[d][i])
                                                                          for d, i in new),
                                exposure_words=round(steps * rows_per_step * mean_words)))
    plan = CurriculumPlan(stages, base_input_words, base_exposure_words)
    check_budget(plan.input_words, plan.exposure_words, budget,
                 f"curriculum {curriculum_name(icfg)} ({plan.summary()})")
    return plan


def curriculum_name(icfg: InstructConfig) -> str:
    return icfg.curriculum if isinstance(icfg.curriculum, str) else ">".join("+".join(s.datasets)
                                                                             for s in icfg.curriculum)
