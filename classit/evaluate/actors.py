"""A pool of Ray evaluation actors, each holding one model on CPU or a GPU fraction.

Jobs from any number of trials go in, from any number of threads at once (the sweep's evaluation
service calls `run` once per trial, concurrently): an idle actor takes the next job of whichever
call reaches it first, so one trial's last job never leaves the other actors waiting. A large
zero-shot job is split into a share per actor, merged into the rows the whole job would write.
Each finished job's rows are written as one Parquet part file named by the job's (trial,
checkpoint, task), so every row lands exactly once: a retried, resumed or re-run job replaces its
part. A job whose actor dies is retried on a fresh actor. Age of acquisition runs as one job per
mark checkpoint, its surprisals written to the `aoa_surprisal` table beside `eval_scores`; when
every job is in, each run's marks are fitted into its AoA score. A mark's surprisals are computed
once per pool: the trials of a sweep continue one base and share its marks, so a trial whose mark
another trial is scoring waits for it and takes its rows.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import ray

from classit.evaluate.jobs import (AOA_SURPRISAL, SPLIT_MIN_ITEMS, EvalJob, ModelCache, aoa_scores, merge_shares,
                                   result_row, run_job, split_jobs, split_tables, surprisal_key, surprisals_as)
from classit.evaluate.progress import JobBars, Progress
from classit.results import AOA_SURPRISAL_SCHEMA, EVAL_SCORES_SCHEMA, write_rows

PROGRESS_SECONDS = 0.5  # how often the bars ask the busy actors how far their jobs are


@ray.remote(max_concurrency=2)  # a second thread answers `progress` while `run` works
class Evaluator:
    def __init__(self):
        import torch
        import transformers

        # Threads follow the CPUs Ray gave the actor (Ray's OMP_NUM_THREADS default, made explicit).
        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        transformers.utils.logging.disable_progress_bar()
        self.cache, self.job_progress = ModelCache(), Progress()

    def run(self, job: EvalJob, share: tuple[int, int] = (0, 1)) -> list[dict]:
        self.job_progress.start(0, "")
        return run_job(job, self.cache, self.job_progress, share)

    def progress(self) -> tuple[int, int, str]:
        return self.job_progress.snapshot()


def cpu_share(cpus: float, num_actors: int) -> float:
    """Each actor's CPUs when they share `cpus`: whole cores, or a fraction where there are more
    actors than cores (Ray takes fractions below 1 only). Together never more than there are: an
    actor that does not fit would never start, and a job handed to it would wait forever."""
    share = cpus / num_actors
    return float(int(share)) if share >= 1 else share


class EvaluationPool:
    def __init__(self, num_actors: int = 2, num_cpus: float | None = None, num_gpus: float = 0, max_retries: int = 2,
                 resources: dict[str, float] | None = None, split_min_items: int = SPLIT_MIN_ITEMS):
        """`num_cpus` per actor; None: the cluster's CPUs shared out (`classit evaluate` uses every core).
        A zero-shot job of at least `split_min_items` items is split over all the actors."""
        if num_cpus is None:
            num_cpus = cpu_share(ray.cluster_resources().get("CPU", 1), num_actors)
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources or {}}
        self.actors = [Evaluator.options(**self.options).remote() for _ in range(num_actors)]
        self.max_retries, self.split_min_items = max_retries, split_min_items
        # Shared by concurrent `run` calls: which actors are free, and the checkpoint each holds.
        self.idle: queue.Queue[int] = queue.Queue()
        for index in range(num_actors):
            self.idle.put(index)
        self.loaded: dict[int, str] = {}
        # Mark surprisals by `surprisal_key`: being computed, and computed (the actor's result, in Ray's store).
        self.shared = threading.Lock()
        self.computing: set[tuple] = set()
        self.surprisals: dict[tuple, ray.ObjectRef] = {}

    def run(self, jobs: Iterable[EvalJob], results_dir: str | None = None, show_progress: bool = False) -> list[dict]:
        """Run every job; returns all `eval_scores` rows (and writes each job's rows to `results_dir`, the
        `eval_scores` folder, as they come). `show_progress`: a bar per job on stderr."""
        bars = JobBars() if show_progress else None
        with bars or contextlib.nullcontext():
            return self._run(list(jobs), results_dir, bars)

    def _run(self, jobs: list[EvalJob], results_dir: str | None, bars: JobBars | None) -> list[dict]:
        # A large zero-shot job goes to every actor, a share each; the others run whole.
        pending = sorted(split_jobs(jobs, len(self.actors), self.split_min_items),
                         key=lambda p: (p[0].checkpoint, p[0].task, p[1]))
        tries: dict[tuple, int] = {}  # (job key, share) -> actor deaths
        in_flight: dict = {}  # future -> (actor index, job, share)
        shares: dict[str, list] = {}  # a split job's row key -> its finished shares' results
        reused: list[tuple[EvalJob, list[dict]]] = []  # surprisal jobs with another job's rows
        rows: list[dict] = []
        surprisals: list[dict] = []
        while pending or in_flight or reused:
            self._dispatch(pending, in_flight, reused)
            finished = reused.pop() if reused else self._next_finished(in_flight, pending, tries, shares, bars)
            if finished is None:
                continue
            job, job_rows = finished
            last = not pending and not in_flight and not reused
            rows += self._record(job, job_rows, jobs, rows, surprisals, results_dir, last)
        return rows

    def _dispatch(self, pending: list, in_flight: dict, reused: list) -> None:
        """Hand pending jobs to idle actors; with nothing in flight, wait for one another call frees.
        A surprisal job whose rows another job computed takes them (into `reused`); one whose rows
        another job is computing waits."""
        while pending:
            with self.shared:
                computed = [(job, self.surprisals.get(surprisal_key(job))) for job, _ in pending]
                pending[:] = [p for p, (_, ref) in zip(pending, computed) if ref is None]
                runnable = self._runnable(pending)
            reused += [(job, surprisals_as(job, ray.get(ref))) for job, ref in computed if ref is not None]
            if not runnable:
                if not in_flight and not reused:
                    time.sleep(PROGRESS_SECONDS)  # another call is computing what every pending job needs
                return
            try:
                index = self.idle.get(block=not in_flight and not reused, timeout=PROGRESS_SECONDS)
            except queue.Empty:
                return
            with self.shared:
                runnable = self._runnable(pending)
                if not runnable:  # another call took them meanwhile
                    self.idle.put(index)
                    continue
                # Prefer a job on the checkpoint this actor already holds: no reload.
                pick = next((k for k in runnable if pending[k][0].checkpoint == self.loaded.get(index)), runnable[0])
                job, share = pending.pop(pick)
                if (key := surprisal_key(job)) is not None:
                    self.computing.add(key)
            self.loaded[index] = job.checkpoint
            in_flight[self.actors[index].run.remote(job, share)] = (index, job, share)

    def _runnable(self, pending: list) -> list[int]:
        """The pending jobs whose surprisals no other job is computing or has computed (the lock held:
        another call may have finished one since `_dispatch` last looked)."""
        return [k for k, (job, _) in enumerate(pending)
                if surprisal_key(job) not in self.computing and surprisal_key(job) not in self.surprisals]

    def _next_finished(self, in_flight: dict, pending: list, tries: dict, shares: dict,
                       bars: JobBars | None) -> tuple[EvalJob, list[dict]] | None:
        """The next job whose rows are all in (a split job's once its last share is), or None."""
        if not in_flight:
            return None
        # While jobs wait, look for an actor another call frees at least every PROGRESS_SECONDS.
        done, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_SECONDS if bars or pending else None)
        if not done:
            if bars:
                self._draw(bars, list(in_flight.values()))
            return None
        index, job, share = in_flight.pop(done[0])
        job_rows = self._rows_or_retry(done[0], index, job, share, tries, pending)
        if job_rows is None:
            return None  # retried on a fresh actor
        if bars:  # before the actor is freed: its next job resets its count
            self._draw(bars, [(index, job, share)], failed=any(r.get("error") for r in job_rows))
        key = surprisal_key(job)
        if key is not None:
            with self.shared:
                self.computing.discard(key)
                if not any(r.get("error") for r in job_rows):
                    self.surprisals[key] = done[0]
        self.idle.put(index)
        if share[1] > 1:
            shares.setdefault(job.row_key, []).append(job_rows)
            if len(shares[job.row_key]) < share[1]:
                return None
            job_rows = merge_shares(job, shares.pop(job.row_key))
        return job, job_rows

    def _rows_or_retry(self, future, index: int, job: EvalJob, share: tuple, tries: dict, pending: list):
        """The job's rows; if its actor died, a fresh actor in its place and the job queued again
        (None), or an error row once it has died `max_retries` times."""
        try:
            return ray.get(future)
        except ray.exceptions.RayActorError:
            tries[job.key, share] = tries.get((job.key, share), 0) + 1
            self.actors[index] = Evaluator.options(**self.options).remote()
            self.loaded.pop(index, None)
            if tries[job.key, share] > self.max_retries:
                return [result_row(job, "", "error", float("nan"), 0, 0.0,
                                   error=f"evaluation actor died {tries[job.key, share]} times")]
            with self.shared:
                self.computing.discard(surprisal_key(job))  # queued again: this call computes it or takes it
            pending.insert(0, (job, share))
            self.idle.put(index)
            return None

    def _record(self, job: EvalJob, job_rows: list[dict], jobs: list[EvalJob], rows: list[dict],
                surprisals: list[dict], results_dir: str | None, last: bool) -> list[dict]:
        """A finished job's score rows (its AoA detail rows apart), written; with the last job in,
        each run's AoA marks are fitted too. Returns the rows to add."""
        job_rows, detail = split_tables(job_rows)
        if results_dir and detail:
            write_rows(str(Path(results_dir).parent / AOA_SURPRISAL), detail, AOA_SURPRISAL_SCHEMA, key=job.row_key)
        surprisals += detail
        finished = {job.row_key: job_rows}
        if last:
            finished |= aoa_scores(jobs, rows + job_rows, surprisals)
        for key, key_rows in finished.items():
            if results_dir:
                write_rows(results_dir, key_rows, EVAL_SCORES_SCHEMA, key=key)
        return [row for key_rows in finished.values() for row in key_rows]

    def _draw(self, bars: JobBars, running: list[tuple[int, EvalJob, tuple]], failed: bool = False) -> None:
        try:
            snapshots = ray.get([self.actors[index].progress.remote() for index, _, _ in running])
        except ray.exceptions.RayActorError:
            return  # the job's own future reports the death
        for (_, job, share), (done, total, unit) in zip(running, snapshots):
            bars.update(f"{job.row_key}\x1f{share}", _label(job, share), done, total, "failed" if failed else unit)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def _label(job: EvalJob, share: tuple[int, int]) -> str:
    revision = f" {job.revision}" if job.revision != "main" else ""
    part = f" {share[0] + 1}/{share[1]}" if share[1] > 1 else ""
    return f"{job.model_name}{revision} {job.task}{part}"
