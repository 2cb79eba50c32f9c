"""Where each evaluation task reads its data in a data folder (the official `evaluation_data` layout,
or classit's own folder names), so that a sweep or `classit evaluate` checks every task's files before
anything trains or loads: plain paths, no torch."""

from __future__ import annotations

from pathlib import Path

from classit.evaluate.catalog import FINETUNE
from classit.evaluate.tasks import zero_shot


def glue_files(task: str, data_dir: str | Path) -> tuple[Path, Path]:
    """A (Super)GLUE task's training and validation files."""
    folder = Path(data_dir) / "glue_filtered"
    return folder / f"{task}.train.jsonl", folder / f"{task}.valid.jsonl"


def reading_file(data_dir: str | Path) -> Path:
    return Path(data_dir) / "reading" / "reading_data.csv"


def aoa_files(data_dir: str | Path) -> tuple[Path, Path]:
    """The words' contexts (`cdi_childes.json`) and the children's AoA curves (`cdi_human.csv`)."""
    folder = Path(data_dir) / "aoa"
    return folder / "cdi_childes.json", folder / "cdi_human.csv"


def missing_input(task: str, data_dir: str | Path, fast: bool = False) -> str:
    """"" when the folder holds what `task` reads; otherwise one line naming what is missing."""
    if task in FINETUNE:
        needed = glue_files(task, data_dir)
    elif task == "reading":
        needed = (reading_file(data_dir),)
    elif task == "aoa":
        needed = aoa_files(data_dir)
    else:
        try:
            zero_shot.data_folder(task, data_dir, fast)
        except FileNotFoundError as err:
            return str(err)
        return ""
    missing = [str(path) for path in needed if not path.is_file()]
    return f"{', '.join(missing)}: no such file for task {task}" if missing else ""
