"""Results store: versioned Parquet tables of part files, written then renamed.

Layout: `<storage>/<run or sweep>/results/<table>/part-<uuid>.parquet`. A table is a folder of part
files, so any number of writers (training workers, trials, evaluation actors, on any node) add
to it at once without coordination; each part is written under a hidden temporary name and
renamed when complete, so a crash never leaves a half-written part where readers look.

Tables and their columns (schema version 2; every row also carries `schema_version`):

- `trials`: one row per finished trial: `sweep`, `trial` (key of its parameters), `run`,
  `status`, `error`, `params` (JSON) and `param.<name>` per swept parameter (`param.seed`,
  `param.curriculum`, ...), the whole config flattened as `config.<section>.<field>` (and whole as
  JSON in `config`), `val_loss`, `input_words`, `exposure_words`, `checkpoint`, every headline
  score as `<task>:<subtask>:<metric>`, `start`, `end`, `seconds`, `gpu_hours`, `versions`
  (JSON: classit, torch, transformers, ray, deepspeed, optuna) and `git_commit`.
- `train_metrics`: one row per logged step: `trial` (run name), `stage`, `stage_index`, `step`,
  `total_steps`, `words_seen`, `input_words`, `exposure_words`, `loss`, `val_loss`, `lr`,
  `tokens_per_s`, `time` (some only on evaluation steps), and the run's whole config (`config`, JSON).
- `eval_scores`: one row per (checkpoint, task, subtask, metric): `trial`, `checkpoint`,
  `words_seen`, `task`, `subtask`, `metric`, `value`, `n_items`, `seconds`, `error` (an error row
  has metric `error` and the reason), plus the job's `data_dir`, `fast`, `revision` and the trial's
  whole config (`config`, JSON; empty for a `classit evaluate` of a bare checkpoint).

Readers accept older versions: version 1 rows (before `gpu_hours`, `versions`, `git_commit`,
`revision`, `config` outside `trials`) read with those columns empty. A part file that cannot be read is reported by name
(a warning, and in `frame.attrs["skipped"]`) and skipped, never silently dropped from totals.
"""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 2
ADDED_IN_V2 = {"trials": ("gpu_hours", "versions", "git_commit"), "train_metrics": ("config",),
               "eval_scores": ("revision", "config")}


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


def part_files(folder: str) -> list[str]:
    """The complete part files of a table (temporary files of writers in flight excluded)."""
    fs, path = _filesystem(folder)
    info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.path for i in info if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))


def upgrade(frame, table: str):
    """Rows of older schema versions, with the columns later versions added (empty)."""
    for column in ADDED_IN_V2.get(table, ()):
        if column not in frame:
            frame[column] = None
    return frame


def read_table(folder: str):
    """All complete part files of a table as one pandas DataFrame (empty if none).

    An unreadable part is skipped with a warning that names it; the skipped paths are listed in
    `frame.attrs["skipped"]` so reports can say what is missing.
    """
    import pandas as pd

    fs, _ = _filesystem(folder)
    frames, skipped = [], []
    for part in part_files(folder):
        try:
            frames.append(pq.read_table(part, filesystem=fs).to_pandas())
        except (OSError, pa.ArrowException) as err:
            skipped.append(part)
            warnings.warn(f"skipping unreadable results file {part}: {str(err).splitlines()[0]}", stacklevel=2)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    frame = upgrade(frame, Path(folder).name) if frames else frame
    frame.attrs["skipped"] = skipped
    return frame


def flatten(config: dict, prefix: str = "config") -> dict[str, Any]:
    """A nested config as `config.<section>.<field>` columns (lists and maps as JSON)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(flatten(value, name))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return out


def provenance() -> dict[str, Any]:
    """Package versions and the git commit of the code that produced a row."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("classit", "torch", "transformers", "ray", "deepspeed", "optuna"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {"versions": json.dumps(versions, sort_keys=True), "git_commit": commit}
