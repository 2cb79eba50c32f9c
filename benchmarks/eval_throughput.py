"""Evaluation throughput: the scoring engine vs a deliberately simple reference on BLiMP.

The engine scores all 67,000 BLiMP pairs (length-sorted batches, inference mode); the reference
scores one sentence at a time with a plain forward pass, on a seeded sample of pairs, and its
rate is extrapolated to the whole set. Prints pairs/s for both and the ratio (target: >= 5 on a
2-core CPU with the tiny preset). The two agree to 1e-4 on every pair of the sample.

    python benchmarks/eval_throughput.py [--data-dir ../shared/data] [--model CHECKPOINT] [--sample 2000]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from classit.config import parse_config
from classit.data.corpus import prepare_corpus
from classit.evaluate.scoring import encode_candidates, load_model, reference_scores
from classit.evaluate.tasks.zero_shot import accuracies, read_task, score_items
from classit.models import build_model
from classit.tokenizer import load_tokenizer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cpu_name() -> str:
    """The CPU's model name: the engine/reference ratio depends on it (per-call overheads differ)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder holding blimp/")
    parser.add_argument("--model", help="an HF checkpoint (default: an untrained tiny model; speed is the same)")
    parser.add_argument("--preset", default="tiny", help="preset of the untrained model when --model is not given")
    parser.add_argument("--sample", type=int, default=2000, help="pairs the reference scores")
    parser.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per engine batch")
    args = parser.parse_args()

    if args.model:
        model, tokenizer = load_model(args.model)
    else:
        tokenizer = load_tokenizer(prepare_corpus(parse_config({"model": {"preset": args.preset}})).tokenizer_path)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = build_model(args.preset, tokenizer).to(device=device, dtype=dtype).eval()
    pairs = read_task("blimp", args.data_dir)

    # The reference first, then the engine: timed the other way round, the reference ran up to 25%
    # slower (the engine's large batches leave the allocator and caches in a worse state for it).
    sample = random.Random(0).sample(range(len(pairs)), min(args.sample, len(pairs)))
    sampled = encode_candidates(tokenizer, [c for i in sample for c in pairs[i].candidates])
    reference_scores(model, sampled[:10])  # warm-up
    start = time.perf_counter()
    reference = reference_scores(model, sampled).reshape(len(sample), 2)
    reference_rate = len(sample) / (time.perf_counter() - start)

    score_items(model, tokenizer, pairs[:100])  # warm-up
    start = time.perf_counter()
    scores = score_items(model, tokenizer, pairs, max_tokens=args.max_tokens)
    engine_rate = len(pairs) / (time.perf_counter() - start)
    # An evaluation actor keeps a task tokenized for the next checkpoint with the same tokenizer
    # (every checkpoint of a sweep): what scoring costs from the second checkpoint on.
    encoded = encode_candidates(tokenizer, [c for pair in pairs for c in pair.candidates])
    start = time.perf_counter()
    score_items(model, tokenizer, pairs, encoded, max_tokens=args.max_tokens)
    pretokenized_rate = len(pairs) / (time.perf_counter() - start)
    gap = np.abs(np.stack([scores[i] for i in sample]) - reference).max()

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_name()} ({os.cpu_count()} cores)"
    print(f"{len(pairs):,} BLiMP pairs, model {args.model or args.preset}, on {where}")
    print(f"engine     {engine_rate:10,.0f} pairs/s  (all pairs, {len(pairs) / engine_rate:.1f} s)")
    print(f"engine, already tokenized {pretokenized_rate:,.0f} pairs/s ({len(pairs) / pretokenized_rate:.1f} s; "
          f"ratio {pretokenized_rate / reference_rate:.1f}): a later checkpoint with the same tokenizer")
    print(f"reference  {reference_rate:10,.0f} pairs/s  ({len(sample)} sampled pairs; all would take "
          f"{len(pairs) / reference_rate:.0f} s)")
    print(f"ratio engine / reference = {engine_rate / reference_rate:.1f}  (target >= 5)")
    print(f"largest score difference on the sample: {gap:.2e}; BLiMP average accuracy "
          f"{accuracies('blimp', pairs, scores)['average']['accuracy']:.2f}")


if __name__ == "__main__":
    main()
