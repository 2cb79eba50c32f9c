"""Age of acquisition (AoA): the fits and the score, as the official BabyLM 2025 pipeline computes
them (`AoAEvaluator` in its `evaluation_pipeline/utils.py`, after Chang & Bergen 2022).

- A child's AoA of a word: a sigmoid a / (1 + exp(-b (x - c))) + d fitted to the share of children
  producing it at each age in months (`cdi_human.csv`: a `word` column and one column per month,
  16-30), bounded as there; the age where the fit crosses 0.5.
- A model's AoA of a word: the same sigmoid fitted to minus its surprisal (nats, as the pipeline's
  log-softmax gives it) against log10 of (words seen + 1) over a run's checkpoints; the point
  halfway between chance (taken in bits there: log2 of 300,000) and the lowest surprisal seen, as
  log10 words.
- The score: Pearson's r between the two over the words both fits keep.

The official computation's behaviour is kept, weak points included: a fit that fails or whose
crossing falls outside the data leaves the word out, and with fewer than 3 words left the score
is 0.0 (not undefined), which docs/evaluation.md points out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classit.artefacts import parse_json_as
from classit.evaluate.progress import Progress
from classit.units import one_line

CHANCE_VOCABULARY = 300_000  # the pipeline's "random chance" vocabulary for the model's threshold
MONTHS = [str(age) for age in range(16, 31)]


def sigmoid(x: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    return a / (1 + np.exp(-b * (x - c))) + d


def _crossing(params, target: float) -> float | None:
    """Where the fitted sigmoid reaches `target`; None where it never does (or is not increasing)."""
    a, b, c, d = params
    if b <= 0 or a <= 0 or not d < target < a + d:
        return None
    return c - np.log(a / (target - d) - 1) / b


def _fit(x: np.ndarray, y: np.ndarray, p0: list[float], bounds=(-np.inf, np.inf)):
    from scipy.optimize import curve_fit

    try:
        return curve_fit(sigmoid, x, y, p0=p0, bounds=bounds, maxfev=1000)[0]
    except Exception:  # noqa: BLE001 - as the pipeline: any failed fit means no AoA for the word
        return None


def child_aoa(ages: np.ndarray, proportions: np.ndarray, threshold: float = 0.5) -> float | None:
    """The age (months) at which the fitted share of children producing the word reaches `threshold`."""
    keep = ~np.isnan(proportions)
    ages, proportions = ages[keep], proportions[keep]
    if len(proportions) < 3:
        return None
    params = _fit(ages, proportions, [1.0, 0.1, float(np.mean(ages)), 0.0],
                  bounds=([0, 0, ages[0], -0.5], [2.0, 1.0, ages[-1], 0.5]))
    aoa = None if params is None else _crossing(params, threshold)
    return None if aoa is None or not ages[0] <= aoa <= ages[-1] else float(aoa)


def model_aoa(surprisals: list[float], words_seen: list[float], threshold: float = 0.5) -> float | None:
    """log10 of the words seen at which the fitted surprisal curve is `threshold` of the way from
    chance to the lowest surprisal observed; None where the pipeline finds none."""
    if len(surprisals) != len(words_seen):
        raise ValueError("surprisals and words seen must have the same length")
    if len(surprisals) < 3:
        return None
    steps, surprisal = np.array(words_seen, dtype=float), np.array(surprisals, dtype=float)
    keep = ~np.isnan(surprisal)
    if not keep.any():
        return None
    steps, surprisal = steps[keep], surprisal[keep]
    chance = np.log2(CHANCE_VOCABULARY)
    target = chance - threshold * (chance - surprisal.min())
    rising, log_steps = -surprisal, np.log10(steps + 1)
    params = _fit(log_steps, rising, [rising.max() - rising.min(), 1.0, float(np.mean(log_steps)), rising.min()])
    log_aoa = None if params is None else _crossing(params, -target)
    # The bounds test is on words (10**x - 1) against the first and last checkpoints given, as there.
    if log_aoa is None or not steps[0] <= 10 ** log_aoa - 1 <= steps[-1]:
        return None
    return float(log_aoa)


@dataclass
class WordContext:
    """One of a word's contexts in `cdi_childes.json` (other keys ignored)."""

    context: str


def read_contexts(path: str | Path, min_context: int = 0) -> dict[str, list[str]]:
    """`cdi_childes.json` ({word: [{"context": ...}, ...]}): the words the pipeline keeps (longer than
    one character, with at least `min_context` contexts) and their contexts."""
    data = parse_json_as(dict[str, list[WordContext]], Path(path).read_text(), path)
    return {word: [c.context for c in contexts] for word, contexts in data.items()
            if len(word) > 1 and len(contexts) >= min_context}


