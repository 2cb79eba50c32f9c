"""`classit evaluate` end to end beside the official BabyLM 2025 pipeline, on all of BLiMP.

Both sides as a user runs them, each timed from its command's start to its exit (interpreter,
imports, Ray's start for classit, model loads included), on the same machine and files:

- one checkpoint: `classit evaluate --model CKPT --tasks blimp` vs the pipeline's
  `sentence_zero_shot.run --task blimp` (what `eval_zero_shot.sh` runs);
- a run's series of BabyLM-mark checkpoints: one `classit evaluate` with a `--model` per mark vs
  the pipeline once per checkpoint (as `eval_zero_shot_fast_all_revisions.sh` loops).

Targets: classit at least 3x faster on one checkpoint, 5x on the series. Every prediction of both
sides is compared too (`predictions.json`, item by item), so the speed is of the same answers.
Also printed, beside 3x the official's time, to tell an overhead from the arithmetic itself: a
lower bound on classit's time for one checkpoint on this machine in fp32 (the scorer's linear-layer
FLOPs at this machine's measured matrix-multiply rate), and the scorer's forward passes alone, timed
as the evaluation actors run them (one process per core, each its share of the batches on one
thread, all at once; loading, tokenizing and planting left out).

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


def matmul_rate(in_features: int, out_features: int, threads: int, start_at: float, seconds: float = 2.0) -> float:
    """GFLOP/s of an fp32 (4,096 x in) @ (in x out) matrix multiply, the scorer's batch of tokens through
    one layer, on `threads` threads over `seconds` from `start_at` (a wall-clock time, so that processes
    started one after another measure at once)."""
    import torch

    torch.set_num_threads(threads)
    layer, batch = torch.nn.Linear(in_features, out_features, bias=False), torch.randn(4096, in_features)
    with torch.inference_mode():
        layer(batch)
        time.sleep(max(0.0, start_at - time.time()))
        start, reps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            layer(batch)
            reps += 1
        elapsed = time.perf_counter() - start
    return 2 * len(batch) * in_features * out_features * reps / elapsed / 1e9


def blimp_encoded(checkpoint: str | Path, blimp: str | Path):
    """The checkpoint's model and tokenizer on CPU, and all of BLiMP's candidates encoded by it."""
    import transformers

    from classit.evaluate.scoring import encode_candidates, load_model
    from classit.evaluate.tasks.zero_shot import read_blimp

    transformers.utils.logging.disable_progress_bar()
    model, tokenizer = load_model(str(checkpoint), "cpu")
    return model, tokenizer, encode_candidates(tokenizer, [c for item in read_blimp(blimp) for c in item.candidates])


def forward_passes(checkpoint: str, blimp: str, share: tuple[int, int], ready) -> float:
    """Seconds of `run_plan` on this share of all of BLiMP's batches, on one thread, started when every
    share's process has planted BLiMP (`ready`, a barrier), so that the shares run at once, as the
    evaluation actors run them."""
    import torch

    from classit.evaluate.scoring import plan_scoring, run_plan

    torch.set_num_threads(1)
    model, tokenizer, encoded = blimp_encoded(checkpoint, blimp)
    plan = plan_scoring(encoded, tokenizer.pad_token_id)
    ready.wait()
    start = time.perf_counter()
    run_plan(model, plan, share=share)
    return time.perf_counter() - start


def shares_at_once(checkpoint: Path, blimp: Path) -> float:
    """The longest of the cores' shares of BLiMP's forward passes, run one process per core at once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cores, spawn = os.cpu_count(), multiprocessing.get_context("spawn")
    with spawn.Manager() as manager, ProcessPoolExecutor(cores, mp_context=spawn) as pool:
        ready = manager.Barrier(cores)
        jobs = [(str(checkpoint), str(blimp), (k, cores), ready) for k in range(cores)]
        return max(pool.map(forward_passes, *zip(*jobs)))


def compute_floor(checkpoint: Path, blimp: Path) -> tuple[float, float, float]:
    """A lower bound on scoring all of BLiMP with one checkpoint on this machine, in fp32: the
    FLOPs of the scorer's linear layers (every fed tree node through the decoder's, every node
    that predicts a scored token through the LM head) at the best rate this machine's matrix
    multiply reaches on the decoder's widest layer, one process on every core or one process per
    core at once (as the evaluation actors run). Attention, norms and everything else come on top.
    Returns (TFLOP, GFLOP/s, seconds)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    import torch

    from classit.evaluate.scoring import forests

    model, _, encoded = blimp_encoded(checkpoint, blimp)
    fed = predictors = 0
    for _, forest in forests(encoded):
        fed += len(forest.tokens)
        predictors += len(np.unique(forest.predicting))
    linears = [m for m in model.base_model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings().weight.numel()
    flops = 2 * fed * sum(m.weight.numel() for m in linears) + 2 * predictors * head
    widest = max(linears, key=lambda m: m.weight.numel())
    shape, cores = (widest.in_features, widest.out_features), os.cpu_count()
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        start_at = time.time() + 5  # every process started and torch imported by then
        per_core = sum(pool.map(matmul_rate, *zip(*[(*shape, 1, start_at)] * cores)))
    rate = max(per_core, matmul_rate(*shape, cores, time.time()))
    return flops / 1e12, rate, flops / (rate * 1e9)


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
        rows, differing = [], []
        for name, checkpoints in (("one checkpoint", [final]), (f"series of {len(series)} marks", series)):
            ours = run_classit(checkpoints, data, classit_out / name.replace(" ", "-"))
            theirs = sum(run_official(args.official, args.python, c, "blimp", data, official_out) for c in checkpoints)
            items = same = 0
            for checkpoint in checkpoints:
                n, k, _ = compare(predictions(classit_out / name.replace(" ", "-"), checkpoint, "blimp"),
                                  predictions(official_out, checkpoint, "blimp"))
                items, same = items + n, same + k
                differing += [f"{checkpoint.name}: {n - k}"] if k < n else []
            rows.append((name, len(checkpoints), items, same, ours, theirs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"all of BLiMP ({args.blimp}); run {args.run}; {os.cpu_count()} cores")
    print(f"{'':<20} {'ckpts':>5} {'items':>8} {'identical':>9} {'classit s':>10} {'official s':>10} {'speed-up':>8}")
    for name, n, items, same, ours, theirs in rows:
        print(f"{name:<20} {n:>5} {items:>8,} {same:>9,} {ours:>10.1f} {theirs:>10.1f} {theirs / ours:>7.2f}x")
    print("targets: one checkpoint >= 3x, a series >= 5x")
    if differing:
        print("predictions that differ, by checkpoint: " + ", ".join(differing))
    tflop, rate, floor = compute_floor(final, args.blimp)
    print(f"fp32 compute floor, one checkpoint: {tflop:.2f} TFLOP in linear layers at {rate:.0f} GFLOP/s "
          f"({os.cpu_count()} cores) = {floor:.1f} s; 3x the official's one checkpoint is {rows[0][5] / 3:.1f} s")
    print(f"the scorer's forward passes alone, a share per core at once: {shares_at_once(final, args.blimp):.1f} s "
          f"(the longest share)")


if __name__ == "__main__":
    main()
