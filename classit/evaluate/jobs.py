"""Evaluation jobs: one (checkpoint, task) pair in, result rows out, errors as rows.

Plain Python, so the same code runs in a test, in the CLI and inside a Ray evaluation actor.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections import OrderedDict, defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from classit.evaluate import export
from classit.evaluate.catalog import FINETUNE, TASKS, TIED_METRIC, ZERO_SHOT_METRIC
from classit.evaluate.progress import Progress
from classit.evaluate.tasks import aoa, reading, zero_shot
from classit.evaluate.tasks.inputs import aoa_files
from classit.results import hardware
from classit.units import one_line

if TYPE_CHECKING:
    from classit.evaluate.scoring import Plan

# Scoring and fine-tuning (torch) are imported where a job runs: the processes that only hand out
# jobs (`classit evaluate`'s driver, a sweep's evaluation service) start without torch.
FAST_ITEMS_PER_SUBTASK = 100  # the fixed, seeded subset of `fast` mode, per UID
AOA_SURPRISAL = "aoa_surprisal"  # the table an AoA job's per-context surprisals go to
SHARE = "share"  # a split job's share: its candidates' scores, merged into the job's rows by the pool
SPLIT_MIN_ITEMS = 10_000  # a zero-shot task this large is split over the actors (BLiMP whole: 67,000)


@dataclass(frozen=True)
class EvalJob:
    checkpoint: str
    task: str
    data_dir: str
    trial: str = ""
    words_seen: int = -1
    fast: bool = False
    export_dir: str = ""  # when set, predictions go there in the leaderboard layout
    revision: str = "main"  # the leaderboard's name for this checkpoint (e.g. chck_10M)
    pooling: str = "final"  # fine-tuning head input: final (last real token) or official (first position)
    config: str = ""  # the trial's whole config (JSON), carried into every result row
    series: str = ""  # AoA: the run's final checkpoint, whose score this mark checkpoint's surprisals make

    @property
    def key(self) -> tuple[str, str]:
        return self.checkpoint, self.task

    @property
    def row_key(self) -> str:
        """What identifies this job's rows in eval_scores: a re-run replaces them."""
        return "\x1f".join((self.trial, self.checkpoint, self.task))

    @property
    def model_name(self) -> str:
        return self.trial or Path(self.checkpoint).name


def result_row(job: EvalJob, subtask: str, metric: str, value: float, n: int, seconds: float, error: str = "") -> dict:
    return {**asdict(job), "subtask": subtask, "metric": metric, "value": value, "n_items": n,
            "seconds": seconds, "error": error}


def _export(job: EvalJob, predictions: dict, dataset: str = "") -> None:
    if job.export_dir:
        path = export.prediction_path(job.export_dir, job.model_name, job.revision, job.task, dataset)
        export.write_predictions(path, predictions)


def read_items(job: EvalJob) -> tuple[Path, list[zero_shot.Item]]:
    return _task_items(job.task, job.data_dir, job.fast)


@functools.lru_cache(maxsize=8)  # the pool reads a task to split it, then to merge its shares
def _task_items(task: str, data_dir: str, fast: bool) -> tuple[Path, list[zero_shot.Item]]:
    return zero_shot.read_for_evaluation(task, data_dir, fast, FAST_ITEMS_PER_SUBTASK)


def run_zero_shot(job: EvalJob, model, tokenizer, cache: ModelCache, progress: Progress,
                  share: tuple[int, int] = (0, 1)) -> list[dict]:
    """The job's rows; for a share of a split job (`split_jobs`), its candidates' scores instead
    (one row of the `SHARE` table), which `merge_shares` makes into the same rows."""
    from classit.evaluate.scoring import run_plan

    start = time.perf_counter()
    folder, items, plan = cache.prepared(job)
    flat = run_plan(model, plan, progress, share)
    if share != (0, 1):
        return [{"table": SHARE, "share": share, "scores": flat, "seconds": time.perf_counter() - start}]
    return zero_shot_rows(job, folder, items, flat, time.perf_counter() - start)


