"""Results store: Parquet part files under a run's storage folder, written then renamed.

A table is a folder of part files (`<storage>/<run>/results/<table>/part-*.parquet`), so any
number of writers can add to it at once and a crash never leaves a half-written part under
a name readers look at.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 1


def storage_uri(storage_path: str) -> str:
    """A cloud URI as it is; a local path made absolute (Ray and pyarrow both need that)."""
    return storage_path if "://" in storage_path else str(Path(storage_path).expanduser().resolve())


def _filesystem(folder: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(storage_uri(folder))


def table_dir(storage_path: str, run_name: str, table: str) -> str:
    return f"{storage_path.rstrip('/')}/{run_name}/results/{table}"


def write_rows(folder: str, rows: list[dict[str, Any]]) -> str | None:
    """Write rows as one new part file (atomically: temporary name, then rename)."""
    if not rows:
        return None
    fs, path = _filesystem(folder)
    fs.create_dir(path, recursive=True)
    table = pa.Table.from_pylist([{**row, "schema_version": SCHEMA_VERSION} for row in rows])
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = f"{path}/.{name}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, f"{path}/{name}")
    return f"{path}/{name}"


def read_table(folder: str):
    """All complete part files of a table as one pandas DataFrame (empty if none)."""
    import pandas as pd

    fs, path = _filesystem(folder)
    info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    parts = sorted(i.path for i in info if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))
    if not parts:
        return pd.DataFrame()
    return pd.concat([pq.read_table(p, filesystem=fs).to_pandas() for p in parts], ignore_index=True)
