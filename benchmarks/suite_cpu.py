"""Where the test suite's CPU time goes, and the least wall time this machine's cores could run it in.

Runs the suite (or the pytest arguments given after `--`) and samples its process tree every 0.25 s,
summing each process's CPU time by kind (`ray::<Class>` for Ray's actors, otherwise the program and
its script, as `sweep_overhead.py` names them). The baseline, from the same run: the tree's CPU time
divided by the machine's cores, the wall time the suite would take if every core were busy
throughout. The ratio of the measured wall time to it says how much running tests side by side
could still gain: near 1, only less work shortens the suite. Sampling misses processes that leave
the tree (daemons started over SSH) and the last 0.25 s of each process, so the machine's own
count of busy CPU time over the run (`/proc/stat`, every process on it) is printed too, with the
floor it gives; on an otherwise idle machine that one is the suite's.

    python benchmarks/suite_cpu.py [--shown 25] [-- PYTEST_ARGS]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from sweep_overhead import SAMPLE_SECONDS, cpu_used, process_name

REPO = Path(__file__).resolve().parents[1]


def busy_seconds() -> float:
    """CPU seconds the machine's cores have spent on anything but idling, since boot (Linux counts
    guest time inside user time: left out once)."""
    times = psutil.cpu_times()._asdict()
    return sum(v for k, v in times.items() if k not in ("idle", "iowait", "guest", "guest_nice"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shown", type=int, default=25, help="process kinds listed, most CPU first")
    parser.add_argument("pytest_args", nargs="*", help="after --: what pytest runs (default: the whole suite)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryFile("w+") as output:
        machine_before = busy_seconds()
        started = time.perf_counter()
        suite = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
                                 cwd=REPO, stdout=output, stderr=subprocess.STDOUT, text=True)
        tree, cpu_before, totals = psutil.Process(suite.pid), {}, {}
        root_name = process_name(tree)
        while suite.poll() is None:
            for name, seconds in cpu_used(tree, cpu_before).items():
                totals[name] = totals.get(name, 0.0) + seconds
            time.sleep(SAMPLE_SECONDS)
        # pytest's own process (the tests' in-process training) apart from others of its name.
        totals[root_name] -= cpu_before[suite.pid]
        totals["pytest (the tests' own process)"] = cpu_before[suite.pid]
        wall = time.perf_counter() - started
        machine = busy_seconds() - machine_before
        output.seek(0)
        print(output.read().strip().splitlines()[-1])  # pytest's summary line

    cores = os.cpu_count() or 1
    cpu = sum(totals.values())
    print(f"wall {wall:.1f} s; CPU of the suite's processes {cpu:.1f} s; on {cores} cores at least "
          f"{cpu / cores:.1f} s (the baseline); wall / baseline {wall / (cpu / cores):.2f}x")
    print(f"the machine's busy CPU time over the run {machine:.1f} s ({machine / (wall * cores):.0%} of its cores); "
          f"at least {machine / cores:.1f} s on {cores} cores; wall / that {wall / (machine / cores):.2f}x")
    print(f"{'CPU s':>8}  {'share':>6}  process kind")
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])[:args.shown]:
        if seconds < 0.05:
            break
        print(f"{seconds:8.1f}  {seconds / cpu:6.1%}  {name}")
    return suite.returncode


if __name__ == "__main__":
    sys.exit(main())
