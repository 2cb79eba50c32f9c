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


def test_a_malformed_or_incomplete_line_of_a_task_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "blimp" / "anaphor_gender_agreement.jsonl"
    good = {"sentence_good": "She saw herself .", "sentence_bad": "She saw himself ."}
    path.parent.mkdir()
    path.write_text(json.dumps(good) + '\n{"sentence_good": "x", \n')  # cut short, as by a full disk
    with pytest.raises(ValueError, match=f"^{path}:2: not valid JSON \\(JSONDecodeError: "):
        read_task("blimp", tmp_path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({"sentence_good": "x"}) + "\n")
    with pytest.raises(ValueError, match=f"^{path}:2: missing sentence_bad$"):
        read_task("blimp", tmp_path)
    path.write_text(json.dumps(good) + "\n3\n")  # JSON, but no object
    with pytest.raises(ValueError, match=f"^{path}:2: not a JSON object \\(got int\\)$"):
        read_task("blimp", tmp_path)


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
    write_jsonl(tmp_path / "wug_past_tense" / "wug_past_tense.jsonl", rows)
    items = read_task("wug_past", tmp_path)
    assert [i.ratio for i in items] == [0.9, 0.2, 0.4]
    assert {i.meta["UID"] for i in items} == {"wug_past"}  # the task's name, whatever the file's, as there
    rho = wug_correlation(items, [np.array([-1.0, -2.0]), np.array([-3.0, -1.0]), np.array([-2.0, -2.5])])
    assert rho == pytest.approx(1.0)  # model probabilities in the same order as the human ratios
    model, tokenizer = model_and_tokenizer
    assert -1.0 <= wug_correlation(items, score_items(model, tokenizer, items)) <= 1.0


COMPS_FILES = {"comps_base": "base", "comps_wugs": "wugs", "comps_wugs_dist-before": "wugs_dist_before",
               "comps_wugs_dist-in-between": "wugs_dist_in_between"}


def write_comps(folder):
    rows = [{"prefix_acceptable": "the dog", "prefix_unacceptable": "the box", "property_phrase": "can run ."},
            {"prefix_acceptable": "a cat", "prefix_unacceptable": "a rock", "property_phrase": "eats food ."},
            # the same prefix twice: a tie, which goes to the acceptable one, as the pipeline's argmax does
            {"prefix_acceptable": "the wug", "prefix_unacceptable": "the wug", "property_phrase": "is big ."}]
    for stem in COMPS_FILES:
        write_jsonl(folder / "comps" / f"{stem}.jsonl", rows)


def test_comps_scores_the_property_after_each_prefix_as_the_pipeline_does(tmp_path, model_and_tokenizer):
    from classit.evaluate.export import zero_shot_predictions
    from classit.evaluate.scoring import reference_scores

    model, tokenizer = model_and_tokenizer
    write_comps(tmp_path)
    items = read_task("comps", tmp_path)
    assert len(items) == 12 and {i.meta["UID"] for i in items} == set(COMPS_FILES.values())
    # The pipeline's joining: prefix + " " + property phrase, the phrase (no leading space) scored.
    assert items[0].candidates == [("the dog can run .", "can run ."), ("the box can run .", "can run .")]
    ids, scored = encode_candidates(tokenizer, [items[0].candidates[1]]).candidate(0)
    assert tokenizer.decode([t for t, s in zip(ids, scored) if s]).strip() == "can run ."
    # The engine's scores equal the one-candidate-at-a-time reference.
    scores = score_items(model, tokenizer, items)
    reference = reference_scores(model, encode_candidates(tokenizer, [c for i in items for c in i.candidates]))
    np.testing.assert_allclose(np.concatenate(scores), reference, atol=1e-4)
    assert scores[2][0] == scores[2][1]  # the tie
    result = accuracies("comps", items, scores)
    # Accuracy per subset; the task score is the mean of the four (each file holds the same rows).
    assert set(result["UID"]) == set(COMPS_FILES.values()) and len(set(result["UID"].values())) == 1
    assert result["average"]["accuracy"] == pytest.approx(sum(result["UID"].values()) / 4)
    hand = 100 * (int(scores[0][0] > scores[0][1]) + int(scores[1][0] > scores[1][1]) + 1) / 3
    assert result["average"]["accuracy"] == pytest.approx(hand)
    # Predictions name the whole chosen sentence, with the pipeline's ids.
    preds = zero_shot_predictions(items, scores, with_prob=False, whole_sentence=True)
    assert preds["base"]["predictions"][2] == {"id": "base_2", "pred": "the wug is big ."}
    assert preds["base"]["predictions"][0]["pred"] in ("the dog can run .", "the box can run .")


def test_comps_rows_and_export_in_the_official_layout(tmp_path, model_and_tokenizer):
    from classit.evaluate.jobs import EvalJob, ModelCache, run_job

    write_comps(tmp_path / "data")
    model, tokenizer = model_and_tokenizer
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    job = EvalJob(str(checkpoint), "comps", str(tmp_path / "data"), export_dir=str(tmp_path / "out"))
    rows = {(r["subtask"], r["metric"]): r for r in run_job(job, ModelCache("cpu"))}
    assert rows[("average", "accuracy")]["n_items"] == 12 and rows[("average", "accuracy")]["error"] == ""
    assert {s for s, _ in rows} == {"average", *(f"UID:{name}" for name in COMPS_FILES.values())}
    exported = json.loads((tmp_path / "out" / "ckpt" / "main" / "zero_shot" / "causal" / "comps" / "comps"
                           / "predictions.json").read_text())
    assert set(exported) == set(COMPS_FILES.values()) and len(exported["wugs"]["predictions"]) == 3


