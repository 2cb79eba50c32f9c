"""EWoK, entity tracking and WUG on small files in the official layouts, scored as the pipeline does."""

import json

import numpy as np
import pytest

from classit.evaluate.scoring import encode_candidates, load_model
from classit.evaluate.tasks.zero_shot import accuracies, read_task, score_items, wug_correlation
from conftest import train_tiny_checkpoint


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    return load_model(train_tiny_checkpoint(tmp_path_factory.mktemp("zs")), device="cpu")


def test_ewok_scores_only_the_target_after_the_first_context(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    write_jsonl(tmp_path / "ewok_filtered" / "social.jsonl", [
        {"Context1": "the dog is big .", "Context2": "the dog is small .", "Target1": "the dog runs .",
         "Target2": "the dog sleeps .", "Domain": "social", "ContextType": "short", "ContextDiff": "size",
         "TargetDiff": "verb"}] * 3)
    items = read_task("ewok", tmp_path)
    text, completion = items[0].candidates[1]
    assert text == "the dog is big . the dog sleeps ." and completion == " the dog sleeps ."
    ids, scored = encode_candidates(tokenizer, [(text, completion)]).candidate(0)
    assert tokenizer.decode([t for t, s in zip(ids, scored) if s]) == " the dog sleeps ."
    result = accuracies("ewok", items, score_items(model, tokenizer, items))
    assert set(result) == {"UID", "context_type", "context_contrast", "target_contrast", "average"}
    assert result["average"]["accuracy"] in (0.0, 100.0)  # three identical items: all right or all wrong


def test_entity_tracking_averages_splits_of_uid_means(tmp_path):
    for split, numops in (("regular", 0), ("regular", 1), ("ambiref", 0), ("move_contents", 2)):
        rows = [{"input_prefix": "the box contains", "options": [" the apple .", " nothing ."], "numops": numops}]
        write_jsonl(tmp_path / "entity_tracking" / f"{split}_{numops}.jsonl", rows)
    items = read_task("entity_tracking", tmp_path)
    assert {i.meta["UID"] for i in items} == {"regular_0_0_ops", "regular_1_1_ops", "ambiref_0_0_ops",
                                              "move_contents_2_2_ops"}
    # regular: one right, one wrong (50); ambiref right (100); move_contents wrong (0): average 50.
    by_uid = {"regular_0_0_ops": [0.0, -1.0], "regular_1_1_ops": [-2.0, -1.0], "ambiref_0_0_ops": [-1.0, -1.0],
              "move_contents_2_2_ops": [-3.0, -1.0]}
    result = accuracies("entity_tracking", items, [np.array(by_uid[i.meta["UID"]]) for i in items])
    assert result["split"] == {"regular": 50.0, "ambiref": 100.0, "move_contents": 0.0}
    assert result["average"]["accuracy"] == 50.0


def test_wug_correlates_first_candidate_probability_with_human_ratio(tmp_path, model_and_tokenizer):
    rows = [{"sentences": f"this is a wug . these are {a} .\tthis is a wug . these are {b} .", "ratio": r}
            for a, b, r in (("wugs", "wuges", 0.9), ("wugen", "wugs", 0.2), ("wugi", "wugs", 0.4))]
    write_jsonl(tmp_path / "wug_past_tense" / "wug_past.jsonl", rows)
    items = read_task("wug_past", tmp_path)
    assert [i.ratio for i in items] == [0.9, 0.2, 0.4]
    rho = wug_correlation(items, [np.array([-1.0, -2.0]), np.array([-3.0, -1.0]), np.array([-2.0, -2.5])])
    assert rho == pytest.approx(1.0)  # model probabilities in the same order as the human ratios
    model, tokenizer = model_and_tokenizer
    assert -1.0 <= wug_correlation(items, score_items(model, tokenizer, items)) <= 1.0
