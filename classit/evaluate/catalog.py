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
# The metadata keys each accuracy task's results also break down by, one row per `<key>:<value>`
# subtask (entity tracking also by its three splits).
BREAKDOWNS = {"blimp": ("UID", "field", "linguistics_term"), "blimp_supplement": ("UID",),
              "ewok": ("UID", "context_type", "context_contrast", "target_contrast"),
              "entity_tracking": ("UID", "split"), "comps": ("UID",)}
# Fine-tuning: the validation metrics reported, and the one that picks the best epoch.
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
FINETUNE_METRICS = {task: CLASSIFICATION_METRICS for task in FINETUNE} | {"mnli": ("accuracy",)}
FINETUNE_SELECT_BY = {"boolq": "accuracy", "multirc": "accuracy", "rte": "accuracy", "wsc": "accuracy",
                      "mrpc": "f1", "qqp": "f1", "mnli": "accuracy"}


def task_names_problem(tasks: list[str]) -> str | None:
    """What is wrong with a list of task names (one unknown, one named twice), or None."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        return f"unknown task {', '.join(map(repr, unknown))} (known: {', '.join(TASKS)})"
    if twice := sorted({t for t in tasks if tasks.count(t) > 1}):
        return f"{', '.join(twice)} named twice"
    return None


# A zero-shot task's share of items won by a tie (`tasks.zero_shot.tied_pct`), a row beside its
# accuracy; from half of them on, the accuracy measures the tie rule, not the model.
TIED_METRIC = "tied_pct"
TIED_WARNING_PCT = 50.0


def tie_warning(rows: list[dict], checkpoint: str) -> str:
    """One line naming the tasks of a checkpoint's rows mostly won by ties, or "" if none is; the
    tasks in the catalog's order, whatever order their jobs finished in."""
    order = {task: i for i, task in enumerate(TASKS)}
    tied = [f"{r['task']} {r['value']:.0f}%" for r in sorted(rows, key=lambda r: order.get(r.get("task"), len(order)))
            if r["checkpoint"] == checkpoint and r["metric"] == TIED_METRIC and not r["error"]
            and r["value"] >= TIED_WARNING_PCT]
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


def objective_metrics(task: str) -> tuple[str, ...]:
    """The scores a sweep may optimise a task on, its default first."""
    if task in FINETUNE:
        return (FINETUNE_SELECT_BY[task], *(m for m in FINETUNE_METRICS[task] if m != FINETUNE_SELECT_BY[task]))
    if task == "reading":
        return ("r2_gain_pct",)
    if task == "aoa":
        return ("pearson",)
    if task in ZERO_SHOT_METRIC:
        return (ZERO_SHOT_METRIC[task],)
    raise ValueError(f"unknown task {task!r}")


def objective_subtasks(task: str) -> tuple[str, ...]:
    """The subtasks a task's objective may name, its default first; `key:` stands for any `key:<value>`."""
    if task in FINETUNE:
        return ("validation",)
    if task == "reading":
        return ("eye_tracking", "self_paced_reading")
    return ("average", *(f"{key}:" for key in BREAKDOWNS.get(task, ())))


def _names(allowed: str, subtask: str) -> bool:
    """Whether `subtask` is the allowed one, or for `key:`, a `key:<value>` with a value."""
    return subtask.startswith(allowed) and subtask != allowed if allowed.endswith(":") else subtask == allowed


def is_loss_objective(key: str) -> bool:
    """`val_loss` (the sweep's one validation set) or `val_loss:<dataset>` (one instruction dataset's part)."""
    return key == "val_loss" or key.startswith("val_loss:")


def objective_key(spec: str) -> str:
    """`val_loss` or `val_loss:<dataset>`, a leaderboard aggregate (`babylm:macro`, `babylm:nlp`,
    `babylm:human_likeness`), or `<task>[:<subtask>][:<metric>]` completed with the task's headline
    subtask and metric; a subtask is `average`, a breakdown such as `UID:anaphor_gender_agreement`, or
    one of reading's two measures."""
    if is_loss_objective(spec) or spec in AGGREGATES:
        return spec
    if spec.startswith("babylm:"):
        raise ValueError(f"unknown aggregate (known: {', '.join(AGGREGATES)})")
    task, *rest = spec.split(":")
    metrics, subtasks = objective_metrics(task), objective_subtasks(task)
    metric = rest.pop() if rest and rest[-1] in metrics else metrics[0]
    subtask = ":".join(rest) or subtasks[0]
    if not any(_names(s, subtask) for s in subtasks):
        known = ", ".join(s + "<value>" if s.endswith(":") else s for s in subtasks)
        raise ValueError(f"no subtask {subtask!r} of {task} (known: {known}; metrics: {', '.join(metrics)})")
    return f"{task}:{subtask}:{metric}"


def is_score_column(name: str) -> bool:
    """A trials-table column holding an evaluation score: `task:subtask:metric`, where a breakdown's
    subtask holds a colon of its own (`blimp:UID:anaphor_gender_agreement:accuracy`)."""
    return name.count(":") >= 2


def score_columns(tasks: list[str], metrics: list[str]) -> list[str]:
    """The evaluation scores a sweep's trial rows hold: each task's headline scores, and any other
    score one of its objectives (`sweep.metrics`) names."""
    columns = [key for task in tasks for key in headline_keys(task)]
    named = [key for key in map(objective_key, metrics) if not is_loss_objective(key) and key not in AGGREGATES]
    return columns + [key for key in named if key not in columns]
