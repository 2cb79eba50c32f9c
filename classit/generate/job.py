"""`classit generate-qa`: teacher-written Q&A as a Ray Data job, cached and resumable.

The articles are cut into shards (`articles_per_shard`); a shard is one row of a Ray Data dataset,
mapped by a pool of actors that each hold the teacher (`Teacher`, `write_shard`). The driver writes
each finished shard to `<cache>/qa-<key>/shards/` (temp and rename), so a killed job keeps what it
finished and a rerun generates only the shards still missing. When all are there, they are joined
into `records.parquet` (and `records.jsonl` on request) and the folder's marker (`artefact.json`,
with the set's summary) marks it complete.
The key hashes the articles, the teacher's files, the template and every setting that changes an
output; the execution settings (actors, CPUs, GPUs, JSONL) do not change it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from classit.artefacts import artefact_dir, commit_file, is_complete, mark_complete, read_marker
from classit.config import ConfigError, GenerateConfig

EXECUTION_FIELDS = {"actors", "cpus_per_actor", "gpus_per_actor", "jsonl"}


@dataclass
class GenerationJob:
    """What the driver checked and keyed before Ray starts."""

    name: str  # the instruction dataset it is made for: the records' `source`
    gcfg: GenerateConfig
    articles: list[dict]
    teacher: Path
    teacher_hash: str
    folder: Path

    @property
    def shards(self) -> list[list[dict]]:
        size = self.gcfg.articles_per_shard
        return [self.articles[i:i + size] for i in range(0, len(self.articles), size)]

    def shard_path(self, index: int) -> Path:
        return self.folder / "shards" / f"shard-{index:05d}.parquet"

    def missing_shards(self) -> list[int]:
        return [i for i in range(len(self.shards)) if not self.shard_path(i).exists()]

    @property
    def complete(self) -> bool:
        return is_complete(self.folder)


def where(name: str) -> str:
    return f"instruct.datasets.{name}.generate"


def resolve_teacher(gcfg: GenerateConfig, cache_dir: Path, name: str) -> Path:
    from classit.generate.teacher import check_teacher, teacher_folder

    if gcfg.teacher == "synthetic":
        from classit.generate.synthetic_teacher import synthetic_teacher

        folder = synthetic_teacher(gcfg, cache_dir)
    else:
        folder = teacher_folder(gcfg.teacher, f"{where(name)}.teacher")
    check_teacher(gcfg, folder, where(name))
    return folder


def plan_generation(name: str, gcfg: GenerateConfig, cache_dir: Path) -> GenerationJob:
    """Articles read, teacher found and checked, the set's folder keyed: every bad input fails here."""
    from classit.generate.articles import load_articles
    from classit.generate.teacher import teacher_hash

    articles = load_articles(gcfg, cache_dir, where(name))
    teacher = resolve_teacher(gcfg, cache_dir, name)
    fingerprint = teacher_hash(teacher)
    settings = gcfg.model_dump(mode="json", exclude=EXECUTION_FIELDS | {"teacher"})
    folder = artefact_dir(Path(cache_dir).resolve(), "qa", settings,
                          [(a["article_id"], a["title"], a["text"]) for a in articles], fingerprint)
    return GenerationJob(name, gcfg, articles, teacher, fingerprint, folder)


class ShardWriter:
    """A Ray Data actor: loads the teacher once, then writes one shard per call."""

    def __init__(self, gcfg: dict, teacher: str, teacher_hash: str, source: str):
        import torch

        from classit.generate.qa import provenance
        from classit.generate.teacher import Teacher

        self.gcfg = GenerateConfig.model_validate(gcfg)
        torch.set_num_threads(max(1, int(self.gcfg.cpus_per_actor)))  # the actor's CPUs, no more
        device = "cuda" if self.gcfg.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        self.teacher = Teacher(self.gcfg, teacher, device)
        self.source, self.made_by = source, provenance(self.gcfg, teacher_hash)

    def __call__(self, batch: dict) -> dict:
        from classit.generate.teacher import write_shard

        out = {"shard": [], "result": []}
        for shard, articles in zip(batch["shard"], batch["articles"]):
            result = write_shard(self.teacher, json.loads(articles), int(shard), self.source, self.made_by)
            out["shard"].append(int(shard))
            out["result"].append(json.dumps(result))
        return out


