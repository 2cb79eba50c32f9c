"""Reading: word surprisal as a predictor of eye-tracking and self-paced reading times.

Reads the official layout (`reading/reading_data.csv`: one row per word with its context `item`,
the `word`, the previous word and its context, frequency/length covariates and the measured
times) and computes the scores as the official pipeline (`reading/run.py`) does:

- surprisal = -ln P(word | item): the context is tokenized with the tokenizer's special tokens
  (BOS), the word on its own without them; the word's tokens' probabilities (each a float32
  softmax after a forward of all that precedes it) are multiplied;
- for each eye-tracking measure, OLS with statsmodels of the time on frequency, length, context
  length and their pairwise interactions, with and without surprisal; the score is the gain in
  R^2 relative to what the baseline leaves unexplained, (R2 - R2_base) / (1 - R2_base) x 100,
  averaged over the four eye-tracking measures;
- self-paced reading adds the previous word's length and surprisal (spill-over) and all their
  pairwise interactions to the baseline.

One deliberate difference: the pipeline re-tokenizes context + decoded tokens before each of a
multi-token word's tokens; we extend the token ids. The two agree whenever re-tokenizing the
decoded prefix gives back the same tokens (always, for our byte-level BPE on whitespace-separated
words).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from classit.evaluate.progress import Progress
from classit.evaluate.tasks.inputs import missing_input, reading_file

EYE_TRACKING = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SELF_PACED = "self_paced_reading_time"
BASE_TERMS = ("Subtlex_log10", "length", "context_length")
SPILLOVER_TERMS = (*BASE_TERMS, "prev_length", "prev_pred")
REQUIRED = ("item", "word", "prev_item", "prev_word", *SPILLOVER_TERMS[:-1], *EYE_TRACKING, SELF_PACED)


def read_reading(data_dir: str | Path):
    import pandas as pd

    if missing := missing_input("reading", data_dir):
        raise FileNotFoundError(missing)
    path = reading_file(data_dir)
    frame = pd.read_csv(path, dtype={"item": str})
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)}")
    frame["item"] = frame["item"].fillna("None")  # as the pipeline reads it
    return frame


def surprisals(model, tokenizer, frame, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-ln P(word | item) per row, and the same for the previous word (NaN where there is none)."""
    progress = progress or Progress()
    pairs = list(zip(frame["item"], frame["word"]))
    has_prev = [isinstance(item, str) for item in frame["prev_item"]]
    pairs += [(i, w) for i, w, ok in zip(frame["prev_item"], frame["prev_word"], has_prev) if ok]
    unique = list(dict.fromkeys(pairs))  # the previous word is usually another row's word: score once
    contexts = tokenizer([c for c, _ in unique])["input_ids"]
    words = tokenizer([w for _, w in unique], add_special_tokens=False)["input_ids"]
    progress.start(len(unique), "words")
    surprisal = {}
    for pair, context, word in zip(unique, contexts, words):
        surprisal[pair] = -math.log(word_probability(model, context, word))
        progress.advance()
    pred = np.array([surprisal[p] for p in zip(frame["item"], frame["word"])])
    prev = np.array([surprisal[(i, w)] if ok else np.nan
                     for i, w, ok in zip(frame["prev_item"], frame["prev_word"], has_prev)])
    return pred, prev


def word_probability(model, context: list[int], word: list[int]) -> float:
    """As the pipeline (`get_p2`): each token's float32 softmax probability from a forward of all
    that precedes it, one sequence at a time, and their product. Deliberately not the batched
    prefix-tree scorer: its float32 logits differ in the last bits with the batch's shape, and the
    R^2 fits carry that (~1e-5 relative) into the scores; this gives the pipeline's numbers exactly."""
    import torch

    device = next(model.parameters()).device
    probabilities = []
    with torch.inference_mode():
        for k, token in enumerate(word):
            ids = torch.tensor([context + word[:k]], device=device)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1, :].cpu()
            probabilities.append(torch.softmax(logits[0], dim=-1)[token].item())
    return float(np.prod(probabilities))


def _formula(target: str, terms: tuple[str, ...], with_pred: bool) -> str:
    pairs = [f"{a}:{b}" for k, a in enumerate(terms) for b in terms[k + 1:]]
    return f"{target} ~ " + " + ".join([*terms, *pairs, *(["pred"] if with_pred else [])])


def r2_gain(frame, target: str, terms: tuple[str, ...]) -> float:
    """(R2 with surprisal - R2 without) / (1 - R2 without) x 100, each fit on its complete rows."""
    import statsmodels.formula.api as smf

    base = smf.ols(_formula(target, terms, False), data=frame[[target, *terms]].dropna()).fit().rsquared
    full = smf.ols(_formula(target, terms, True), data=frame[["pred", target, *terms]].dropna()).fit().rsquared
    return float((full - base) / (1 - base) * 100)


def reading_scores(frame, pred: np.ndarray, prev_pred: np.ndarray) -> dict[str, float]:
    """Per-measure R^2 gains, the eye-tracking score (their mean) and the self-paced reading score."""
    frame = frame.assign(pred=pred, prev_pred=prev_pred)
    gains = {measure: r2_gain(frame, measure, BASE_TERMS) for measure in EYE_TRACKING}
    gains["eye_tracking"] = sum(gains[m] for m in EYE_TRACKING) / len(EYE_TRACKING)
    gains["self_paced_reading"] = r2_gain(frame, SELF_PACED, SPILLOVER_TERMS)
    return gains
