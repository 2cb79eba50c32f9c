"""The results store: concurrent writers, a writer killed mid-write, corrupt files, older schemas."""

import multiprocessing
import os
import signal
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from classit.results import SCHEMA_VERSION, read_table, write_rows

WRITERS, PARTS = 4, 15


def write_parts(folder: str, writer: int) -> None:
    for seq in range(PARTS):
        write_rows(folder, [{"writer": writer, "seq": seq, "row": r, "value": float(r)} for r in range(50)])


def write_then_hang(folder: str, ready: str) -> None:
    """A writer that dies mid-write: its part is fully written to the temporary name, never renamed."""
    real = pq.write_table

    def write_and_stall(*args, **kwargs):
        real(*args, **kwargs)
        open(ready, "w").close()  # tell the test it is now mid-write
        time.sleep(600)

    pq.write_table = write_and_stall
    write_rows(folder, [{"writer": 99, "seq": 0, "row": 0, "value": 0.0}])


def test_concurrent_writers_and_a_killed_one(tmp_path):
    folder = str(tmp_path / "eval_scores")
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=write_parts, args=(folder, w)) for w in range(WRITERS)]
    doomed = ctx.Process(target=write_then_hang, args=(folder, str(tmp_path / "doomed-ready")))
    for p in [*writers, doomed]:
        p.start()
    ready = tmp_path / "doomed-ready"
    deadline = time.time() + 120
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(doomed.pid, signal.SIGKILL)  # killed with its part written but not yet published
    for p in writers:
        p.join(120)
        assert p.exitcode == 0
    doomed.join()

    table = read_table(folder)
    assert len(table) == WRITERS * PARTS * 50
    assert not table.duplicated(["writer", "seq", "row"]).any()  # every completed write exactly once
    assert set(table["writer"]) == set(range(WRITERS))  # the killed write is absent
    assert any(n.endswith(".tmp") for n in os.listdir(folder))  # ... though its temporary file remains
    assert (table["schema_version"] == SCHEMA_VERSION).all() and table.attrs["skipped"] == []


def test_a_corrupt_part_is_named_and_skipped(tmp_path):
    folder = tmp_path / "trials"
    write_rows(str(folder), [{"trial": "a", "status": "finished"}])
    (folder / "part-corrupt.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.warns(UserWarning, match="part-corrupt.parquet"):
        table = read_table(str(folder))
    assert list(table["trial"]) == ["a"]
    assert [os.path.basename(p) for p in table.attrs["skipped"]] == ["part-corrupt.parquet"]


def test_version_1_rows_read_with_the_columns_added_since(tmp_path):
    folder = tmp_path / "trials"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"trial": "old", "status": "finished", "schema_version": 1}]),
                   folder / "part-old.parquet")
    write_rows(str(folder), [{"trial": "new", "status": "finished", "gpu_hours": 0.5, "git_commit": "abc"}])
    table = read_table(str(folder)).set_index("trial")
    assert table.loc["old", "schema_version"] == 1 and table.loc["new", "gpu_hours"] == 0.5
    assert "versions" in table and table.loc["old", "gpu_hours"] != table.loc["old", "gpu_hours"]  # NaN


def read_three_ways(folder):
    """The table through pyarrow.dataset, a plain DuckDB glob (no union_by_name) and pandas."""
    import duckdb
    import pyarrow.dataset as ds

    arrow = ds.dataset(str(folder), format="parquet").to_table()
    duck = duckdb.sql(f"SELECT * FROM read_parquet('{folder}/*.parquet')").df()
    return arrow, duck, read_table(str(folder))


