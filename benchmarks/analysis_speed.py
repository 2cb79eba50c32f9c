"""Analysis speed: the leaderboard query over 1,000,000 eval_scores rows, DuckDB vs pandas.

Generates a sweep's worth of results in the store's layout (part files of `eval_scores`, a
`trials` table), then times the same leaderboard query (final-checkpoint headline scores joined
to their trial's configuration, mean/std/count per configuration and task) with DuckDB reading
the Parquet parts directly and with pandas reading them and grouping. Prints both and the ratio.

    python benchmarks/analysis_speed.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from classit.results import write_rows

TASKS = ["blimp", "blimp_supplement", "ewok", "entity_tracking", "wug_adj", "wug_past", "reading",
         "boolq", "multirc", "rte", "wsc", "mrpc", "qqp", "mnli"]

DUCKDB_QUERY = """
SELECT t.config, e.task, avg(e.value) AS mean, stddev_samp(e.value) AS std, count(*) AS n
FROM read_parquet('{root}/eval_scores/part-*.parquet') e
JOIN read_parquet('{root}/trials/part-*.parquet') t ON e.trial = t.trial AND e.checkpoint = t.checkpoint
WHERE e.subtask = 'average'
GROUP BY t.config, e.task ORDER BY t.config, e.task
"""


def generate(root: Path, rows: int, parts: int = 50) -> None:
    """`rows` eval_scores rows over 200 trials x 4 checkpoints x 14 tasks x subtasks, in `parts` files."""
    rng = np.random.default_rng(0)
    trials = 200
    configs = [f"curriculum={c}, learning_rate={lr:.3g}" for c in ("pt", "switch", "wiki", "merged", "switch_wiki",
                                                                 "wiki_switch") for lr in np.geomspace(1e-5, 1e-3, 8)]
    write_rows(str(root / "trials"), [{"trial": f"t{i}", "checkpoint": f"/ckpt/t{i}/final", "config": configs[i % len(configs)],
                                       "status": "finished"} for i in range(trials)])
    per_part = rows // parts
    for p in range(parts):
        n = per_part
        trial = rng.integers(trials, size=n)
        frame = {"trial": [f"t{i}" for i in trial],
                 "checkpoint": [f"/ckpt/t{i}/{'final' if c == 0 else f'chck_{c}M'}" for i, c in
                                zip(trial, rng.integers(4, size=n))],
                 "task": np.array(TASKS)[rng.integers(len(TASKS), size=n)],
                 "subtask": np.where(rng.random(n) < 0.2, "average", "UID:" + rng.integers(70, size=n).astype(str)),
                 "metric": "accuracy", "value": rng.uniform(0, 100, size=n), "n_items": 100, "seconds": 1.0,
                 "words_seen": 1_000_000, "error": ""}
        write_rows(str(root / "eval_scores"), pd.DataFrame(frame).to_dict("records"))


def with_duckdb(root: Path) -> pd.DataFrame:
    import duckdb

    return duckdb.connect().execute(DUCKDB_QUERY.format(root=root)).df()


def with_pandas(root: Path) -> pd.DataFrame:
    scores = pd.concat([pd.read_parquet(p) for p in sorted((root / "eval_scores").glob("part-*.parquet"))])
    trials = pd.concat([pd.read_parquet(p) for p in sorted((root / "trials").glob("part-*.parquet"))])
    joined = scores[scores["subtask"] == "average"].merge(trials[["trial", "checkpoint", "config"]],
                                                          on=["trial", "checkpoint"])
    return (joined.groupby(["config", "task"])["value"].agg(mean="mean", std="std", n="count")
            .reset_index().sort_values(["config", "task"]))


def timed(fn, root: Path, repeats: int) -> tuple[float, pd.DataFrame]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(root)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="classit-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate(root, args.rows)
        print(f"generated {args.rows:,} eval_scores rows in 50 part files ({time.perf_counter() - start:.1f} s)")
        duck_s, duck = timed(with_duckdb, root, args.repeats)
        pandas_s, pdf = timed(with_pandas, root, args.repeats)
        assert len(duck) == len(pdf) and np.allclose(duck["mean"].to_numpy(), pdf["mean"].to_numpy())
        print(f"leaderboard query, median of {args.repeats}: DuckDB {duck_s:.3f} s, pandas {pandas_s:.3f} s "
              f"({len(duck)} rows, same numbers)")
        print(f"ratio pandas / DuckDB = {pandas_s / duck_s:.1f}x")


if __name__ == "__main__":
    main()
