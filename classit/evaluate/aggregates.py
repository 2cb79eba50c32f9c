"""The BabyLM 2025 leaderboard's three aggregates, on its 0-100 scale, from a model's task scores.

- human-likeness: the mean of reading (itself the mean of eye-tracking and self-paced reading),
  WUG adjective nominalisation, WUG past tense and age of acquisition (correlations x 100);
- NLP: the mean of BLiMP, BLiMP supplement, EWoK, entity tracking, COMPS and GLUE (the mean of
  BoolQ, MNLI, MRPC, MultiRC, QQP, RTE and WSC: accuracy, F1 for MRPC and QQP, x 100);
- macro: the mean of the two.

The formulas are not in the official pipeline's code: they were recovered from published scores
(tests/test_aggregates.py checks the published rows). An aggregate with a component missing is
empty and names what is missing, never the mean of what happens to be there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# GLUE task -> (the trial-row key of its leaderboard metric); fine-tuning metrics are 0-1.
GLUE = {"boolq": "boolq:validation:accuracy", "mnli": "mnli:validation:accuracy", "mrpc": "mrpc:validation:f1",
        "multirc": "multirc:validation:accuracy", "qqp": "qqp:validation:f1", "rte": "rte:validation:accuracy",
        "wsc": "wsc:validation:accuracy"}
READING = ("reading:eye_tracking:r2_gain_pct", "reading:self_paced_reading:r2_gain_pct")
# Component -> (its score keys, the factor that puts it on the 0-100 scale); several keys: their mean.
HUMAN_LIKENESS = {"reading": (READING, 1.0), "wug_adj": (("wug_adj:average:spearman",), 100.0),
                  "wug_past": (("wug_past:average:spearman",), 100.0), "aoa": (("aoa:average:pearson",), 100.0)}
NLP = {"blimp": (("blimp:average:accuracy",), 1.0), "blimp_supplement": (("blimp_supplement:average:accuracy",), 1.0),
       "ewok": (("ewok:average:accuracy",), 1.0), "entity_tracking": (("entity_tracking:average:accuracy",), 1.0),
       "comps": (("comps:average:accuracy",), 1.0), "glue": (tuple(GLUE.values()), 100.0)}
NAMES = ("babylm:human_likeness", "babylm:nlp", "babylm:macro")


@dataclass(frozen=True)
class Aggregate:
    value: float  # NaN when a component is missing
    missing: tuple[str, ...] = ()  # the score keys that were not there


def _present(scores: Mapping[str, float], key: str) -> bool:
    value = scores.get(key)
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _mean_of_components(scores: Mapping[str, float], components: dict) -> Aggregate:
    missing = tuple(key for keys, _ in components.values() for key in keys if not _present(scores, key))
    if missing:
        return Aggregate(math.nan, missing)
    values = [factor * sum(scores[k] for k in keys) / len(keys) for keys, factor in components.values()]
    return Aggregate(sum(values) / len(values))


def component_tasks(name: str) -> list[str]:
    """The evaluation tasks an aggregate needs (`babylm:nlp`: BLiMP ... and the seven GLUE tasks)."""
    components = {"babylm:human_likeness": [HUMAN_LIKENESS], "babylm:nlp": [NLP],
                  "babylm:macro": [HUMAN_LIKENESS, NLP]}[name]
    keys = [key for part in components for keys, _ in part.values() for key in keys]
    return list(dict.fromkeys(key.split(":")[0] for key in keys))


def aggregates(scores: Mapping[str, float]) -> dict[str, Aggregate]:
    """`scores`: task scores keyed `task:subtask:metric` (a trial row's headline columns)."""
    human, nlp = _mean_of_components(scores, HUMAN_LIKENESS), _mean_of_components(scores, NLP)
    macro = (Aggregate(math.nan, human.missing + nlp.missing) if human.missing or nlp.missing
             else Aggregate((human.value + nlp.value) / 2))
    return dict(zip(NAMES, (human, nlp, macro)))