def _write_shard_file(path: Path, result: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(result["records"]) if result["records"] else pa.table({})
    meta = {b"classit": json.dumps({"rejected": result["rejected"], "missing": result["missing"]}).encode()}
    commit_file(lambda tmp: pq.write_table(table.replace_schema_metadata(meta), tmp), str(path))


def run_shards(job: GenerationJob, missing: list[int], log=print, verbose: bool = False) -> None:
    """Generate the missing shards on Ray Data's actor pool; each is on disk as soon as it is back."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its start-up and progress lines
    gcfg, shards = job.gcfg, job.shards
    rows = [{"shard": i, "articles": json.dumps(shards[i])} for i in missing]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardWriter, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(gcfg.actors, len(rows))),
        num_cpus=gcfg.cpus_per_actor, num_gpus=gcfg.gpus_per_actor,
        fn_constructor_kwargs=dict(gcfg=gcfg.model_dump(mode="json"), teacher=str(job.teacher),
                                   teacher_hash=job.teacher_hash, source=job.name))
    for done, row in enumerate(dataset.iter_rows(), start=1):
        result = json.loads(row["result"])
        _write_shard_file(job.shard_path(int(row["shard"])), result)
        log(f"generate {job.name}: shard {int(row['shard']) + 1}/{len(shards)} written ({len(result['records'])} "
            f"records), {done}/{len(missing)} of this run")


def finish(job: GenerationJob) -> dict:
    """Join the shards into the set's records and mark the set complete (last) with its summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from classit.generate.qa import REJECTIONS, provenance

    tables, rejected, missing = [], dict.fromkeys(REJECTIONS, 0), 0
    for i in range(len(job.shards)):
        table = pq.read_table(job.shard_path(i))
        counts = json.loads(table.schema.metadata[b"classit"])
        rejected = {k: rejected[k] + counts["rejected"][k] for k in rejected}
        missing += counts["missing"]
        if table.num_rows:
            tables.append(table.replace_schema_metadata(None))
    records = pa.concat_tables(tables) if tables else pa.table({})
    commit_file(lambda tmp: pq.write_table(records, tmp), str(job.folder / "records.parquet"))
    if job.gcfg.jsonl:
        lines = "".join(json.dumps(record) + "\n" for record in records.to_pylist())
        commit_file(lambda tmp: Path(tmp).write_text(lines), str(job.folder / "records.jsonl"))
    summary = {"dataset": job.name, "articles": len(job.articles), "pairs_per_article": job.gcfg.pairs_per_article,
               "records": records.num_rows, "missing": missing, "rejected": rejected,
               "words": int(sum(records["words"].to_pylist())) if records.num_rows else 0,
               "shards": len(job.shards)}
    return mark_complete(job.folder, provenance(job.gcfg, job.teacher_hash), **summary)


def describe(summary: dict) -> str:
    rejected = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in summary["rejected"].items() if n)
    return (f"{summary['records']:,} records = {summary['articles']:,} articles x {summary['pairs_per_article']} "
            f"- {summary['missing']:,} missing (turned down: {rejected or 'none'}), {summary['words']:,} words")


def generate(job: GenerationJob, log=print, verbose: bool = False) -> dict:
    """The set's summary: reused if complete, else its missing shards generated (Ray must be up)."""
    if not job.complete:
        missing = job.missing_shards()
        kept = len(job.shards) - len(missing)
        log(f"generate {job.name}: {len(missing)} of {len(job.shards)} shards to generate at {job.folder}"
            + (f" ({kept} kept from an earlier run)" if kept else ""))
        if missing:
            run_shards(job, missing, log, verbose)
        finish(job)
    else:
        log(f"generate {job.name}: reused {job.folder}")
    summary = read_marker(job.folder)
    log(f"generate {job.name}: {describe(summary)}")
    return summary


def generation_jobs(cfg, only: str | None = None) -> list[GenerationJob]:
    """Every instruction dataset of the config made by a teacher (or the one named), planned."""
    datasets = {name: spec.generate for name, spec in cfg.instruct.datasets.items() if spec.generate is not None}
    if only is not None:
        if only not in datasets:
            raise ConfigError(f"--dataset {only}: not a generated dataset of the config "
                              f"(generated: {', '.join(sorted(datasets)) or 'none'})")
        datasets = {only: datasets[only]}
    return [plan_generation(name, gcfg, Path(cfg.run.cache_dir)) for name, gcfg in sorted(datasets.items())]


def ensure_generated(cfg, address: str | None = None, log=print, verbose: bool = False,
                     only: str | None = None) -> list[GenerationJob]:
    """Every generated set the config names (or the one named) made, once: Ray is started for it only
    if one is missing. Before a sweep or an instruction run plans, so its records and words are there."""
    jobs = generation_jobs(cfg, only)
    pending = [job for job in jobs if not job.complete]
    for job in jobs:
        if job.complete:
            generate(job, log)
    if pending:
        from classit.ray_session import ray_session

        with ray_session(address, quiet=not verbose):
            for job in pending:
                generate(job, log, verbose)
    return jobs


def read_generated(name: str, gcfg: GenerateConfig, cache_dir: Path) -> list[dict]:
    """A generated set's records, from the cache; one line naming the dataset if it is not made yet."""
    import pyarrow.parquet as pq

    from classit.data.instruct import DataError

    job = plan_generation(name, gcfg, cache_dir)
    if not job.complete:
        raise DataError(f"{where(name)}: the set is not generated yet ({job.folder}): `classit generate-qa` "
                        f"with this config makes it, as a sweep or `classit instruct` does first (not a --dry-run)")
    return pq.read_table(job.folder / "records.parquet").to_pylist()
