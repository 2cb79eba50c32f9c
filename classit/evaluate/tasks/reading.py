"""Reading: word surprisal as a predictor of eye-tracking and self-paced reading times.

Reads the official layout (`reading/reading_data.csv`: one row per word with its context `item`,
the `word`, the previous word and its context, frequency/length covariates and the measured
times) and computes the scores as the official pipeline (`reading/run.py`) does:

- surprisal = -ln P(word | item): the context is tokenized with the tokenizer's special tokens
  (BOS), the word on its own without them, and the word's tokens' log-probabilities are summed;
- for each eye-tracking measure, OLS with statsmodels of the time on frequency, length, context
  length and their pairwise interactions, with and without surprisal; the score is the gain in
  R^2 relative to what the baseline leaves unexplained, (R2 - R2_base) / (1 - R2_base) x 100,
  averaged over the four eye-tracking measures;
- self-paced reading adds the previous word's length and surprisal (spill-over) and all their
  pairwise interactions to the baseline.

One deliberate difference: the pipeline scores a multi-token word one token at a time, each
time re-tokenizing context + decoded tokens; we score the word's tokens in one pass. The two agree
whenever re-tokenizing the decoded prefix gives back the same tokens (always, for our byte-level
BPE on whitespace-separated words).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classit.evaluate.scoring import Encoded, score

EYE_TRACKING = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SELF_PACED = "self_paced_reading_time"
BASE_TERMS = ("Subtlex_log10", "length", "context_length")
SPILLOVER_TERMS = (*BASE_TERMS, "prev_length", "prev_pred")
REQUIRED = ("item", "word", "prev_item", "prev_word", *SPILLOVER_TERMS[:-1], *EYE_TRACKING, SELF_PACED)


def read_reading(data_dir: str | Path):
    import pandas as pd

    path = Path(data_dir) / "reading" / "reading_data.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no reading data")
    frame = pd.read_csv(path, dtype={"item": str})
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)}")
    frame["item"] = frame["item"].fillna("None")  # as the pipeline reads it
    return frame


def encode_words(tokenizer, pairs: list[tuple[str, str]]) -> Encoded:
    """Each (context, word): the context with the tokenizer's special tokens, then the word
    tokenized alone, its tokens scored."""
    if not pairs:
        return Encoded.from_lists([], [])
    contexts = tokenizer([c for c, _ in pairs])["input_ids"]
    words = tokenizer([w for _, w in pairs], add_special_tokens=False)["input_ids"]
    return Encoded.from_lists([c + w for c, w in zip(contexts, words)],
                              [[False] * len(c) + [True] * len(w) for c, w in zip(contexts, words)])


def surprisals(model, tokenizer, frame) -> tuple[np.ndarray, np.ndarray]:
    """-ln P(word | item) per row, and the same for the previous word (NaN where there is none)."""
    pairs = list(zip(frame["item"], frame["word"]))
    has_prev = [isinstance(item, str) for item in frame["prev_item"]]
    pairs += [(i, w) for i, w, ok in zip(frame["prev_item"], frame["prev_word"], has_prev) if ok]
    unique = list(dict.fromkeys(pairs))  # the previous word is usually another row's word: score once
    logprob = dict(zip(unique, score(model, encode_words(tokenizer, unique), tokenizer.pad_token_id)))
    pred = np.array([-logprob[p] for p in zip(frame["item"], frame["word"])])
    prev = np.array([-logprob[(i, w)] if ok else np.nan
                     for i, w, ok in zip(frame["prev_item"], frame["prev_word"], has_prev)])
    return pred, prev


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
