"""`classit evaluate` end to end beside the official BabyLM 2025 pipeline, on all of BLiMP.

Both sides as a user runs them, each timed from its command's start to its exit (interpreter,
imports, Ray's start for classit, model loads included), on the same machine and files:

- one checkpoint: `classit evaluate --model CKPT --tasks blimp` vs the pipeline's
  `sentence_zero_shot.run --task blimp` (what `eval_zero_shot.sh` runs);
- a run's series of BabyLM-mark checkpoints: one `classit evaluate` with a `--model` per mark vs
  the pipeline once per checkpoint (as `eval_zero_shot_fast_all_revisions.sh` loops).

Targets: classit at least 3x faster on one checkpoint, 5x on the series. Every prediction of both
sides is compared too (`predictions.json`, item by item), so the speed is of the same answers.

    python benchmarks/evaluate_speed.py --official DIR --python PYTHON --run RUN --blimp ../shared/data/blimp \
        [--marks 6]

`DIR` and `PYTHON` as for `official_parity.py` (the pipeline's source and an interpreter with its
pinned requirements); `RUN` a run folder with BabyLM-mark checkpoints (its final checkpoint is the
single one).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_parity import compare, predictions, run_official  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_classit(checkpoints: list[Path], data: Path, out: Path) -> float:
    command = [sys.executable, "-m", "classit.cli", "evaluate", "--tasks", "blimp", "--data-dir", str(data),
               "--export", str(out), "--output", str(out / "eval_scores")]
    for checkpoint in checkpoints:
        command += ["--model", str(checkpoint)]
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=REPO,
                       env={**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(REPO)})
        return time.perf_counter() - start
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def main() -> None:
    from classit.hub import revisions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="the official pipeline's source folder")
    parser.add_argument("--python", required=True, help="a Python with the official pipeline's requirements")
    parser.add_argument("--run", type=Path, required=True, help="a run folder with BabyLM-mark checkpoints")
    parser.add_argument("--blimp", type=Path, required=True, help="BLiMP in the official layout (all 67 files)")
    parser.add_argument("--marks", type=int, default=6, help="the series: the run's first N mark checkpoints")
    args = parser.parse_args()
    chosen = revisions([args.run.resolve()])
    final = chosen.pop("main")
    series = list(chosen.values())[:args.marks]
    work = Path(tempfile.mkdtemp(prefix="evaluate-speed-"))
    try:
        data = work / "data"
        shutil.copytree(args.blimp, data / "blimp_filtered")
        official_out, classit_out = work / "official", work / "classit"
        rows = []
        for name, checkpoints in (("one checkpoint", [final]), (f"series of {len(series)} marks", series)):
            ours = run_classit(checkpoints, data, classit_out / name.replace(" ", "-"))
            theirs = sum(run_official(args.official, args.python, c, "blimp", data, official_out) for c in checkpoints)
            items = same = 0
            for checkpoint in checkpoints:
                n, k, _ = compare(predictions(classit_out / name.replace(" ", "-"), checkpoint, "blimp"),
                                  predictions(official_out, checkpoint, "blimp"))
                items, same = items + n, same + k
            rows.append((name, len(checkpoints), items, same, ours, theirs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"all of BLiMP ({args.blimp}); run {args.run}; {os.cpu_count()} cores")
    print(f"{'':<20} {'ckpts':>5} {'items':>8} {'identical':>9} {'classit s':>10} {'official s':>10} {'speed-up':>8}")
    for name, n, items, same, ours, theirs in rows:
        print(f"{name:<20} {n:>5} {items:>8,} {same:>9,} {ours:>10.1f} {theirs:>10.1f} {theirs / ours:>7.2f}x")
    print("targets: one checkpoint >= 3x, a series >= 5x")


if __name__ == "__main__":
    main()
