"""Zero-shot tasks scored by ranking candidates: BLiMP, BLiMP supplement, EWoK, entity tracking, WUG, COMPS.

Each task reads the official BabyLM 2025 layout (a folder of JSONL files) into items: candidate
texts (with the part of each that is scored), the metadata results are grouped by, and for WUG
the human preference ratio. Scoring and aggregation follow the official pipeline:

- accuracy (%) per value of every metadata key; the task average is the mean over UIDs, except for
  entity tracking, whose average is the mean over its three splits (regular, ambiref,
  move_contents) of the mean over each split's UIDs;
- WUG: the softmax over an item's candidate scores gives the model's probability of the first
  candidate; the score is its Spearman correlation with the human ratios.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from classit.artefacts import parse_json
from classit.evaluate.catalog import BREAKDOWNS

if TYPE_CHECKING:
    from classit.evaluate.scoring import Encoded

ENTITY_TRACKING_SPLITS = ("regular", "ambiref", "move_contents")


@dataclass
class Item:
    candidates: list[tuple[str, str | None]]  # (text, scored completion; None: the whole text)
    meta: dict[str, str]  # always has "UID"; the correct candidate is always the first
    ratio: float | None = None  # WUG: the human preference for the first candidate


def _jsonl(folder: Path) -> list[tuple[Path, int, dict]]:
    files = sorted(Path(folder).glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .jsonl files")
    return [(path, n + 1, parse_json(line, path, n + 1)) for path in files
            for n, line in enumerate(path.read_text().splitlines()) if line.strip()]


def need_fields(raw, keys: tuple[str, ...], path: Path, line: int) -> None:
    """A task file's line (parsed JSON) is an object with these keys; otherwise one error naming the line."""
    if not isinstance(raw, dict):
        raise ValueError(f"{path}:{line}: not a JSON object (got {type(raw).__name__})")
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ValueError(f"{path}:{line}: missing {', '.join(missing)}")


def read_blimp(folder: Path) -> list[Item]:
    items = []
    for path, line, raw in _jsonl(folder):
        need_fields(raw, ("sentence_good", "sentence_bad"), path, line)
        field_ = raw.get("field", "supplement")
        items.append(Item([(raw["sentence_good"], None), (raw["sentence_bad"], None)], {
            "UID": raw.get("UID", path.stem),
            "field": "syntax/semantics" if field_ == "syntax_semantics" else field_,
            "linguistics_term": raw.get("linguistics_term", "supplement")}))
    return items


def read_ewok(folder: Path) -> list[Item]:
    items = []
    for path, line, raw in _jsonl(folder):
        need_fields(raw, ("Context1", "Target1", "Target2", "Domain"), path, line)
        context = raw["Context1"]  # as the pipeline does: both targets after the first context
        items.append(Item([(f"{context} {raw['Target1']}", " " + raw["Target1"]),
                           (f"{context} {raw['Target2']}", " " + raw["Target2"])],
                          {"UID": raw["Domain"], "context_type": raw.get("ContextType", ""),
                           "context_contrast": raw.get("ContextDiff", ""),
                           "target_contrast": raw.get("TargetDiff", "")}))
    return items


def read_entity_tracking(folder: Path) -> list[Item]:
    items = []
    for path, line, raw in _jsonl(folder):
        need_fields(raw, ("input_prefix", "options", "numops"), path, line)
        items.append(Item([(raw["input_prefix"] + option, option) for option in raw["options"]],
                          {"UID": f"{path.stem}_{raw['numops']}_ops"}))
    return items


# COMPS file stems -> subset names, as the pipeline names them; any other file is its fourth subset.
COMPS_SUBSETS = {"comps_base": "base", "comps_wugs": "wugs", "comps_wugs_dist-before": "wugs_dist_before"}


def read_comps(folder: Path) -> list[Item]:
    """Each pair: prefix + " " + property phrase, the property phrase scored after each prefix."""
    items = []
    for path, line, raw in _jsonl(folder):
        need_fields(raw, ("prefix_acceptable", "prefix_unacceptable", "property_phrase"), path, line)
        phrase = raw["property_phrase"]
        items.append(Item([(f"{raw['prefix_acceptable']} {phrase}", phrase),
                           (f"{raw['prefix_unacceptable']} {phrase}", phrase)],
                          {"UID": COMPS_SUBSETS.get(path.stem, "wugs_dist_in_between")}))
    return items


