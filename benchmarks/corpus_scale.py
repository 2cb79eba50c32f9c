"""Corpus preparation at the study's size: classit vs the `tokenizers` library alone.

On a generated 100M-word corpus in the BabyLM layout (`paper_scale_data.py`, written first if
missing), two runs, each in a process of its own, measured the same way (wall time, and the peak
proportional set size of the process and all its children, sampled every 0.2 s):

- classit: `prepare_corpus` end to end: read, clean, split 90/10, train the BPE tokenizer, tokenize
  on every core, pack into 512-token blocks (the paper config's) and write them, from an empty cache;
- baseline: the same byte-level BPE trained by `tokenizers` from the raw lines, then every line
  encoded with `encode_batch` (which uses every core), nothing cleaned, packed or written.

Prints both and the ratios (targets: time at most 1.5x the baseline's, peak memory at most 6 GB).

    python benchmarks/corpus_scale.py [--data /tmp/classit-scale] [--preset llama-140m]
"""

from __future__ import annotations

import argparse
import json
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

CLASSIT = """
import json, sys
from classit.config import parse_config
from classit.data.corpus import prepare_corpus
corpus_path, cache, preset, num_proc = sys.argv[1:5]
cfg = parse_config({"corpus": {"path": corpus_path, "num_proc": int(num_proc), "block_size": 512},
                    "model": {"preset": preset}, "run": {"cache_dir": cache}})
print(json.dumps(prepare_corpus(cfg).stats["train"]))
"""

BASELINE = """
import json, sys
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from classit.models import PRESETS
from classit.tokenizer import SPECIAL_TOKENS
corpus_path, preset = sys.argv[1:3]
def lines():
    for path in sorted(Path(corpus_path).glob("*.train")):
        with path.open(encoding="utf-8", errors="replace") as f:
            yield from (line.rstrip("\\n") for line in f)
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.train_from_iterator(lines(), trainers.BpeTrainer(
    vocab_size=PRESETS[preset]["vocab_size"], min_frequency=2, special_tokens=SPECIAL_TOKENS,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
tokens, batch = 0, []
for line in lines():
    batch.append(line)
    if len(batch) == 10_000:
        tokens += sum(len(e.ids) for e in bpe.encode_batch(batch))
        batch = []
tokens += sum(len(e.ids) for e in bpe.encode_batch(batch))
print(json.dumps({"tokens": tokens}))
"""


def tree_memory(process: psutil.Process) -> int:
    """Proportional set size of a process and its children: pages shared by forked workers count once."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measured(args: list[str]) -> dict:
    """Wall seconds, peak tree memory and the last stdout line (JSON) of a child Python process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True, env=env)
    peak, watched = 0, psutil.Process(proc.pid)

    def sample():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, tree_memory(watched))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{args[1:]}: exit status {proc.returncode}")
    return {"seconds": seconds, "peak_bytes": peak, **json.loads(out.strip().splitlines()[-1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "classit-scale")
    parser.add_argument("--preset", default="llama-140m", help="its vocabulary size is the BPE's")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    corpus = args.data / "train_100M"
    if not corpus.is_dir():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "paper_scale_data.py"), str(args.data)], check=True)
    words = sum(len(line.split()) for path in corpus.glob("*.train") for line in path.open(encoding="utf-8"))
    cache = Path(tempfile.mkdtemp(prefix="corpus-scale-"))
    try:
        ours = measured([CLASSIT, str(corpus), str(cache), args.preset, str(args.num_proc)])
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    baseline = measured([BASELINE, str(corpus), args.preset])
    print(f"corpus {corpus}: {words:,} words; BPE vocabulary of {args.preset}; {os.cpu_count()} cores")
    print(f"{'':<10} {'seconds':>9} {'peak GB':>8}  tokens")
    print(f"{'classit':<10} {ours['seconds']:>9.1f} {ours['peak_bytes'] / 1e9:>8.2f}  {ours['tokens']:,} "
          f"(train split, {ours['blocks']:,} blocks)")
    print(f"{'baseline':<10} {baseline['seconds']:>9.1f} {baseline['peak_bytes'] / 1e9:>8.2f}  "
          f"{baseline['tokens']:,} (every raw line)")
    print(f"classit / baseline: {ours['seconds'] / baseline['seconds']:.2f}x time (target <= 1.5), "
          f"{ours['peak_bytes'] / 1e9:.2f} GB peak (target <= 6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
