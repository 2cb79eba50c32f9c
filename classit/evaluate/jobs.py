"""Evaluation jobs: one (checkpoint, task) pair in, result rows out, errors as rows.

Plain Python, so the same code runs in a test, in the CLI and inside a Ray evaluation actor.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

FAST_ITEMS_PER_SUBTASK = 100  # the fixed, seeded subset of `fast` mode

# Task -> the folder names it may have under the data directory (ours, then the official pipeline's).
TASK_FOLDERS = {
    "blimp": ("blimp", "blimp_filtered"),
    "blimp_supplement": ("blimp_supplement", "supplement_filtered"),
}


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


def task_folder(data_dir: str | Path, task: str) -> Path:
    if task not in TASK_FOLDERS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASK_FOLDERS)})")
    for name in TASK_FOLDERS[task]:
        if (Path(data_dir) / name).is_dir():
            return Path(data_dir) / name
    raise FileNotFoundError(f"{data_dir}: no {' or '.join(TASK_FOLDERS[task])} folder for task {task}")


def result_row(job: EvalJob, subtask: str, metric: str, value: float, n: int, seconds: float, error: str = "") -> dict:
    return {**asdict(job), "subtask": subtask, "metric": metric, "value": value, "n_items": n,
            "seconds": seconds, "error": error}


def run_blimp(job: EvalJob, model, tokenizer) -> list[dict]:
    from classit.evaluate.tasks.blimp import aggregate, pair_scores, read_pairs

    start = time.perf_counter()
    pairs = read_pairs(task_folder(job.data_dir, job.task), FAST_ITEMS_PER_SUBTASK if job.fast else None)
    result = aggregate(pairs, pair_scores(model, tokenizer, pairs))
    seconds = time.perf_counter() - start
    counts: dict[str, dict[str, int]] = {key: {} for key in ("UID", "field", "linguistics_term")}
    for pair in pairs:
        for key in counts:
            counts[key][pair[key]] = counts[key].get(pair[key], 0) + 1
    rows = [result_row(job, "average", "accuracy", result["average"]["accuracy"], len(pairs), seconds)]
    for key, per_name in counts.items():
        rows += [result_row(job, f"{key}:{name}", "accuracy", result[key][name], n, seconds)
                 for name, n in per_name.items()]
    return rows


TASKS = {"blimp": run_blimp, "blimp_supplement": run_blimp}


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
        if job.task not in TASKS:
            raise ValueError(f"unknown task {job.task!r} (known: {', '.join(TASKS)})")
        model, tokenizer = cache.get(job.checkpoint)
        return TASKS[job.task](job, model, tokenizer)
    except Exception as err:  # noqa: BLE001 - every failure must become a row, not stop the pool
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        return [result_row(job, "", "error", float("nan"), 0, time.perf_counter() - start, error=reason)]
