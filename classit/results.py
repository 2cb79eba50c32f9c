"""Results store: versioned Parquet tables of part files, written then renamed, each with a declared schema.

Layout: `<storage>/<run or sweep>/results/<table>/part-<name>.parquet`. A table is a folder of part
files, so any number of writers (training workers, trials, evaluation actors, on any node) add
to it at once without coordination; each part is written under a hidden temporary name and
renamed when complete, so a crash never leaves a half-written part where readers look. A part
named by its key (one evaluation job, one trial) replaces the earlier part of that key: a re-run
never leaves a second copy of a row.

Every part is written with its table's declared Arrow schema: a field a row lacks is null, a key
the schema does not know is an error, and every part of a table has the same columns and types,
so a table reads whole with `pyarrow.dataset`, a plain DuckDB glob
(`read_parquet('<table>/*.parquet')`) and pandas. The tables' columns, row by row, are in
`docs/results.md`.

Readers accept older versions: rows of earlier versions read with the columns added since empty
(`read_table`). A part file that cannot be read is reported by name (a warning, and in
`frame.attrs["skipped"]`) and skipped, never silently dropped from totals.
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
import typing
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from classit.config import section_class
from classit.evaluate.aggregates import NAMES as AGGREGATES
from classit.units import one_line

# 4: trials carry the leaderboard aggregates (babylm:*); 5: eval_scores `series` (AoA); 6: eval_scores
# `started`/`finished` (when the job ran); 7: `hardware` in trials and eval_scores; 8: trials
# `base_checkpoint` (what `classit export-hub` needs beside the trial's run)
SCHEMA_VERSION = 8
ADDED_SINCE_V1 = {"trials": ("gpu_hours", "versions", "git_commit", *AGGREGATES, "hardware", "base_checkpoint"),
                  "train_metrics": ("config",),
                  "eval_scores": ("revision", "config", "series", "started", "finished", "hardware")}

EVAL_SCORES_SCHEMA = pa.schema([
    ("checkpoint", pa.string()), ("task", pa.string()), ("data_dir", pa.string()), ("trial", pa.string()),
    ("words_seen", pa.int64()), ("fast", pa.bool_()), ("export_dir", pa.string()), ("revision", pa.string()),
    ("pooling", pa.string()), ("config", pa.string()), ("series", pa.string()), ("subtask", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()), ("n_items", pa.int64()), ("seconds", pa.float64()), ("error", pa.string()),
    ("started", pa.float64()), ("finished", pa.float64()), ("hardware", pa.string()), ("schema_version", pa.int64()),
])

AOA_SURPRISAL_SCHEMA = pa.schema([
    ("trial", pa.string()), ("checkpoint", pa.string()), ("series", pa.string()), ("step", pa.string()),
    ("word_count", pa.int64()), ("target_word", pa.string()), ("context_id", pa.int64()), ("context", pa.string()),
    ("surprisal", pa.float64()), ("schema_version", pa.int64()),
])


def train_metrics_schema(validation_sets: list[str] = ()) -> pa.Schema:
    """Columns of `train_metrics`; one `val_loss:<name>` per named validation set."""
    return pa.schema([
        ("trial", pa.string()), ("stage", pa.string()), ("stage_index", pa.int64()), ("step", pa.int64()),
        ("total_steps", pa.int64()), ("epoch", pa.int64()), ("words_seen", pa.int64()),
        ("tokens_seen", pa.int64()), ("input_words", pa.int64()), ("exposure_words", pa.int64()),
        ("loss", pa.float64()), ("lr", pa.float64()), ("tokens_per_s", pa.float64()), ("val_loss", pa.float64()),
        *[(f"val_loss:{name}", pa.float64()) for name in validation_sets],
        ("curriculum", pa.string()), ("mix_ratio", pa.float64()), ("validation_records", pa.string()),
        ("time", pa.float64()), ("config", pa.string()), ("schema_version", pa.int64()),
    ])


def trials_schema(cfg) -> pa.Schema:
    """Columns of a sweep's `trials` table, derived from its config: parameters, datasets, scores, config."""
    from classit.config import ClassitConfig
    from classit.evaluate.catalog import score_columns

    sweep = cfg.sweep
    params = [(f"param.{name}", _choice_type(dim.choice) if dim.choice is not None else
               pa.int64() if dim.integer is not None else pa.float64()) for name, dim in sweep.space.items()]
    return pa.schema([
        ("sweep", pa.string()), ("trial", pa.string()), ("run", pa.string()), ("status", pa.string()),
        ("error", pa.string()), ("params", pa.string()), *params, ("param.seed", pa.int64()),
        ("val_loss", pa.float64()), *[(f"val_loss:{name}", pa.float64()) for name in cfg.instruct.datasets],
        ("validation_records", pa.string()), ("base_val_loss", pa.float64()), ("input_words", pa.int64()),
        ("exposure_words", pa.int64()), ("checkpoint", pa.string()), ("base_checkpoint", pa.string()),
        *[(key, pa.float64()) for key in score_columns(cfg.evaluation.tasks, sweep.metrics)],
        *[(name, pa.float64()) for name in AGGREGATES],
        ("start", pa.float64()), ("end", pa.float64()), ("seconds", pa.float64()), ("gpu_hours", pa.float64()),
        ("versions", pa.string()), ("git_commit", pa.string()), ("hardware", pa.string()),
        *_config_fields(ClassitConfig, "config", exclude={"sweep"}), ("config", pa.string()),
        ("schema_version", pa.int64()),
    ])