def test_fast_mode_reads_the_official_fast_sets_whole_and_subsamples_only_tasks_without_one(tmp_path):
    from classit.evaluate.tasks.zero_shot import read_for_evaluation

    pair = {"sentence_good": "the dog runs .", "sentence_bad": "the dog run .", "field": "morphology",
            "linguistics_term": "agreement"}
    for uid in ("anaphor_gender_agreement", "wh_island"):  # the official fast size: 200 per UID
        write_jsonl(tmp_path / "fast" / "blimp_fast" / f"{uid}.jsonl", [{**pair, "UID": uid}] * 200)
        write_jsonl(tmp_path / "fast" / "blimp_filtered" / f"{uid}.jsonl", [{**pair, "UID": uid}] * 900)
    folder, items = read_for_evaluation("blimp", tmp_path / "fast", fast=True, per_uid=100)
    assert folder.name == "blimp_fast" and len(items) == 400  # read whole, not subsampled
    folder, items = read_for_evaluation("blimp", tmp_path / "fast", fast=False, per_uid=100)
    assert folder.name == "blimp_filtered" and len(items) == 1800
    # A fast file whose count differs from the official collation's is refused, naming the UID.
    write_jsonl(tmp_path / "fast" / "blimp_fast" / "wh_island.jsonl", [{**pair, "UID": "wh_island"}] * 150)
    with pytest.raises(ValueError, match="UID wh_island has 150 items; the official fast set has 200"):
        read_for_evaluation("blimp", tmp_path / "fast", fast=True, per_uid=100)
    # No fast set (COMPS has none): the seeded subset; WUG's fast set is the whole task.
    write_comps(tmp_path / "fast")
    _, items = read_for_evaluation("comps", tmp_path / "fast", fast=True, per_uid=2)
    assert len(items) == 8 and items == read_for_evaluation("comps", tmp_path / "fast", True, 2)[1]
    write_jsonl(tmp_path / "fast" / "wug_past_tense" / "wug_past.jsonl",
                [{"sentences": "a wug .\ttwo wugs .", "ratio": 0.5}] * 50)
    assert len(read_for_evaluation("wug_past", tmp_path / "fast", fast=True, per_uid=2)[1]) == 50


def test_the_catalog_knows_every_task_modules_tasks_and_their_metrics():
    from classit.evaluate import catalog
    from classit.evaluate.tasks import finetune, zero_shot

    assert set(catalog.ZERO_SHOT_METRIC) == set(zero_shot.TASKS)
    assert set(catalog.FINETUNE_METRICS) == set(catalog.FINETUNE_SELECT_BY) == set(finetune.TASKS)
    assert all(catalog.FINETUNE_SELECT_BY[t] in catalog.FINETUNE_METRICS[t] for t in finetune.TASKS)
    assert catalog.headline_keys("wug_adj") == ["wug_adj:average:spearman"]


def test_a_model_that_scores_every_candidate_alike_is_flagged_beside_its_perfect_accuracy(tmp_path, model_and_tokenizer):
    """The pipeline counts a tie as correct (the grammatical sentence is first): a model with uniform
    predictions, a diverged run's, gets 100% on BLiMP. The share of items won by a tie is a row of
    its own, and the checkpoint's rows name it in one warning line."""
    import torch

    from classit.evaluate.catalog import tie_warning
    from classit.evaluate.jobs import EvalJob, ModelCache, run_job
    from classit.evaluate.tasks.zero_shot import tied_pct

    assert tied_pct([np.array([-1.0, -1.0]), np.array([-1.0, -2.0]), np.array([-2.0, -1.0]),
                     np.array([-1.0, -3.0, -1.0]), np.array([-1.0, -0.5, -1.0])]) == 40.0
    pairs = [("the dog runs .", "the dog run ."), ("the cats sleep .", "the cats sleeps ."),
             ("a bird sings .", "a bird sing .")]
    write_jsonl(tmp_path / "data" / "blimp" / "agreement.jsonl",
                [{"sentence_good": good, "sentence_bad": bad, "field": "morphology", "linguistics_term": "agreement",
                  "UID": "agreement"} for good, bad in pairs])
    model, tokenizer = model_and_tokenizer
    rows = {}
    for name, head in (("trained", model.lm_head.weight.detach().clone()), ("uniform", torch.zeros_like(model.lm_head.weight))):
        checkpoint = tmp_path / name
        with torch.no_grad():
            original = model.lm_head.weight.detach().clone()
            model.lm_head.weight.copy_(head)
            model.save_pretrained(checkpoint)
            model.lm_head.weight.copy_(original)
        tokenizer.save_pretrained(checkpoint)
        job = EvalJob(str(checkpoint), "blimp", str(tmp_path / "data"))
        rows[name] = run_job(job, ModelCache("cpu"))
    scores = {name: {r["metric"]: r["value"] for r in part if r["subtask"] == "average"} for name, part in rows.items()}
    assert scores["uniform"] == {"accuracy": 100.0, "tied_pct": 100.0}
    assert scores["trained"]["tied_pct"] == 0.0
    assert tie_warning(rows["trained"], str(tmp_path / "trained")) == ""
    assert tie_warning(rows["uniform"], str(tmp_path / "uniform")).startswith("blimp 100% of items won by a tie")
    # Named in the catalog's order, whichever job finished first.
    finished = [{"checkpoint": "c", "task": task, "metric": "tied_pct", "error": "", "value": value}
                for task, value in (("ewok", 94.0), ("entity_tracking", 10.0), ("blimp", 100.0))]
    assert tie_warning(finished, "c").startswith("blimp 100%, ewok 94% of items won by a tie")