def zero_shot_rows(job: EvalJob, folder: Path, items: list[zero_shot.Item], flat, seconds: float) -> list[dict]:
    """A zero-shot job's rows (and exported predictions) from all its candidates' scores, in order."""
    scores = zero_shot.per_item(items, flat)
    spec = zero_shot.TASKS[job.task]
    is_wug = ZERO_SHOT_METRIC[job.task] == "spearman"
    _export(job, export.zero_shot_predictions(items, scores, with_prob=is_wug, whole_sentence=spec.predicts_sentence),
            folder.name)
    if is_wug:
        return [result_row(job, "average", "spearman", zero_shot.wug_correlation(items, scores), len(items), seconds)]
    result, sizes = zero_shot.accuracies(job.task, items, scores), zero_shot.group_sizes(job.task, items)
    rows = [result_row(job, "average", "accuracy", result.pop("average")["accuracy"], len(items), seconds),
            result_row(job, "average", TIED_METRIC, zero_shot.tied_pct(scores), len(items), seconds)]
    for key, per_name in result.items():
        for name, value in per_name.items():
            rows.append(result_row(job, f"{key}:{name}", "accuracy", value, sizes[key][name], seconds))
    return rows


def split_jobs(jobs: list[EvalJob], shares: int, min_items: int = SPLIT_MIN_ITEMS) -> list[tuple[EvalJob, tuple]]:
    """Each job with its share: a zero-shot job of at least `min_items` items split into `shares`
    (one per actor), the rest whole, (0, 1). Items are read here to count them (cached)."""
    split = []
    for job in jobs:
        n = shares if shares > 1 and job.task in zero_shot.TASKS and _item_count(job) >= min_items else 1
        split += [(job, (k, n)) for k in range(n)]
    return split


def _item_count(job: EvalJob) -> int:
    try:
        return len(read_items(job)[1])
    except Exception:  # noqa: BLE001 - unreadable data: the job runs whole and its actor writes the error row
        return 0


def merge_shares(job: EvalJob, results: list[list[dict]]) -> list[dict]:
    """A split job's rows from its shares' results: the first error row if a share failed, else the
    rows the whole job writes, its scores the shares' summed (`score`: exactly the whole job's)."""
    for rows in results:
        if not (len(rows) == 1 and rows[0].get("table") == SHARE):
            return [row for row in rows if "table" not in row][:1]
    shares = [rows[0] for rows in results]
    folder, items = read_items(job)
    rows = zero_shot_rows(job, folder, items, sum(share["scores"] for share in shares),
                          sum(share["seconds"] for share in shares))
    stamp = {"started": min(s["started"] for s in shares), "finished": max(s["finished"] for s in shares),
             "hardware": processors(shares)}
    return [{**row, **stamp} for row in rows]


def processors(rows: list[dict]) -> str:
    """The processors that computed a result from these rows' parts (shares, AoA marks): one, or each once."""
    return "; ".join(sorted({row["hardware"] for row in rows if row.get("hardware")}))


def run_reading(job: EvalJob, model, tokenizer, progress: Progress) -> list[dict]:
    start = time.perf_counter()
    frame = reading.read_reading(job.data_dir)  # the official fast set is the full set
    pred, prev_pred = reading.surprisals(model, tokenizer, frame, progress)
    gains = reading.reading_scores(frame, pred, prev_pred)
    _export(job, export.reading_predictions(pred, prev_pred))
    seconds = time.perf_counter() - start
    return [result_row(job, name, "r2_gain_pct", value, len(frame), seconds) for name, value in gains.items()]


def run_finetune(job: EvalJob, device: str | None, progress: Progress) -> list[dict]:
    from classit.evaluate.tasks import finetune

    start = time.perf_counter()
    scores, preds, best_epoch = finetune.finetune(job.checkpoint, job.task, job.data_dir, device=device,
                                                  pooling=job.pooling, progress=progress)
    _export(job, export.finetune_predictions(job.task, preds, job.pooling))
    seconds = time.perf_counter() - start
    rows = [result_row(job, "validation", metric, value, len(preds), seconds) for metric, value in scores.items()]
    return rows + [result_row(job, "validation", "best_epoch", best_epoch, len(preds), seconds)]


def aoa_jobs(run_dirs: list[str | Path], data_dir: str, series: str = "", **fields) -> list[EvalJob]:
    """Age of acquisition of a run (a base's run and the instruction-tuning run that continued it):
    one surprisal job per BabyLM-mark checkpoint, so the marks spread over the evaluation actors;
    `aoa_scores` fits them into one score on `series` (default: the run's final checkpoint). A run
    with no mark checkpoint gets one job that fails with the reason."""
    from classit.hub import revisions

    chosen = revisions([Path(r) for r in run_dirs])
    final = chosen.pop("main")
    series = series or str(final)
    if not chosen:
        return [EvalJob(series, "aoa", data_dir, revision="", series=series, **fields)]
    return [EvalJob(str(path), "aoa", data_dir, revision=name, words_seen=int(aoa.revision_words(name)),
                    series=series, **fields) for name, path in chosen.items()]