def read_wug(folder: Path, uid: str) -> list[Item]:
    """Every item's UID is the task's name (`wug_adj`, `wug_past`), whatever its file, as there."""
    items = []
    for path, line, raw in _jsonl(folder):
        need_fields(raw, ("sentences", "ratio"), path, line)
        items.append(Item([(s, None) for s in raw["sentences"].split("\t")], {"UID": uid},
                          ratio=float(raw["ratio"])))
    return items


@dataclass(frozen=True)
class Task:
    folders: tuple[str, ...]  # ours first, then the official pipeline's names
    read: Callable[[Path], list[Item]]
    meta_keys: tuple[str, ...] = ("UID",)
    predicts_sentence: bool = False  # exported predictions name the whole chosen text (COMPS)
    fast_folder: str | None = None  # the official fast_eval folder, read whole in fast mode when present
    fast_size: int | dict[str, int] | None = None  # its items per UID, as the official collation checks them
    fast_is_whole: bool = False  # the official fast set is the whole task (WUG): never subsampled


# The official collation's fast entity tracking counts (only the regular split has a fast set).
ENTITY_TRACKING_FAST_SIZE = {"regular_0_ops": 606, "regular_1_ops": 607, "regular_2_ops": 606,
                             "regular_3_ops": 606, "regular_4_ops": 568, "regular_5_ops": 159}

TASKS = {
    "blimp": Task(("blimp", "blimp_filtered"), read_blimp, meta_keys=BREAKDOWNS["blimp"],
                  fast_folder="blimp_fast", fast_size=200),
    "blimp_supplement": Task(("blimp_supplement", "supplement_filtered"), read_blimp,
                             fast_folder="supplement_fast", fast_size=50),
    "ewok": Task(("ewok", "ewok_filtered"), read_ewok,
                 meta_keys=BREAKDOWNS["ewok"],
                 fast_folder="ewok_fast", fast_size=100),
    "entity_tracking": Task(("entity_tracking",), read_entity_tracking, fast_folder="entity_tracking_fast",
                            fast_size=ENTITY_TRACKING_FAST_SIZE),
    "wug_adj": Task(("wug_adj", "wug_adj_nominalization"), partial(read_wug, uid="wug_adj"),
                    fast_is_whole=True),
    "wug_past": Task(("wug_past", "wug_past_tense"), partial(read_wug, uid="wug_past"),
                     fast_is_whole=True),
    "comps": Task(("comps",), read_comps, predicts_sentence=True),
}


def task_folder(task: str, data_dir: str | Path) -> Path:
    """The task's data folder under `data_dir`: our name or the official pipeline's."""
    spec = TASKS[task]
    for name in spec.folders:
        if (Path(data_dir) / name).is_dir():
            return Path(data_dir) / name
    raise FileNotFoundError(f"{data_dir}: no {' or '.join(spec.folders)} folder for task {task}")


def read_task(task: str, data_dir: str | Path) -> list[Item]:
    return TASKS[task].read(task_folder(task, data_dir))


def data_folder(task: str, data_dir: str | Path, fast: bool) -> Path:
    """The folder a job reads: in fast mode the official fast set where `data_dir` has it (a
    `fast_eval` layout), otherwise the task's folder."""
    spec = TASKS[task]
    if fast and spec.fast_folder and (Path(data_dir) / spec.fast_folder).is_dir():
        return Path(data_dir) / spec.fast_folder
    return task_folder(task, data_dir)


def scores_seeded_subset(task: str, data_dir: str | Path, fast: bool) -> bool:
    """Whether a job scores classit's seeded subset of the task: in fast mode, where `data_dir` has
    no official fast set for it and its fast set is not the whole task (WUG's is)."""
    spec = TASKS[task]
    return fast and not spec.fast_is_whole and data_folder(task, data_dir, fast).name != spec.fast_folder


def read_for_evaluation(task: str, data_dir: str | Path, fast: bool, per_uid: int) -> tuple[Path, list[Item]]:
    """The folder a job reads and its items. An official fast set is read whole and checked against
    the official counts; a task without one gets a fixed, seeded `per_uid` items of each UID in fast
    mode (WUG, whose fast set is the whole task, all)."""
    spec = TASKS[task]
    folder = data_folder(task, data_dir, fast)
    items = spec.read(folder)
    if fast and folder.name == spec.fast_folder:
        _check_fast_size(task, folder, items)
    return folder, fast_subset(items, per_uid) if scores_seeded_subset(task, data_dir, fast) else items