def _choice_type(values: list) -> pa.DataType:
    if all(isinstance(v, bool) for v in values):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pa.float64()
    return pa.string()  # strings, and lists (explicit stage orders) as JSON


def _scalar_type(annotation) -> pa.DataType:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else pa.string()
    if origin is typing.Annotated:
        return _scalar_type(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return _choice_type(list(typing.get_args(annotation)))
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64()}.get(annotation, pa.string())


def _config_fields(model, prefix: str, exclude=frozenset()) -> list[tuple[str, pa.DataType]]:
    fields = []
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        section = section_class(info.annotation)
        fields += (_config_fields(section, f"{prefix}.{name}") if section is not None
                   else [(f"{prefix}.{name}", _scalar_type(info.annotation))])
    return fields


def config_columns(cfg, prefix: str = "config", exclude=frozenset({"sweep"})) -> dict[str, Any]:
    """A config as `config.<section>.<field>` columns, matching `trials_schema` (maps and lists as JSON)."""
    out = {}
    for name in type(cfg).model_fields:
        if name in exclude:
            continue
        value, column = getattr(cfg, name), f"{prefix}.{name}"
        section = section_class(type(cfg).model_fields[name].annotation)
        if section is not None:
            out.update(config_columns(value, column, frozenset()) if value is not None else
                       {c: None for c, _ in _config_fields(section, column)})
        else:
            dumped = cfg.model_dump(mode="json", include={name})[name]
            out[column] = json.dumps(dumped, sort_keys=True) if isinstance(dumped, (list, dict)) else dumped
    return out


def storage_uri(storage_path: str) -> str:
    """A cloud URI as it is; a local path made absolute (Ray and pyarrow both need that)."""
    return storage_path if "://" in storage_path else str(Path(storage_path).expanduser().resolve())


