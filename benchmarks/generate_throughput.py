"""Teacher-written Q&A: the Ray Data job against a plain loop, same teacher, articles and settings.

The baseline is what one would write first: one process, `generate` called one article at a time
(the same schema-held decoding, checks and retries: `write_shard` with a batch of 1), torch on every
core. The job is `classit generate-qa`'s: Ray started, `actors` actors each holding the teacher on
`cpus_per_actor` cores, articles batched `batch_size` to a generate call, shards written as they
come back; its time counts Ray's start and the actors' loading. Prints records per second for both
and their ratio (target on a 2-core machine: at least 1.5x).

    python benchmarks/generate_throughput.py [--articles 96] [--teacher synthetic|FOLDER] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=96)
    parser.add_argument("--teacher", default="synthetic", help="synthetic (trained here once) or a model folder")
    parser.add_argument("--cache", default=".cache/classit", help="where the synthetic teacher is kept")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import ray
    import torch

    from classit.config import GenerateConfig
    from classit.generate.articles import load_articles
    from classit.generate.job import generate, plan_generation, resolve_teacher
    from classit.generate.teacher import Teacher, write_shard

    spec = dict(synthetic={"sentences": 30000, "seed": 0}, max_articles=args.articles, teacher=args.teacher,
                sampling={"max_new_tokens": 256}, batch_size=args.batch_size, articles_per_shard=16,
                actors=args.actors, cpus_per_actor=max(1, os.cpu_count() // args.actors))
    cache = Path(args.cache)
    teacher = resolve_teacher(GenerateConfig.model_validate(spec), cache, "wiki")
    gcfg = GenerateConfig.model_validate({**spec, "teacher": str(teacher)})
    articles = load_articles(gcfg, cache)
    print(f"{len(articles)} articles, {gcfg.pairs_per_article} pairs each, teacher {teacher}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}")

    start = time.perf_counter()
    loop = Teacher(gcfg.model_copy(update={"batch_size": 1}), str(teacher))
    baseline = write_shard(loop, articles, shard=0, source="wiki", made_by={})
    baseline_s = time.perf_counter() - start
    del loop

    scratch = Path(tempfile.mkdtemp(prefix="qa-bench-"))
    try:
        job = plan_generation("wiki", gcfg, scratch)
        start = time.perf_counter()
        ray.init(log_to_driver=False, logging_level="WARNING")
        summary = generate(job, log=lambda line: None)
        ray.shutdown()
        job_s = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base_rate, job_rate = len(baseline["records"]) / baseline_s, summary["records"] / job_s
    print(f"{'':<44} {'records':>8} {'missing':>8} {'seconds':>8} {'records/s':>10}")
    print(f"{'baseline: one process, one article a call':<44} {len(baseline['records']):>8} "
          f"{baseline['missing']:>8} {baseline_s:>8.1f} {base_rate:>10.2f}")
    print(f"{f'Ray Data: {args.actors} actors, {args.batch_size} articles a call':<44} {summary['records']:>8} "
          f"{summary['missing']:>8} {job_s:>8.1f} {job_rate:>10.2f}")
    print(f"speed-up: {job_rate / base_rate:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
