"""The results store: concurrent writers, a writer killed mid-write, corrupt files, older schemas."""

import multiprocessing
import os
import signal
import time

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
