"""A rehearsal of the CLASS-IT study's size on CPU: the paper config's `llama-140m` base pretrained
on a 100M-word BabyLM-layout corpus with 2 Ray Train workers and ZeRO-2 for a few steps, then
instruction-tuned a few steps from it, through the `classit` commands a user runs.

The data are `paper_scale_data.py`'s (written first if missing). Validation is cut to a few evenly
spaced rows (`max_validation_rows`): the full 10M-word split takes hours on two cores. Prints,
for each command: wall time, seconds per optimizer step (median over the logged steps after the
first), peak resident memory of each Ray Train worker (sampled every 0.5 s), and the final
checkpoint's bytes with and without its optimizer state; then the paper grid's `--dry-run` plan
(GPU-hours and checkpoint disk) on the same corpus.

    python benchmarks/rehearsal.py [--data /tmp/classit-scale] [--out /tmp/classit-rehearsal] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "sweeps" / "configs" / "class_it_paper.yaml"


def worker_peaks(stop: threading.Event, peaks: dict[int, int]) -> None:
    """Peak resident memory of every Ray Train worker process seen, by pid."""
    while not stop.is_set():
        for p in psutil.process_iter(["pid", "cmdline"]):
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or []):
                try:
                    peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
        stop.wait(0.5)


def run(command: list[str]) -> tuple[float, dict[int, int], str]:
    stop, peaks = threading.Event(), {}
    sampler = threading.Thread(target=worker_peaks, args=(stop, peaks), daemon=True)
    sampler.start()
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(command[:3])}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return seconds, peaks, proc.stdout


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def report(name: str, seconds: float, peaks: dict[int, int], run_dir: Path) -> Path:
    from classit.results import read_table

    metrics = read_table(str(run_dir / "results" / "train_metrics"))
    steps = metrics.dropna(subset=["loss"]).sort_values("time")
    per_step = [dt / ds for dt, ds in zip(steps["time"].diff()[2:], steps["step"].diff()[2:]) if ds > 0]
    [final] = sorted(run_dir.glob("*-step*"))[-1:]
    with_state = folder_bytes(final)
    weights = with_state - folder_bytes(final / "deepspeed")
    print(f"{name}: {seconds:.0f} s for the command, {len(steps)} steps logged, "
          f"{statistics.median(per_step):.1f} s per step (median), tokens/s {steps['tokens_per_s'].median():,.0f}")
    print(f"  peak RSS per worker: {', '.join(f'{b / 1e9:.2f} GB' for b in sorted(peaks.values()))}")
    print(f"  final checkpoint {final.name}: {weights / 1e9:.3f} GB weights only, {with_state / 1e9:.3f} GB with "
          f"optimizer state")
    return final


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "classit-scale")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "classit-rehearsal")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    if not (args.data / "train_100M").is_dir():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "paper_scale_data.py"), str(args.data)], check=True)
    corpus = args.data / "train_100M"
    paths = ["--config", str(PAPER), "--set", f"corpus.path={corpus}", "--set", "corpus.num_proc=2",
             "--set", f"instruct.datasets.switch.switchboard={corpus / 'switchboard.train'}",
             "--set", f"instruct.datasets.wiki.path={args.data / 'wiki_qa.jsonl'}",
             "--set", f"run.storage_path={args.out / 'runs'}", "--set", f"run.cache_dir={args.out / 'cache'}",
             "--set", "evaluation.data_dir=null"]  # nothing is evaluated here; the paper's data is not needed
    common = [*paths, "--num-workers", "2", "--zero-stage", "2", "--set", "distributed.use_gpu=false",
              "--set", "distributed.worker_resources={}"]
    classit = [sys.executable, "-m", "classit.cli"]
    pretrain = [*classit, "pretrain", *common, "--set", "run.name=rehearsal-pretrain",
                "--set", f"pretrain.max_steps={args.steps}", "--set", "pretrain.log_every_steps=1",
                "--set", "pretrain.max_validation_rows=8"]
    seconds, peaks, _ = run(pretrain)
    base = report("classit pretrain (llama-140m, 2 workers, ZeRO-2, fp32)", seconds, peaks,
                  args.out / "runs" / "rehearsal-pretrain")
    instruct = [*classit, "instruct", *common, "--base", str(base), "--curriculum", "switch",
                "--set", "run.name=rehearsal-instruct", "--set", f"instruct.train.max_steps={args.steps}",
                "--set", "instruct.train.log_every_steps=1", "--set", "instruct.train.max_validation_rows=8"]
    seconds, peaks, _ = run(instruct)
    report("classit instruct (switch, from that base)", seconds, peaks, args.out / "runs" / "rehearsal-instruct")
    _, _, plan = run([*classit, "sweep", *paths, "--dry-run"])  # the paper's GPU cluster settings
    print("paper grid (sweeps/configs/class_it_paper.yaml as it is, --dry-run on this corpus):")
    print("\n".join(line for line in plan.splitlines() if line.startswith(("  base", "  estimate", "sweep "))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