def surprisal_rows(model, tokenizer, contexts: dict[str, list[str]], revision: str, words_seen: int,
                   progress: Progress | None = None) -> list[dict]:
    """One checkpoint's rows of the official `surprisal.json`: each word's surprisal (nats) after
    each of its contexts, `context.strip() + " " + word` tokenized with the tokenizer's special
    tokens and the word's tokens scored, computed as the pipeline computes it (`sentence_surprisal`)."""
    from classit.evaluate.scoring import encode_candidates

    pairs = [(word, i, context) for word, word_contexts in contexts.items() for i, context in enumerate(word_contexts)]
    encoded = encode_candidates(tokenizer, [(f"{context.strip()} {word.strip()}", word.strip())
                                            for word, _, context in pairs])
    progress = progress or Progress()
    progress.start(len(pairs), "contexts")
    rows = []
    for k, (word, i, context) in enumerate(pairs):
        rows.append({"step": revision, "word_count": words_seen, "target_word": word, "context_id": i,
                     "context": context, "surprisal": sentence_surprisal(model, *encoded.candidate(k))})
        progress.advance()
    return rows


def sentence_surprisal(model, ids: list[int], scored: list[bool]) -> float:
    """As the pipeline: one forward of the sentence alone, a float32 log-softmax, the scored tokens'
    log-probabilities summed in float32. Deliberately not the batched prefix-tree scorer: its
    float32 logits differ in the last bits with the batch's shape (~3e-7 relative), and the sigmoid
    fits carry that into the score; one sentence at a time gives the pipeline's numbers exactly."""
    import torch

    device = next(model.parameters()).device
    tokens = torch.tensor([ids], device=device)
    with torch.inference_mode():
        logits = model(input_ids=tokens[:, :-1], attention_mask=torch.ones_like(tokens[:, :-1])).logits
        picked = torch.gather(torch.log_softmax(logits, dim=-1), -1, tokens[:, 1:, None])[..., 0]
        return -torch.sum(picked * torch.tensor([scored[1:]], device=device, dtype=torch.long), dim=1)[0].item()


def revision_words(name: str | float) -> float | None:
    """Words seen from a revision name (`chck_10M` -> 10,000,000) or a number, as the pipeline reads them."""
    if isinstance(name, (int, float)):
        return float(name)
    match = re.search(r"(\d+(?:\.\d+)?)\s*([KMB]?)", str(name), re.IGNORECASE)
    if not match:
        return None
    return float(match.group(1)) * {"K": 1e3, "M": 1e6, "B": 1e9}.get(match.group(2).upper(), 1)


def read_child_curves(path: str | Path) -> "pandas.DataFrame":  # noqa: F821
    """`cdi_human.csv`: a `word` column and the share of children producing it at each month of
    `MONTHS` (at least one, numbers or empty); a table without them is named."""
    import pandas as pd

    human = pd.read_csv(path)
    months = [m for m in MONTHS if m in human.columns]
    if "word" not in human.columns or not months:
        raise ValueError(f"{path}: needs a word column and month columns {MONTHS[0]}-{MONTHS[-1]} "
                         f"(has {', '.join(map(str, human.columns[:5]))}{', ...' if len(human.columns) > 5 else ''})")
    try:
        human[months] = human[months].astype(float)
    except ValueError as err:
        raise ValueError(f"{path}: a share that is not a number ({one_line(err)})") from None
    return human


def curve_fitness(results: Iterable[Mapping], human: "pandas.DataFrame") -> dict:  # noqa: F821
    """The AoA score from surprisal rows ({"target_word", "step", "surprisal"}, the official
    `surprisal.json` results) and the children's CDI table: Pearson's r of model and child AoAs."""
    from scipy.stats import pearsonr

    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in results:
        try:
            words, surprisal = revision_words(row["step"]), float(row["surprisal"])
        except (ValueError, TypeError):  # as the pipeline: an unreadable row is skipped
            continue
        if words is not None:
            steps, surprisals = curves.setdefault(row["target_word"], ([], []))
            steps.append(words)
            surprisals.append(surprisal)
    ages = np.array([int(m) for m in MONTHS if m in human.columns])
    shares = human[[m for m in MONTHS if m in human.columns]].to_numpy(dtype=float)
    first_row = {word: i for i, word in reversed(list(enumerate(human["word"])))}
    kept, model_aoas, child_aoas = [], [], []
    for word, (steps, surprisals) in curves.items():
        if word not in first_row:
            continue
        child = child_aoa(ages, shares[first_row[word]])
        model = None if child is None else model_aoa(surprisals, steps)
        if model is not None:
            kept.append(word)
            model_aoas.append(model)
            child_aoas.append(child)
    if len(kept) < 3:
        return {"curve_fitness": 0.0, "n_words": len(kept), "words": kept}
    r, p = pearsonr(model_aoas, child_aoas)
    return {"curve_fitness": float(r), "p_value": float(p), "n_words": len(kept), "words": kept,
            "model_aoas": model_aoas, "child_aoas": child_aoas}