def run_aoa_surprisal(job: EvalJob, model, tokenizer, progress: Progress) -> list[dict]:
    """One mark checkpoint's surprisals: a summary row (their mean) and every (word, context) row,
    marked for the `aoa_surprisal` table."""
    start = time.perf_counter()
    if not job.revision.startswith("chck_"):
        raise ValueError(f"{Path(job.series).parent}: no checkpoint at a BabyLM mark (AoA needs a run's "
                         f"checkpoints at 1M, 2M, ... words; see checkpoints.schedule)")
    contexts = aoa.read_contexts(aoa_files(job.data_dir)[0])
    rows = aoa.surprisal_rows(model, tokenizer, contexts, job.revision, job.words_seen, progress)
    mean = sum(r["surprisal"] for r in rows) / len(rows) if rows else float("nan")
    summary = result_row(job, "surprisal", "mean", mean, len(rows), time.perf_counter() - start)
    return [summary, *({"table": AOA_SURPRISAL, "trial": job.trial, "checkpoint": job.checkpoint,
                        "series": job.series, **row} for row in rows)]


def surprisal_key(job: EvalJob) -> tuple[str, str] | None:
    """What a mark checkpoint's AoA surprisals depend on: the checkpoint and the contexts. The trials
    of a sweep continue one base, so they share its marks' surprisals (None: not a surprisal job)."""
    return (job.checkpoint, job.data_dir) if job.task == "aoa" and job.revision.startswith("chck_") else None


def surprisals_as(job: EvalJob, rows: list[dict]) -> list[dict]:
    """Another job's rows of the same `surprisal_key`, as this job's (its trial, series and config);
    when and how fast they were computed stays as it was."""
    return [{**row, "trial": job.trial, "series": job.series} if row.get("table") == AOA_SURPRISAL
            else {**row, **asdict(job)} for row in rows]


