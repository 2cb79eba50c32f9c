"""The scoring engine against a deliberately simple reference, on real BLiMP data."""

import numpy as np
import pytest

from classit.evaluate.scoring import choose, encode_candidate, load_model, reference_score
from classit.evaluate.tasks.zero_shot import accuracies, fast_subset, read_task, score_items
from conftest import SHARED_DATA, train_tiny_checkpoint

BLIMP = SHARED_DATA / "blimp"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("scoring"))


def test_completion_tokens_follow_the_pipelines_offsets(checkpoint):
    _, tokenizer = load_model(checkpoint)
    whole = encode_candidate(tokenizer, "the dog runs .")
    assert whole.ids == tokenizer("the dog runs .")["input_ids"]  # the fast path tokenizes as the wrapper does
    assert whole.ids[0] == tokenizer.bos_token_id and not whole.scored[0] and all(whole.scored[1:])
    tail = encode_candidate(tokenizer, "the dog runs .", completion=" runs .")
    text_tokens = [tokenizer.decode([i]) for i, s in zip(tail.ids, tail.scored) if s]
    assert "".join(text_tokens) == " runs ."


def test_ties_go_to_the_first_candidate():
    assert choose(np.array([[-3.0, -3.0], [-4.0, -2.0], [-1.0, -2.0]])).tolist() == [0, 1, 0]


@pytest.mark.skipif(not BLIMP.is_dir(), reason="needs ../shared/data/blimp")
def test_engine_matches_simple_reference_on_blimp(checkpoint):
    model, tokenizer = load_model(checkpoint, device="cpu")
    items = fast_subset(read_task("blimp", SHARED_DATA), per_uid=4, seed=1)
    assert len(items) == 67 * 4 and len({i.meta["UID"] for i in items}) == 67
    fast = np.stack(score_items(model, tokenizer, items, max_tokens=2048))
    slow = np.array([[reference_score(model, encode_candidate(tokenizer, text)) for text, _ in i.candidates]
                     for i in items])
    assert np.abs(fast - slow).max() < 1e-4
    assert accuracies("blimp", items, list(fast)) == accuracies("blimp", items, list(slow))
    result = accuracies("blimp", items, list(fast))
    assert set(result["field"]) <= {"morphology", "syntax", "semantics", "syntax/semantics"}
    assert 0.0 <= result["average"]["accuracy"] <= 100.0


def test_supplement_layout_takes_the_paradigm_from_the_file_name(tmp_path):
    folder = tmp_path / "supplement_filtered"
    folder.mkdir()
    (folder / "hypernym.jsonl").write_text('{"sentence_good": "a dog is an animal .", '
                                           '"sentence_bad": "an animal is a dog ."}\n')
    items = read_task("blimp_supplement", tmp_path)
    assert items[0].meta["UID"] == "hypernym" and items[0].meta["field"] == "supplement"
    (folder / "broken.jsonl").write_text('{"sentence": "x"}\n')
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        read_task("blimp_supplement", tmp_path)


def test_shared_prefix_packing_scores_each_candidate_as_if_alone(checkpoint):
    """Groups of 1-3 candidates: a candidate that is the whole prefix, completions, no shared word."""
    from classit.evaluate.scoring import encode_candidates, pack, score_groups

    model, tokenizer = load_model(checkpoint, device="cpu")
    groups = [[("the dog runs .", None), ("the dog", None), ("the dog runs fast .", None)],
              [("the cat is big . the cat sleeps .", " the cat sleeps ."),
               ("the cat is big . the cat runs .", " the cat runs .")],
              [("dogs run .", None), ("a bird sings .", None)],
              [("the farmer reads .", None)]]
    encoded = [encode_candidates(tokenizer, group) for group in groups]
    packed = pack(encoded[0])
    assert len(packed.ids) < sum(len(c.ids) for c in encoded[0])  # "<s> the dog" is computed once
    scores = score_groups(model, encoded, tokenizer.pad_token_id, max_tokens=64)
    for group, got in zip(encoded, scores):
        assert got == pytest.approx([reference_score(model, c) for c in group], abs=1e-4)
