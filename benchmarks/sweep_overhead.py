"""How much of a sweep's wall time its training workers and evaluation actors are busy.

Runs a sweep (default: the demo's config and sizes, with 2 trials at once) in a process of its own,
from an empty cache and storage, so the base model is pretrained inside it as in a first sweep,
and samples the sweep's process tree every 0.25 s: the training workers (`ray::RayTrainWorker`,
the base's pretraining included, and `ray::score_base`, the `pt` curriculum's validation pass) or
the evaluation actors (`ray::Evaluator`) were busy in an interval when together they used at least
half a core of CPU time in it. Prints the share of the
sweep's wall time (the baseline, measured in the same run: from the command's start to its exit)
in which at least one of them was busy (target: at least 70%), split into training only,
evaluation only and both; the rest is overhead. To show where that goes, the longest idle
stretches (compare the times with `--log`) and the CPU time every other process used in them,
by name (`ray::IDLE` is a Ray worker process starting, before it becomes an actor). As a check,
the evaluation jobs' own intervals (`started`, `finished` in `eval_scores`) are summed too.

    python benchmarks/sweep_overhead.py [--config sweeps/configs/demo.yaml] [--trials-at-once 2]
        [--workers 1] [--cpus-per-worker 0.5] [--log sweep.log] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.25
IDLE_SHOWN = 8
# A run's model work: Ray Train's workers, and `pt`'s one task (its validation pass and saved base).
ROLES = {"train": ("ray::RayTrainWorker", "ray::score_base"), "eval": ("ray::Evaluator",)}


def process_name(process: psutil.Process) -> str:
    """`ray::Evaluator.run`-style titles cut to the class; otherwise the program and its script."""
    words = process.cmdline() or [process.name()]
    if words[0].startswith("ray::"):
        return words[0].split(".")[0]
    script = next((Path(w).name for w in words[1:] if w.endswith(".py")), "")
    return f"{Path(words[0]).name} {script}".strip()


def cpu_used(tree: psutil.Process, cpu_before: dict[int, float]) -> dict[str, float]:
    """CPU seconds each process name used since the last sample."""
    used: dict[str, float] = {}
    for process in [tree, *tree.children(recursive=True)]:
        try:
            name, times = process_name(process), process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        total = times.user + times.system
        used[name] = used.get(name, 0.0) + max(0.0, total - cpu_before.get(process.pid, 0.0))
        cpu_before[process.pid] = total
    return used


def busy_roles(used: dict[str, float], interval: float) -> set[str]:
    """The roles whose processes used at least half a core since the last sample."""
    return {role for role, prefixes in ROLES.items()
            if sum(u for name, u in used.items() if name.startswith(prefixes)) >= 0.5 * interval}


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "sweeps" / "configs" / "demo.yaml"))
    parser.add_argument("--trials-at-once", type=int, default=2, help="sweep.max_concurrent_trials")
    parser.add_argument("--workers", type=int, help="distributed.num_workers: workers per training run, "
                        "the base's and each trial's (default: the config's)")
    parser.add_argument("--cpus-per-worker", type=float, help="distributed.cpus_per_worker (default: the config's)")
    parser.add_argument("--keep", help="run in this (new) folder and keep it, to look at the runs after")
    parser.add_argument("--log", help="write the sweep's output here, each line after its second since the start")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        command = [sys.executable, str(REPO / "sweeps" / "curriculum_sweep.py"), "--config", args.config,
                   "--set", f"sweep.max_concurrent_trials={args.trials_at_once}", "--set", "sweep.name=overhead",
                   "--set", f"run.storage_path={work / 'runs'}", "--set", f"run.cache_dir={work / 'cache'}"]
        if args.workers:
            command += ["--set", f"distributed.num_workers={args.workers}"]
        if args.cpus_per_worker:
            command += ["--set", f"distributed.cpus_per_worker={args.cpus_per_worker}"]
        env = {**os.environ, "RAY_TMPDIR": str(work / "ray")}
        (work / "ray").mkdir(exist_ok=True)
        seconds = {"train": 0.0, "eval": 0.0, "both": 0.0}
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(
            f"{time.perf_counter() - start:7.1f} {line}" for line in proc.stdout), daemon=True)
        reader.start()
        tree, cpu_before, last = psutil.Process(proc.pid), {}, time.perf_counter()
        idle: list[tuple[float, float]] = []  # stretches with neither busy, from the start
        idle_cpu: dict[str, float] = {}  # CPU seconds used in them, by process name
        while proc.poll() is None:
            time.sleep(SAMPLE_SECONDS)
            now = time.perf_counter()
            used = cpu_used(tree, cpu_before)
            busy = busy_roles(used, now - last)
            if not busy:
                for name, seconds_used in used.items():
                    idle_cpu[name] = idle_cpu.get(name, 0.0) + seconds_used
            if busy:
                seconds["both" if len(busy) == 2 else busy.pop()] += now - last
            elif idle and idle[-1][1] == last - start:
                idle[-1] = (idle[-1][0], now - start)
            else:
                idle.append((last - start, now - start))
            last = now
        wall = time.perf_counter() - start
        reader.join()
        output = "".join(lines)
        if args.log:
            Path(args.log).write_text(output)
        if proc.returncode:
            print(output[-3000:])
            raise SystemExit(f"the sweep failed (exit status {proc.returncode})")
        sys.path.insert(0, str(REPO))
        from classit.results import read_table

        scores = read_table(str(work / "runs" / "overhead" / "results" / "eval_scores")).dropna(subset=["started"])
        jobs = scores.drop_duplicates(["trial", "checkpoint", "task"])
        eval_jobs = union_seconds(list(zip(jobs["started"], jobs["finished"])))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    busy = sum(seconds.values())
    workers = f"{args.workers} worker(s) per training run" if args.workers else "the config's workers"
    print(f"sweep: {args.config}, {args.trials_at_once} trials at once, {workers}, {os.cpu_count()} cores; "
          f"{len(jobs)} evaluation jobs")
    print(f"wall time (baseline)       {wall:8.1f} s")
    for name, label in (("train", "training only"), ("eval", "evaluation only"), ("both", "both at once")):
        print(f"  {label:<24} {seconds[name]:8.1f} s  {seconds[name] / wall:6.1%}")
    print(f"  {'neither (overhead)':<24} {wall - busy:8.1f} s  {(wall - busy) / wall:6.1%}")
    print(f"evaluation jobs' own intervals, their union: {eval_jobs:.1f} s (sampled: "
          f"{seconds['eval'] + seconds['both']:.1f} s)")
    longest = sorted(idle, key=lambda ab: ab[0] - ab[1])[:IDLE_SHOWN]
    print("longest idle stretches (s from the start; --log shows what the sweep printed then): "
          + ", ".join(f"{a:.0f}-{b:.0f}" for a, b in sorted(longest)))
    top = sorted(idle_cpu.items(), key=lambda item: -item[1])[:IDLE_SHOWN]
    print("CPU seconds used in them, by process: " + ", ".join(f"{name} {cpu:.1f}" for name, cpu in top))
    print(f"busy / wall: {busy / wall:.1%} (target >= 70%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
