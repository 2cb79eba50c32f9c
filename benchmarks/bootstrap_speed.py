"""The report's curriculum-effect intervals: `stats.two_level_bootstrap` vs one resample at a time.

Every (pair of curricula, score) cell of `curriculum_effects.md` is a two-level bootstrap (units:
paired seeds; items: the task's UIDs). This generates a sweep's worth of cells (the 9 default pairs x
the BabyLM suite's 16 scores, 3 seeds each; 67 UIDs for BLiMP, 20 for the other zero-shot tasks, one
score for fine-tuning, reading and AoA) and draws each cell's 10,000 resamples two ways. The baseline
is the definition, a loop over resamples (what classit ran before the vectorized draw). Prints both
times, the ratio, and the largest gap between the two intervals' ends in units of the bootstrap's
standard deviation (independent draws: Monte Carlo noise only).

    python benchmarks/bootstrap_speed.py [--resamples 10000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from classit.analysis.stats import DEFAULT_PAIRS, two_level_bootstrap

ITEMS = {"blimp": 67, "blimp_supplement": 20, "ewok": 20, "entity_tracking": 20, "comps": 20, "wug_adj": 1,
         "wug_past": 1, "reading": 1, "aoa": 1, "boolq": 1, "mnli": 1, "mrpc": 1, "multirc": 1, "qqp": 1,
         "rte": 1, "wsc": 1}


def one_at_a_time(per_unit: list[np.ndarray], resamples: int, rng: np.random.Generator) -> np.ndarray:
    boot = np.empty(resamples)
    for r in range(resamples):
        picked = rng.integers(len(per_unit), size=len(per_unit))
        boot[r] = np.mean([per_unit[i][rng.integers(len(per_unit[i]), size=len(per_unit[i]))].mean()
                           for i in picked])
    return boot


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    cells = [[rng.normal(rng.normal(0, 2), 3, size=ITEMS[score]) for _ in range(args.seeds)]
             for _ in DEFAULT_PAIRS for score in ITEMS]
    seconds, intervals = {}, {}
    for name, draw in (("one resample at a time", one_at_a_time), ("two_level_bootstrap", two_level_bootstrap)):
        start = time.perf_counter()
        boots = [draw(units, args.resamples, np.random.default_rng(k)) for k, units in enumerate(cells)]
        seconds[name] = time.perf_counter() - start
        intervals[name] = [(np.percentile(b, [2.5, 97.5]), b.std()) for b in boots]
    gap = max(np.abs(a - b).max() / max(sd, 1e-12) for (a, sd), (b, _) in
              zip(intervals["one resample at a time"], intervals["two_level_bootstrap"]))
    print(f"{len(cells)} cells ({len(DEFAULT_PAIRS)} pairs x {len(ITEMS)} scores), {args.seeds} seeds, "
          f"{args.resamples:,} resamples each")
    for name, value in seconds.items():
        print(f"  {name:<24} {value:8.2f} s")
    print(f"speed-up: {seconds['one resample at a time'] / seconds['two_level_bootstrap']:.0f}x; "
          f"largest gap between the intervals' ends: {gap:.3f} bootstrap standard deviations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