def split_tables(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """A job's `eval_scores` rows, and its `aoa_surprisal` rows (without their table mark)."""
    detail = [{k: v for k, v in r.items() if k != "table"} for r in rows if r.get("table") == AOA_SURPRISAL]
    return [r for r in rows if "table" not in r], detail


def aoa_scores(jobs: list[EvalJob], rows: list[dict], surprisals: list[dict]) -> dict[str, list[dict]]:
    """Each AoA series' score from its marks' surprisals, keyed by the row key to write it under:
    one `aoa`/`average`/`pearson` row on the series' final checkpoint (an error row where a mark's
    surprisals failed: never a fit of the marks that happen to be there); with an export folder
    the official `AoA_word/surprisal.json` of the series."""
    by_series: dict[tuple[str, str], list[EvalJob]] = defaultdict(list)
    for job in jobs:
        if job.task == "aoa":
            by_series[job.trial, job.series].append(job)
    scores = {}
    for (trial, series), marks in by_series.items():
        start = time.perf_counter()
        job = replace(marks[0], checkpoint=series, revision="main", words_seen=-1)
        marks_rows = [r for r in rows if r["task"] == "aoa" and r["trial"] == trial and r["series"] == series]
        failed = sorted({r["error"] for r in marks_rows if r["error"]})
        try:
            if failed:
                raise RuntimeError(f"surprisals of {len(failed)} mark checkpoint(s) failed: {failed[0]}")
            mine = [r for r in surprisals if r["trial"] == trial and r["series"] == series]
            result = aoa.curve_fitness(mine, aoa.read_child_curves(aoa_files(job.data_dir)[1]))
            metadata = {"model_name": job.model_name, "use_bos_only": False, "total_steps": len(marks),
                        "completed_steps": len(marks)}
            official = ("step", "word_count", "target_word", "context_id", "context", "surprisal")
            _export(job, {"metadata": metadata, "results": [{k: r[k] for k in official} for r in mine]})
            score = [{**result_row(job, "average", "pearson", result["curve_fitness"], result["n_words"],
                                   time.perf_counter() - start), "hardware": processors(marks_rows)}]
        except Exception as err:  # noqa: BLE001 - as every job: a failure is a row
            score = [result_row(job, "", "error", float("nan"), 0, time.perf_counter() - start, error=one_line(err))]
        scores[f"{job.row_key}\x1fscore"] = score
    return scores


class ModelCache:
    """An actor's state between jobs: the last checkpoint's model, so consecutive tasks on it load
    it once, and the tasks read, tokenized and planned (`scoring.Plan`): a sweep's checkpoints
    share one tokenizer, so each task is prepared once per actor rather than once per checkpoint
    (every task of the paper's suite at once: the least recently used go beyond `MAX_PLAN_BYTES`)."""

    MAX_PLAN_BYTES = 1 << 30

    def __init__(self, device: str | None = None):
        self.device, self.path, self.loaded, self.fingerprint = device, None, None, None
        self.tasks: OrderedDict[tuple, tuple[Path, list[zero_shot.Item], Plan]] = OrderedDict()

    def get(self, path: str):
        from classit.evaluate.scoring import load_model

        if path != self.path:
            self.path, self.loaded = None, None  # a failed load leaves nothing stale behind
            self.loaded = load_model(path, self.device)
            self.fingerprint = _fingerprint(self.loaded[1])  # once per checkpoint, not per job
            self.path = path
        return self.loaded

    def prepared(self, job: EvalJob) -> tuple[Path, list[zero_shot.Item], Plan]:
        """The job's folder, items and the plan of their candidates' scoring with the loaded
        checkpoint's tokenizer."""
        from classit.evaluate.scoring import encode_candidates, plan_scoring

        tokenizer = self.loaded[1]
        key = (job.task, job.data_dir, job.fast, self.fingerprint, tokenizer.pad_token_id) if self.fingerprint else None
        if key in self.tasks:
            self.tasks.move_to_end(key)
            return self.tasks[key]
        folder, items = read_items(job)
        plan = plan_scoring(encode_candidates(tokenizer, [c for item in items for c in item.candidates]),
                            tokenizer.pad_token_id)
        if key is not None:
            self.tasks[key] = folder, items, plan
            while len(self.tasks) > 1 and sum(p.nbytes for _, _, p in self.tasks.values()) > self.MAX_PLAN_BYTES:
                self.tasks.popitem(last=False)
        return folder, items, plan


def _fingerprint(tokenizer) -> str | None:
    """A hash of the whole tokenizer (vocabulary, merges, special tokens, post-processor); None for
    a tokenizer that cannot be serialized whole (a slow one), whose tasks are never cached."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return hashlib.sha256(backend.to_str().encode()).hexdigest() if backend is not None else None


def run_job(job: EvalJob, cache: ModelCache, progress: Progress | None = None,
            share: tuple[int, int] = (0, 1)) -> list[dict]:
    """The job's rows (or a zero-shot share's scores), each with when the job ran (`started`,
    `finished`) and on what (`hardware`); any failure (corrupt checkpoint, missing data) becomes
    one error row. `progress` counts the job's items (candidates, words, steps) as they are scored."""
    started = time.time()
    rows = _job_rows(job, cache, progress or Progress(), share)
    stamp = {"started": started, "finished": time.time(), "hardware": hardware(cache.device)}
    return [row if row.get("table") == AOA_SURPRISAL else {**row, **stamp} for row in rows]


def _job_rows(job: EvalJob, cache: ModelCache, progress: Progress, share: tuple[int, int]) -> list[dict]:
    start = time.perf_counter()
    try:
        if job.task not in TASKS:
            raise ValueError(f"unknown task {job.task!r} (known: {', '.join(TASKS)})")
        if job.task in FINETUNE:  # trains its own copy: the cached scoring model stays as it is
            return run_finetune(job, cache.device, progress)
        model, tokenizer = cache.get(job.checkpoint)
        if job.task == "reading":
            return run_reading(job, model, tokenizer, progress)
        if job.task == "aoa":
            return run_aoa_surprisal(job, model, tokenizer, progress)
        return run_zero_shot(job, model, tokenizer, cache, progress, share)
    except Exception as err:  # noqa: BLE001 - every failure must become a row, not stop the pool
        return [result_row(job, "", "error", float("nan"), 0, time.perf_counter() - start, error=one_line(err))]
