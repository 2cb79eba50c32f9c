"""What classit knows of its evaluation tasks, importable without torch (the config validates
against it): the task names, which rows and columns hold a task's headline scores, and how an
objective named in a sweep config reads as a score column."""

from __future__ import annotations

from classit.evaluate.aggregates import NAMES as AGGREGATES

ZERO_SHOT = ("blimp", "blimp_supplement", "ewok", "entity_tracking", "wug_adj", "wug_past", "comps", "reading")
# Scored over a run's series of BabyLM-mark checkpoints, not one checkpoint: one job per mark, one fit.
SERIES = ("aoa",)
FINETUNE = ("boolq", "multirc", "rte", "wsc", "mrpc", "qqp", "mnli")
TASKS = ZERO_SHOT + SERIES + FINETUNE
# The subtasks whose rows hold a task's headline scores (the rest are breakdowns).
HEADLINE_SUBTASKS = ("average", "eye_tracking", "self_paced_reading", "validation")
# What each zero-shot task reports per subtask: accuracy, or for WUG the Spearman correlation of
# the model's preference with the human ratios.
ZERO_SHOT_METRIC = {"blimp": "accuracy", "blimp_supplement": "accuracy", "ewok": "accuracy",
                    "entity_tracking": "accuracy", "wug_adj": "spearman", "wug_past": "spearman", "comps": "accuracy"}
# Fine-tuning: the validation metrics reported, and the one that picks the best epoch.
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
FINETUNE_METRICS = {task: CLASSIFICATION_METRICS for task in FINETUNE} | {"mnli": ("accuracy",)}
FINETUNE_SELECT_BY = {"boolq": "accuracy", "multirc": "accuracy", "rte": "accuracy", "wsc": "accuracy",
                      "mrpc": "f1", "qqp": "f1", "mnli": "accuracy"}


# A zero-shot task's share of items won by a tie (`tasks.zero_shot.tied_pct`), a row beside its
# accuracy; from half of them on, the accuracy measures the tie rule, not the model.
TIED_METRIC = "tied_pct"
TIED_WARNING_PCT = 50.0


def tie_warning(rows: list[dict], checkpoint: str) -> str:
    """One line naming the tasks of a checkpoint's rows mostly won by ties, or "" if none is."""
    tied = [f"{r['task']} {r['value']:.0f}%" for r in rows if r["checkpoint"] == checkpoint
            and r["metric"] == TIED_METRIC and not r["error"] and r["value"] >= TIED_WARNING_PCT]
    if not tied:
        return ""
    return (f"{', '.join(tied)} of items won by a tie: the model scores the candidates alike (a diverged run?), "
            f"and a tie counts as correct, as in the official pipeline")


def headline_keys(task: str) -> list[str]:
    """A task's headline scores as `task:subtask:metric`: the columns a trial row gets for it."""
    if task in FINETUNE:
        return [f"{task}:validation:{m}" for m in (*FINETUNE_METRICS[task], "best_epoch")]
    if task == "reading":
        return [f"reading:{s}:r2_gain_pct" for s in ("eye_tracking", "self_paced_reading")]
    if task == "aoa":
        return ["aoa:average:pearson"]
    return [f"{task}:average:{ZERO_SHOT_METRIC[task]}"]


def objective_key(spec: str) -> str:
    """`val_loss`, a leaderboard aggregate (`babylm:macro`, `babylm:nlp`, `babylm:human_likeness`), or
    `<task>[:<subtask>[:<metric>]]` completed with the task's headline score."""
    if spec == "val_loss" or spec in AGGREGATES:
        return spec
    if spec.startswith("babylm:"):
        raise ValueError(f"unknown aggregate (known: {', '.join(AGGREGATES)})")
    task, *rest = spec.split(":")
    if task in FINETUNE:
        default = ("validation", FINETUNE_SELECT_BY[task])
    elif task == "reading":
        default = ("eye_tracking", "r2_gain_pct")
    elif task == "aoa":
        default = ("average", "pearson")
    elif task in ZERO_SHOT_METRIC:
        default = ("average", ZERO_SHOT_METRIC[task])
    else:
        raise ValueError(f"unknown task {task!r}")
    subtask, metric = (rest + [None, None])[:2]
    return f"{task}:{subtask or default[0]}:{metric or default[1]}"
