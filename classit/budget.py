"""The BabyLM word budget: at most 100M words of input data and 1B words of exposure (repeats
included), for everything that made a model, checked before any training starts.

Plain functions: `classit pretrain`, `classit instruct` and the sweep's validation call them with
the planned counts, and the one-line error gives those counts.
"""

from __future__ import annotations

from classit.config import ConfigError, TrainConfig, WordBudgetConfig


class BudgetError(ConfigError):
    """A plan exceeds the BabyLM word limits and the config does not allow it."""


def check_budget(input_words: int, exposure_words: int, budget: WordBudgetConfig, what: str) -> None:
    over = []
    if input_words > budget.max_input_words:
        over.append(f"input {input_words:,} > {budget.max_input_words:,}")
    if exposure_words > budget.max_exposure_words:
        over.append(f"exposure {exposure_words:,} > {budget.max_exposure_words:,}")
    if over and not budget.allow_over_budget:
        raise BudgetError(f"budget: {what} is over the BabyLM word limits ({'; '.join(over)} words); "
                          f"set budget.allow_over_budget: true to run anyway")


def pretraining_exposure(tcfg: TrainConfig, train_words: int, train_rows: int | None, world_size: int) -> int:
    """Planned words of pretraining exposure: every epoch's words, or fewer where max_steps stops
    earlier (known once the blocks are packed: `train_rows`; before, every epoch counts)."""
    exposure = train_words * tcfg.epochs
    if tcfg.max_steps and train_rows:
        rows_per_step = tcfg.batch_size * world_size * tcfg.gradient_accumulation_steps
        exposure = min(exposure, round(tcfg.max_steps * rows_per_step * train_words / train_rows))
    return exposure
