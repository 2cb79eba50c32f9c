"""BLiMP and BLiMP supplement: minimal pairs, the good sentence must score higher.

Layout: a folder of JSONL files, one paradigm per file, each line with `sentence_good` and
`sentence_bad` (BLiMP adds `field`, `linguistics_term`, `UID`; the supplement has neither, and
the paradigm is the file name). Scores, as the official pipeline reports them: accuracy (in %)
per UID, per field and per linguistics term, and the average over UIDs.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from classit.evaluate.scoring import choose, encode_candidate, score


def read_pairs(folder: str | Path, fast_per_paradigm: int | None = None, seed: int = 0) -> list[dict]:
    """Every pair of every paradigm file; with `fast_per_paradigm`, a seeded subset of each."""
    folder = Path(folder)
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{folder}: no BLiMP .jsonl files")
    pairs = []
    for path in files:
        rows = []
        for n, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            raw = json.loads(line)
            if "sentence_good" not in raw or "sentence_bad" not in raw:
                raise ValueError(f"{path}:{n + 1}: no sentence_good/sentence_bad")
            field = raw.get("field", "supplement")
            rows.append({"good": raw["sentence_good"], "bad": raw["sentence_bad"],
                         "UID": raw.get("UID", path.stem),
                         "field": "syntax/semantics" if field == "syntax_semantics" else field,
                         "linguistics_term": raw.get("linguistics_term", "supplement")})
        if fast_per_paradigm is not None and len(rows) > fast_per_paradigm:
            rows = random.Random(seed).sample(rows, fast_per_paradigm)
        pairs += rows
    return pairs


def pair_scores(model, tokenizer, pairs: list[dict], **batching) -> np.ndarray:
    """(pairs x 2) summed log-probs: column 0 the good sentence, column 1 the bad one."""
    candidates = [encode_candidate(tokenizer, p[key]) for p in pairs for key in ("good", "bad")]
    return score(model, candidates, tokenizer.pad_token_id, **batching).reshape(len(pairs), 2)


def aggregate(pairs: list[dict], scores: np.ndarray) -> dict[str, dict[str, float]]:
    """Accuracy (%) per UID, field and linguistics term, and the average over UIDs."""
    correct = choose(scores) == 0
    result: dict[str, dict[str, float]] = {}
    for key in ("UID", "field", "linguistics_term"):
        totals, hits = defaultdict(int), defaultdict(int)
        for pair, ok in zip(pairs, correct):
            totals[pair[key]] += 1
            hits[pair[key]] += bool(ok)
        result[key] = {name: 100.0 * hits[name] / totals[name] for name in sorted(totals)}
    result["average"] = {"accuracy": sum(result["UID"].values()) / len(result["UID"])}
    return result
