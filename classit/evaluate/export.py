"""Predictions in the BabyLM 2025 leaderboard submission format.

Each task writes the official pipeline's `predictions.json` in its results layout,
`<root>/<model>/<revision>/zero_shot/causal/<task>/<dataset>/predictions.json` (reading:
`.../zero_shot/causal/reading/predictions.json`, fine-tuning: `.../finetune/<task>/predictions.json`),
so the official `collate_preds.py` reads them as its own. `collate` gathers those present into
`<root>/<model>/all_full_preds_and_fast_scores_causal.json`, the file the leaderboard takes
(age of acquisition: `AoA_word/surprisal.json`, every mark checkpoint's surprisals, under `aoa`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from classit.artefacts import parse_json
from classit.evaluate.tasks.zero_shot import first_probability

# Our task name -> the pipeline's task folder inside zero_shot/causal/.
ZERO_SHOT_FOLDERS = {"blimp": "blimp", "blimp_supplement": "blimp", "ewok": "ewok",
                     "entity_tracking": "entity_tracking", "wug_adj": "wug_adj", "wug_past": "wug_past",
                     "comps": "comps"}
GLUE_TASKS = ("boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc")


def zero_shot_predictions(items, scores: list[np.ndarray], with_prob: bool, whole_sentence: bool = False) -> dict:
    """{UID: {"predictions": [{"id": "<UID>_<n>", "pred": chosen completion (, "prob")}]}}; with
    `whole_sentence` (COMPS, as the pipeline writes it) the chosen candidate's whole text."""
    by_uid: dict[str, list[dict]] = defaultdict(list)
    for item, item_scores in zip(items, scores):
        uid = item.meta["UID"]
        text, completion = item.candidates[int(np.argmax(item_scores))]
        chosen = text if whole_sentence or completion is None else completion
        prediction = {"id": f"{uid}_{len(by_uid[uid])}", "pred": chosen}
        if with_prob:  # WUG: the softmax probability of the first candidate
            prediction["prob"] = first_probability(item_scores)
        by_uid[uid].append(prediction)
    return {uid: {"predictions": preds} for uid, preds in by_uid.items()}


def reading_predictions(pred: np.ndarray, prev_pred: np.ndarray) -> dict:
    return {"reading": {"predictions": [
        {"id": i, "pred": float(p), "prev_pred": None if np.isnan(q) else float(q)}
        for i, (p, q) in enumerate(zip(pred, prev_pred))]}}


def finetune_predictions(task: str, preds: list[int], pooling: str) -> dict:
    """The official layout, plus `pooling` (which position fed the head: `final` or `official`)."""
    return {task: {"predictions": [{"id": f"{task}_{i}", "pred": int(p)} for i, p in enumerate(preds)],
                   "pooling": pooling}}


def prediction_path(root: str | Path, model: str, revision: str, task: str, dataset: str = "") -> Path:
    base = Path(root) / model / revision
    if task in GLUE_TASKS:
        return base / "finetune" / task / "predictions.json"
    if task == "reading":
        return base / "zero_shot" / "causal" / "reading" / "predictions.json"
    if task == "aoa":  # every checkpoint's surprisals in one file, under the final model's name
        return base / "zero_shot" / "causal" / "AoA_word" / "surprisal.json"
    return base / "zero_shot" / "causal" / ZERO_SHOT_FOLDERS[task] / dataset / "predictions.json"


def write_predictions(path: Path, predictions: dict) -> None:
    """Atomically: a crash never leaves half a file where the collation would read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(predictions))
    tmp.replace(path)


def collate(root: str | Path, model: str, revision: str = "main") -> Path:
    """Gather a model's predictions.json files into the leaderboard's collated file."""
    base = Path(root) / model / revision
    zero_shot = base / "zero_shot" / "causal"
    full: dict = {}
    for key, folder, datasets in (("blimp", "blimp", ("blimp_filtered", "blimp", "blimp_fast")),
                                  ("blimp_supplement", "blimp", ("supplement_filtered", "blimp_supplement",
                                                                 "supplement_fast")),
                                  ("ewok", "ewok", ("ewok_filtered", "ewok", "ewok_fast")),
                                  ("entity_tracking", "entity_tracking", ("entity_tracking", "entity_tracking_fast")),
                                  ("wug_adj", "wug_adj", ("wug_adj_nominalization", "wug_adj")),
                                  ("wug_past", "wug_past", ("wug_past_tense", "wug_past")),
                                  ("comps", "comps", ("comps",))):
        found = [zero_shot / folder / d / "predictions.json" for d in datasets
                 if (zero_shot / folder / d / "predictions.json").is_file()]
        if found:
            full[key] = parse_json(found[0].read_text(), found[0])
    for key, path in (("reading", zero_shot / "reading" / "predictions.json"),
                      ("aoa", zero_shot / "AoA_word" / "surprisal.json")):
        if path.is_file():
            full[key] = parse_json(path.read_text(), path)
    glue = {}
    for task in GLUE_TASKS:
        path = base / "finetune" / task / "predictions.json"
        if path.is_file():
            glue |= parse_json(path.read_text(), path)
    if glue:
        full["glue"] = glue
    out = Path(root) / model / "all_full_preds_and_fast_scores_causal.json"
    write_predictions(out, full)
    return out