def _check_fast_size(task: str, folder: Path, items: list[Item]) -> None:
    size = TASKS[task].fast_size
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item.meta["UID"]] += 1
    for uid, count in sorted(counts.items()):
        expected = size.get(uid) if isinstance(size, dict) else size
        if count != expected:
            raise ValueError(f"{folder}: UID {uid} has {count} items; the official fast set has "
                             f"{expected if expected is not None else 'no such UID'}")


def fast_subset(items: list[Item], per_uid: int, seed: int = 0) -> list[Item]:
    """A fixed, seeded subset: at most `per_uid` items of each UID, in their original order."""
    by_uid: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_uid[item.meta["UID"]].append(i)
    keep = {i for idxs in by_uid.values() for i in random.Random(seed).sample(idxs, min(per_uid, len(idxs)))}
    return [item for i, item in enumerate(items) if i in keep]


def score_items(model, tokenizer, items: list[Item], encoded: Encoded | None = None, **options) -> list[np.ndarray]:
    """Each item's candidate scores (summed log-probs of the scored tokens); `encoded`: the items'
    candidates already tokenized (`encode_candidates`), in order."""
    from classit.evaluate.scoring import encode_candidates, score

    if encoded is None:
        encoded = encode_candidates(tokenizer, [c for item in items for c in item.candidates])
    return per_item(items, score(model, encoded, tokenizer.pad_token_id, **options))  # batching, progress


def per_item(items: list[Item], flat: np.ndarray) -> list[np.ndarray]:
    """The items' candidate scores, from all candidates' scores in order."""
    bounds = np.cumsum([0] + [len(item.candidates) for item in items])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def choose(scores: np.ndarray) -> np.ndarray:
    """Index of the best candidate per row of a (items x candidates) array; ties go to the first."""
    return np.argmax(scores, axis=1)


def group_sizes(task: str, items: list[Item]) -> dict[str, Counter]:
    """How many items each value of each metadata key groups (and each entity-tracking split): the
    groups `accuracies` averages over, and the item count written beside each of its accuracies."""
    sizes = {key: Counter(item.meta[key] for item in items) for key in TASKS[task].meta_keys}
    if task == "entity_tracking":
        sizes["split"] = Counter(split for item in items for split in ENTITY_TRACKING_SPLITS
                                 if item.meta["UID"].startswith(split))
    return sizes


def accuracies(task: str, items: list[Item], scores: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Accuracy (%) per value of each metadata key, and the task average as the pipeline takes it."""
    correct = [choose(s[None, :])[0] == 0 for s in scores]
    sizes = group_sizes(task, items)
    result: dict[str, dict[str, float]] = {}
    for key in TASKS[task].meta_keys:
        hits = Counter(item.meta[key] for item, ok in zip(items, correct) if ok)
        result[key] = {name: 100.0 * hits[name] / total for name, total in sorted(sizes[key].items())}
    uids = result["UID"]
    if task == "entity_tracking":
        splits = {s: [v for k, v in uids.items() if k.startswith(s)] for s in ENTITY_TRACKING_SPLITS}
        result["split"] = {s: sum(v) / len(v) for s, v in splits.items() if v}
        result["average"] = {"accuracy": sum(result["split"].values()) / len(result["split"])}
    else:
        result["average"] = {"accuracy": sum(uids.values()) / len(uids)}
    return result


def tied_pct(scores: list[np.ndarray]) -> float:
    """% of items whose first (correct) candidate wins only by a tie with another: the pipeline
    counts them correct, so a model that scores every candidate alike (a diverged run predicting
    the uniform distribution) gets 100% on BLiMP. Reported beside the accuracy, not folded into it."""
    return 100.0 * float(np.mean([bool(np.any(s[1:] == s[0]) and s[0] >= s.max()) for s in scores]))


def first_probability(scores: np.ndarray) -> float:
    """The softmax over an item's candidate scores, for the first candidate, in float32 as the
    pipeline's torch softmax computes it: probabilities near 1 then tie as they do there, and
    Spearman's rho sees the same ties."""
    import torch

    return float(torch.softmax(torch.tensor(np.asarray(scores), dtype=torch.float32), dim=0)[0])


def wug_correlation(items: list[Item], scores: list[np.ndarray]) -> float:
    """Spearman's rho between the model's probability of the first candidate and the human ratio."""
    from scipy.stats import spearmanr

    return float(spearmanr([first_probability(s) for s in scores], [item.ratio for item in items])[0])
