"""Evaluation jobs: one (checkpoint, task) pair in, result rows out, errors as rows.

Plain Python, so the same code runs in a test, in the CLI and inside a Ray evaluation actor.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from classit.evaluate.tasks import zero_shot

FAST_ITEMS_PER_SUBTASK = 100  # the fixed, seeded subset of `fast` mode, per UID


@dataclass(frozen=True)
class EvalJob:
    checkpoint: str
    task: str
    data_dir: str
    trial: str = ""
    words_seen: int = -1
    fast: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.checkpoint, self.task


def result_row(job: EvalJob, subtask: str, metric: str, value: float, n: int, seconds: float, error: str = "") -> dict:
    return {**asdict(job), "subtask": subtask, "metric": metric, "value": value, "n_items": n,
            "seconds": seconds, "error": error}


def run_zero_shot(job: EvalJob, model, tokenizer) -> list[dict]:
    start = time.perf_counter()
    items = zero_shot.read_task(job.task, job.data_dir)
    if job.fast:
        items = zero_shot.fast_subset(items, FAST_ITEMS_PER_SUBTASK)
    scores = zero_shot.score_items(model, tokenizer, items)
    seconds = time.perf_counter() - start
    if zero_shot.TASKS[job.task].metric == "spearman":
        return [result_row(job, "average", "spearman", zero_shot.wug_correlation(items, scores), len(items), seconds)]
    result = zero_shot.accuracies(job.task, items, scores)
    rows = [result_row(job, "average", "accuracy", result.pop("average")["accuracy"], len(items), seconds)]
    for key, per_name in result.items():
        for name, value in per_name.items():
            rows.append(result_row(job, f"{key}:{name}", "accuracy", value, _count(items, key, name), seconds))
    return rows


def _count(items: list[zero_shot.Item], key: str, name: str) -> int:
    if key == "split":  # entity tracking's splits group UIDs by prefix
        return sum(item.meta["UID"].startswith(name) for item in items)
    return sum(item.meta[key] == name for item in items)


class ModelCache:
    """Keeps the last checkpoint's model loaded, so consecutive tasks on it load it once."""

    def __init__(self, device: str | None = None):
        self.device, self.path, self.loaded = device, None, None

    def get(self, path: str):
        if path != self.path:
            from classit.evaluate.scoring import load_model

            self.path, self.loaded = None, None  # a failed load leaves nothing stale behind
            self.loaded = load_model(path, self.device)
            self.path = path
        return self.loaded


def run_job(job: EvalJob, cache: ModelCache) -> list[dict]:
    """The job's rows; any failure (corrupt checkpoint, missing data) becomes one error row."""
    start = time.perf_counter()
    try:
        if job.task not in zero_shot.TASKS:
            raise ValueError(f"unknown task {job.task!r} (known: {', '.join(zero_shot.TASKS)})")
        model, tokenizer = cache.get(job.checkpoint)
        return run_zero_shot(job, model, tokenizer)
    except Exception as err:  # noqa: BLE001 - every failure must become a row, not stop the pool
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        return [result_row(job, "", "error", float("nan"), 0, time.perf_counter() - start, error=reason)]
