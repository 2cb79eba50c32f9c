"""A pool of Ray evaluation actors, each holding one model on CPU or a GPU fraction.

Jobs from any number of trials go in; each finished job's rows are written as one Parquet part
file named by the job's (trial, checkpoint, task), so every row lands exactly once: a retried,
resumed or re-run job replaces its part. A job whose actor dies is retried on a fresh actor.
Age of acquisition runs as one job per mark checkpoint, its surprisals written to the
`aoa_surprisal` table beside `eval_scores`; when every job is in, each run's marks are fitted into
its AoA score.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import ray

from classit.evaluate.jobs import AOA_SURPRISAL, EvalJob, ModelCache, aoa_scores, result_row, run_job, split_tables
from classit.evaluate.progress import JobBars, Progress
from classit.results import AOA_SURPRISAL_SCHEMA, EVAL_SCORES_SCHEMA, write_rows

PROGRESS_SECONDS = 0.5  # how often the bars ask the busy actors how far their jobs are


@ray.remote(max_concurrency=2)  # a second thread answers `progress` while `run` works
class Evaluator:
    def __init__(self):
        import transformers

        transformers.utils.logging.disable_progress_bar()
        self.cache, self.job_progress = ModelCache(), Progress()

    def run(self, job: EvalJob) -> list[dict]:
        self.job_progress.start(0, "")
        return run_job(job, self.cache, self.job_progress)

    def progress(self) -> tuple[int, int, str]:
        return self.job_progress.snapshot()


class EvaluationPool:
    def __init__(self, num_actors: int = 2, num_cpus: float = 1, num_gpus: float = 0, max_retries: int = 2,
                 resources: dict[str, float] | None = None):
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources or {}}
        self.actors = [Evaluator.options(**self.options).remote() for _ in range(num_actors)]
        self.max_retries = max_retries

    def run(self, jobs: Iterable[EvalJob], results_dir: str | None = None, show_progress: bool = False) -> list[dict]:
        """Run every job; returns all `eval_scores` rows (and writes each job's rows to `results_dir`, the
        `eval_scores` folder, as they come). `show_progress`: a bar per job on stderr."""
        bars = JobBars() if show_progress else None
        with bars or contextlib.nullcontext():
            return self._run(list(jobs), results_dir, bars)

    def _run(self, jobs: list[EvalJob], results_dir: str | None, bars: JobBars | None) -> list[dict]:
        pending = sorted(jobs, key=lambda j: (j.checkpoint, j.task))
        tries: dict[tuple, int] = {}
        loaded: dict[int, str] = {}  # actor index -> checkpoint it holds
        in_flight: dict = {}  # future -> (actor index, job)
        rows: list[dict] = []
        surprisals: list[dict] = []
        idle = list(range(len(self.actors)))
        while pending or in_flight:
            while idle and pending:
                index = idle.pop()
                # Prefer a job on the checkpoint this actor already holds: no reload.
                pick = next((k for k, j in enumerate(pending) if j.checkpoint == loaded.get(index)), 0)
                job = pending.pop(pick)
                loaded[index] = job.checkpoint
                in_flight[self.actors[index].run.remote(job)] = (index, job)
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_SECONDS if bars else None)
            if not done:
                self._draw(bars, list(in_flight.values()))
                continue
            index, job = in_flight.pop(done[0])
            try:
                job_rows = ray.get(done[0])
            except ray.exceptions.RayActorError:
                tries[job.key] = tries.get(job.key, 0) + 1
                self.actors[index] = Evaluator.options(**self.options).remote()
                loaded.pop(index, None)
                if tries[job.key] > self.max_retries:
                    job_rows = [result_row(job, "", "error", float("nan"), 0, 0.0,
                                           error=f"evaluation actor died {tries[job.key]} times")]
                else:
                    pending.insert(0, job)
                    idle.append(index)
                    continue
            idle.append(index)
            job_rows, detail = split_tables(job_rows)
            if bars:  # before the actor's next job resets its count
                self._draw(bars, [(index, job)], failed=any(r["error"] for r in job_rows))
            if results_dir and detail:
                write_rows(str(Path(results_dir).parent / AOA_SURPRISAL), detail, AOA_SURPRISAL_SCHEMA, key=job.row_key)
            surprisals += detail
            finished = {job.row_key: job_rows}
            if not pending and not in_flight:  # the last job is in: each run's AoA marks are fitted
                finished |= aoa_scores(jobs, rows + job_rows, surprisals)
            for key, key_rows in finished.items():
                if results_dir:
                    write_rows(results_dir, key_rows, EVAL_SCORES_SCHEMA, key=key)
                rows += key_rows
        return rows

    def _draw(self, bars: JobBars, running: list[tuple[int, EvalJob]], failed: bool = False) -> None:
        try:
            snapshots = ray.get([self.actors[index].progress.remote() for index, _ in running])
        except ray.exceptions.RayActorError:
            return  # the job's own future reports the death
        for (_, job), (done, total, unit) in zip(running, snapshots):
            bars.update(job.row_key, _label(job), done, total, "failed" if failed else unit)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def _label(job: EvalJob) -> str:
    revision = f" {job.revision}" if job.revision != "main" else ""
    return f"{job.model_name}{revision} {job.task}"