def filesystem(folder: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(storage_uri(folder))


def run_dir(storage_path: str, run_name: str) -> str:
    """Where Ray Train keeps a run's checkpoints (a folder or a cloud URI)."""
    return f"{storage_path.rstrip('/')}/{run_name}"


SWEEP_FILE = "sweep.json"


@dataclass
class SweepRecord:
    """A sweep folder's `sweep.json`: the config its driver started with, and that driver."""

    config: dict
    pid: int
    host: str
    started: float  # Unix seconds


def read_sweep_record(path: Path) -> SweepRecord:
    from classit.artefacts import parse_json_as

    return parse_json_as(SweepRecord, path.read_text(), path)


def sweep_folder(path: Path) -> Path:
    """`path` if it is a sweep's folder; where it is a storage folder holding sweeps instead, the
    sweep whose driver started last (what `classit status` and `classit report` show by default)."""
    if (path / SWEEP_FILE).is_file():
        return path
    found = sorted(path.glob(f"*/{SWEEP_FILE}"), key=lambda p: read_sweep_record(p).started)
    return found[-1].parent if found else path


def table_dir(storage_path: str, run_name: str, table: str) -> str:
    return f"{run_dir(storage_path, run_name)}/results/{table}"


def write_rows(folder: str, rows: list[dict[str, Any]], schema: pa.Schema | None = None,
               key: str | None = None) -> str | None:
    """Write rows as one new part file (atomically: temporary name, then rename).

    With a `schema` every row is written in its columns (a missing field is null; an unknown key
    is an error). Without one, the columns are every key of every row, typed from all their
    values. With a `key` the part is named by it and replaces an earlier part of the same key.
    """
    if not rows:
        return None
    rows = [{**row, "schema_version": SCHEMA_VERSION} for row in rows]
    if schema is None:
        names = list(dict.fromkeys(k for row in rows for k in row))
        table = pa.Table.from_pydict({n: [row.get(n) for row in rows] for n in names})
    else:
        unknown = sorted({k for row in rows for k in row} - set(schema.names))
        if unknown:
            raise ValueError(f"results table {folder}: rows carry columns its schema does not declare: {unknown}")
        table = pa.Table.from_pylist(rows, schema=schema)
    fs, path = filesystem(folder)
    fs.create_dir(path, recursive=True)
    name = f"part-{hashlib.sha256(key.encode()).hexdigest()[:32] if key else uuid.uuid4().hex}.parquet"
    tmp = f"{path}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, f"{path}/{name}")  # a rename: replaces a part of the same key whole
    return f"{path}/{name}"


def part_files(folder: str) -> list[str]:
    """The complete part files of a table (temporary files of writers in flight excluded)."""
    fs, path = filesystem(folder)
    info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.path for i in info if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))


def upgrade(frame, table: str):
    """Rows of older schema versions, with the columns later versions added (empty)."""
    for column in ADDED_SINCE_V1.get(table, ()):
        if column not in frame:
            frame[column] = None
    return frame


def read_table(folder: str):
    """All complete part files of a table as one pandas DataFrame (empty if none).

    An unreadable part is skipped with a warning that names it; the skipped paths are listed in
    `frame.attrs["skipped"]` so reports can say what is missing.
    """
    import pandas as pd

    fs, _ = filesystem(folder)
    frames, skipped = [], []
    for part in part_files(folder):
        try:
            frames.append(pq.read_table(part, filesystem=fs).to_pandas())
        except (OSError, pa.ArrowException) as err:
            skipped.append(part)
            warnings.warn(f"skipping unreadable results file {part}: {one_line(err)}", stacklevel=2)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    frame = upgrade(frame, Path(folder).name) if frames else frame
    frame.attrs["skipped"] = skipped
    return frame


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


def hardware(device: str | None = None) -> str:
    """The processor that computed a result: the GPU's name on `device` "cuda[:n]" (None: a GPU
    where torch sees one, as the scorer and the training workers choose), else the CPU's model.
    The same config and package versions give the same numbers on the same processor only: fp32
    kernels sum in orders of their own from one processor to another, and training carries the
    last-digit differences into every later number."""
    import sys

    torch = sys.modules.get("torch")  # never imported for this: the driver and the planners run without torch
    if device is None:
        device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    return _processor_name(device)


@functools.lru_cache  # a device's processor does not change in a process's life: read once, not per job
def _processor_name(device: str) -> str:
    import platform

    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()
