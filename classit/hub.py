"""A run's checkpoints as a Hugging Face Hub repository with the leaderboard's revisions.

The official BabyLM scripts evaluate a model's intermediate checkpoints as revisions of its Hub
repository: branch `chck_<N>M` holds the checkpoint at N million words (1M ... 10M, 20M ... 100M,
200M ... 1000M), `main` the final model. `export_hub` builds that repository locally from one or
more run folders (a base's pretraining run and the instruction-tuning run that continued it: the
marks count total exposure across both), ready for `git push` to the Hub.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from classit.train.checkpoints import DEEPSPEED_DIR, TRAINER_STATE, load_trainer_state

# Weights go through Git LFS, as on every Hub model repository (`git lfs install` before pushing).
GITATTRIBUTES = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def revision_name(mark_words: int) -> str:
    return f"chck_{mark_words // 1_000_000}M"


def revisions(run_dirs: list[Path]) -> dict[str, Path]:
    """`main`: the checkpoint with the most exposure; `chck_<N>M`: each checkpoint saved at a mark."""
    missing = [str(run) for run in run_dirs if not Path(run).is_dir()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: no such run folder")
    checkpoints = sorted(((load_trainer_state(p), p) for run in run_dirs for p in Path(run).iterdir()
                          if (p / TRAINER_STATE).is_file()), key=lambda sp: sp[0].total_exposure_words)
    if not checkpoints:
        raise FileNotFoundError(f"{', '.join(map(str, run_dirs))}: no checkpoint folders (with {TRAINER_STATE})")
    named = {revision_name(state.babylm_mark): path for state, path in checkpoints if state.babylm_mark}
    return {"main": checkpoints[-1][1], **named}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=classit", "-c", "user.email=classit@localhost",
                    *args], check=True, capture_output=True, text=True)


def export_hub(run_dirs: list[Path], out: Path) -> dict[str, Path]:
    """A git repository at `out`: one branch per revision, each holding its checkpoint's model and
    tokenizer files (no optimizer state). Returns revision -> the checkpoint it holds."""
    chosen = revisions(run_dirs)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty (the repository is made in a new or empty folder)")
    out.mkdir(parents=True, exist_ok=True)
    _git(out, "init", "-q", "-b", "main")
    for revision, checkpoint in chosen.items():
        if revision != "main":
            _git(out, "switch", "-q", "--orphan", revision)
        for old in out.iterdir():  # the previous branch's files leave the work tree
            if old.name != ".git":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        (out / ".gitattributes").write_text(GITATTRIBUTES)
        for item in checkpoint.iterdir():
            if item.name not in (DEEPSPEED_DIR, TRAINER_STATE):
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / item.name)
        _git(out, "add", "-A")
        words = load_trainer_state(checkpoint).total_exposure_words
        _git(out, "commit", "-q", "-m", f"{revision}: {checkpoint.name} ({words:,} words of exposure)")
    _git(out, "switch", "-q", "main")
    return chosen