def test_parts_with_different_key_sets_read_whole_every_way(tmp_path):
    from classit.config import parse_config
    from classit.results import EVAL_SCORES_SCHEMA, config_columns, train_metrics_schema, trials_schema

    metrics = tmp_path / "train_metrics"
    schema = train_metrics_schema(["switch", "wiki"])
    # The first row of the first part is an evaluation: no loss, lr or tokens/s; those appear later.
    write_rows(str(metrics), [{"trial": "t", "step": 0, "val_loss": 5.0, "val_loss:switch": 5.5},
                              {"trial": "t", "step": 10, "loss": 4.0, "lr": 1e-3, "tokens_per_s": 900.0}], schema)
    write_rows(str(metrics), [{"trial": "t", "step": 20, "loss": 3.0, "lr": 5e-4, "epoch": 1,
                               "val_loss:wiki": 3.5}], schema)
    scores = tmp_path / "eval_scores"
    write_rows(str(scores), [{"trial": "t", "checkpoint": "c", "task": "blimp", "subtask": "average",
                              "metric": "accuracy", "value": 70.0}], EVAL_SCORES_SCHEMA)
    write_rows(str(scores), [{"trial": "t", "checkpoint": "c", "task": "rte", "subtask": "", "metric": "error",
                              "value": float("nan"), "error": "boom", "pooling": "official"}], EVAL_SCORES_SCHEMA)
    cfg = parse_config({"evaluation": {"tasks": ["blimp", "rte"]},
                        "sweep": {"space": {"curriculum": {"choice": ["pt", "merged"]},
                                            "mix_ratio": {"uniform": [0.2, 0.8]}}}})
    trials = tmp_path / "trials"
    write_rows(str(trials), [{"trial": "a", "status": "error", "param.curriculum": "pt"}], trials_schema(cfg))
    write_rows(str(trials), [{"trial": "b", "status": "finished", "param.curriculum": "merged", "param.mix_ratio": 0.3,
                              "val_loss:wiki": 2.0, "rte:validation:f1": 0.5, **config_columns(cfg)}],
               trials_schema(cfg))

    for folder, n_rows, columns in ((metrics, 3, schema.names), (scores, 2, EVAL_SCORES_SCHEMA.names),
                                    (trials, 2, trials_schema(cfg).names)):
        arrow, duck, frame = read_three_ways(folder)
        for table_columns, rows in ((arrow.column_names, arrow.num_rows), (list(duck.columns), len(duck)),
                                    (list(frame.columns), len(frame))):
            assert table_columns == list(columns) and rows == n_rows, folder.name
    arrow, duck, frame = read_three_ways(metrics)
    assert sorted(frame["loss"].dropna()) == [3.0, 4.0] and frame["lr"].notna().sum() == 2
    assert duck.set_index("step").loc[20, "val_loss:wiki"] == 3.5 and arrow.column("tokens_per_s").null_count == 2
    frame = read_table(str(trials)).set_index("trial")
    assert frame.loc["b", "config.instruct.train.learning_rate"] == 2e-5 and frame.loc["b", "param.mix_ratio"] == 0.3
    assert frame.loc["b", "config.model.preset"] == "tiny" and pd.isna(frame.loc["a", "config.model.preset"])
    with pytest.raises(ValueError, match="does not declare: \\['lost'\\]"):  # never a silently dropped column
        write_rows(str(metrics), [{"trial": "t", "lost": 1.0}], schema)


def test_a_keyed_part_is_replaced_not_added(tmp_path):
    from classit.results import EVAL_SCORES_SCHEMA, part_files

    folder = str(tmp_path / "eval_scores")
    row = {"trial": "t", "checkpoint": "c", "task": "blimp", "subtask": "average", "metric": "accuracy"}
    write_rows(folder, [{**row, "value": 1.0}], EVAL_SCORES_SCHEMA, key="t|c|blimp")
    write_rows(folder, [{**row, "value": 2.0}], EVAL_SCORES_SCHEMA, key="t|c|blimp")  # the job run again
    write_rows(folder, [{**row, "task": "ewok", "value": 3.0}], EVAL_SCORES_SCHEMA, key="t|c|ewok")
    assert len(part_files(folder)) == 2
    assert sorted(read_table(folder)["value"]) == [2.0, 3.0]


def test_docs_name_every_declared_column():
    """docs/results.md is the column reference: every column a schema declares is named there."""
    from pathlib import Path

    from classit.config import parse_config
    from classit.results import AOA_SURPRISAL_SCHEMA, EVAL_SCORES_SCHEMA, train_metrics_schema, trials_schema

    page = (Path(__file__).parent.parent / "docs" / "results.md").read_text()
    # the trials table's per-sweep columns (parameters, datasets, scores, config fields) are named by pattern
    per_sweep = ("param.", "val_loss:", "config.", "babylm:", "blimp:")
    declared = {name for schema in (EVAL_SCORES_SCHEMA, AOA_SURPRISAL_SCHEMA, train_metrics_schema(),
                                    trials_schema(parse_config({"sweep": {"space": {"curriculum": {"choice": ["pt"]}}}}))) for name in schema.names
                if not name.startswith(per_sweep)}
    missing = sorted(name for name in declared if f"`{name}`" not in page)
    assert not missing, f"docs/results.md does not name: {missing}"
