"""The scoring engine against a deliberately simple reference, on real BLiMP data."""

import numpy as np
import pytest

from classit.evaluate.progress import Progress
from classit.evaluate.scoring import encode_candidates, load_model, reference_scores
from classit.evaluate.tasks.zero_shot import accuracies, choose, fast_subset, read_task, score_items
from conftest import SHARED_DATA, train_tiny_checkpoint

BLIMP = SHARED_DATA / "blimp"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("scoring"))


def test_completion_tokens_follow_the_pipelines_offsets(checkpoint):
    _, tokenizer = load_model(checkpoint)
    encoded = encode_candidates(tokenizer, [("the dog runs .", None), ("the dog runs .", " runs .")])
    ids, scored = encoded.candidate(0)
    assert ids == tokenizer("the dog runs .")["input_ids"]  # the fast path tokenizes as the wrapper does
    assert ids[0] == tokenizer.bos_token_id and not scored[0] and all(scored[1:])
    ids, scored = encoded.candidate(1)
    assert "".join(tokenizer.decode([i]) for i, s in zip(ids, scored) if s) == " runs ."


def test_ties_go_to_the_first_candidate():
    assert choose(np.array([[-3.0, -3.0], [-4.0, -2.0], [-1.0, -2.0]])).tolist() == [0, 1, 0]


@pytest.mark.skipif(not BLIMP.is_dir(), reason="needs ../shared/data/blimp")
def test_engine_matches_simple_reference_on_blimp(checkpoint):
    model, tokenizer = load_model(checkpoint, device="cpu")
    items = fast_subset(read_task("blimp", SHARED_DATA), per_uid=4, seed=1)
    assert len(items) == 67 * 4 and len({i.meta["UID"] for i in items}) == 67
    fast = np.stack(score_items(model, tokenizer, items, max_tokens=2048))
    slow = reference_scores(model, encode_candidates(tokenizer, [c for i in items for c in i.candidates]))
    slow = slow.reshape(len(items), 2)
    assert np.abs(fast - slow).max() < 1e-4
    assert accuracies("blimp", items, list(fast)) == accuracies("blimp", items, list(slow))
    result = accuracies("blimp", items, list(fast))
    assert set(result["field"]) <= {"morphology", "syntax", "semantics", "syntax/semantics"}
    assert 0.0 <= result["average"]["accuracy"] <= 100.0


def test_shares_of_a_job_sum_to_its_scores_bit_for_bit(checkpoint):
    """A job split over n actors (`share`): each share scores its own batches only, and their
    totals add up to the whole job's exactly (the same batches, the same floats); each share's
    progress counts its own candidates."""
    from classit.evaluate.progress import Progress
    from classit.evaluate.scoring import score

    model, tokenizer = load_model(checkpoint, device="cpu")
    encoded = encode_candidates(tokenizer, [(f"the {a} {v} {b} .", None) for a in ("dog", "cat", "farmer", "bird")
                                            for v in ("runs", "sees", "reads") for b in ("fast", "the dog", "a cat")])
    whole = score(model, encoded, tokenizer.pad_token_id, max_tokens=32, row_tokens=8)
    progress = [Progress() for _ in range(3)]
    shares = [score(model, encoded, tokenizer.pad_token_id, max_tokens=32, row_tokens=8, share=(k, 3),
                    progress=progress[k]) for k in range(3)]
    assert all((share != 0).sum() > 0 for share in shares)  # each share scored some candidates ...
    assert ((np.stack(shares) != 0).sum(axis=0) == 1).all()  # ... and every candidate in one share
    assert np.array_equal(sum(shares), whole)
    counts = [p.snapshot() for p in progress]  # each share's bar counts its own candidates, and ends full
    assert all(done == total > 0 and unit == "candidates" for done, total, unit in counts)
    assert sum(total for _, total, _ in counts) == len(encoded)


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


def test_prefix_trees_score_each_candidate_as_if_alone(checkpoint):
    """Shared prefixes, a candidate that is another's prefix, a duplicate, completions, no shared word."""
    from classit.evaluate.scoring import plant, score

    model, tokenizer = load_model(checkpoint, device="cpu")
    encoded = encode_candidates(tokenizer, [
        ("the dog runs .", None), ("the dog", None), ("the dog runs fast .", None), ("the dog runs .", None),
        ("the cat is big . the cat sleeps .", " the cat sleeps ."),
        ("the cat is big . the cat runs .", " the cat runs ."),
        ("dogs run .", None), ("a bird sings .", None), ("the farmer reads .", None)])
    fed = int((encoded.lengths - 1).sum())
    forest = plant(encoded, row_tokens=128)
    assert len(forest.tokens) < fed - 10  # "<s> the dog", "<s> the cat is big . the cat" once each
    assert len(forest.row_starts) == 2  # one row
    many_rows = plant(encoded, row_tokens=4)  # every row as full as it can be, long ones alone
    assert len(many_rows.row_starts) > 3 and len(many_rows.tokens) > len(forest.tokens)
    # In any order, every scored token is predicted by a node whose ancestors (j <= node < end[j])
    # spell exactly the candidate's tokens before it, at positions equal to their depths.
    for order in (np.arange(len(encoded)), np.arange(len(encoded))[::-1], np.lexsort(encoded.ids.T[::-1])):
        for row_tokens in (128, 4):
            trees = plant(encoded[order], row_tokens)
            nodes = np.arange(len(trees.tokens))
            for node, target, owner in zip(trees.predicting, trees.targets, trees.owners):
                path = nodes[(nodes <= node) & (trees.end > node)]
                ids, scored = encoded.candidate(order[owner])
                k = len(path)  # the position of the target in its candidate
                assert trees.tokens[path].tolist() == ids[:k] and trees.depth[path].tolist() == list(range(k))
                assert target == ids[k] and scored[k]
            assert len(trees.predicting) == int(encoded.scored.sum())  # each scored token once
    reference = reference_scores(model, encoded)
    for row_tokens, max_tokens in ((128, 4096), (4, 16), (1, 8)):
        progress = CountedSteps()
        got = score(model, encoded, tokenizer.pad_token_id, max_tokens=max_tokens, row_tokens=row_tokens,
                    chunk_cells=5 * encoded.ids.shape[1], progress=progress)
        assert got == pytest.approx(reference, abs=1e-4)
        # The progress bars' count: every candidate once, batch by batch, never past the total.
        assert progress.snapshot() == (len(encoded), len(encoded), "candidates")
        assert progress.seen == sorted(progress.seen) and progress.seen[-1] <= len(encoded)
        assert len(progress.seen) >= (2 if row_tokens == 128 else 5)  # two chunks at least


class CountedSteps(Progress):
    def __init__(self):
        super().__init__()
        self.seen = []

    def advance(self, n: int = 1) -> None:
        super().advance(n)
        self.seen.append(self.done)


@pytest.mark.parametrize("damaged, reader", [("model.safetensors", "checkpoint"), ("tokenizer.json", "tokenizer")])
def test_a_checkpoint_with_a_damaged_file_is_named_in_the_error(checkpoint, tmp_path, damaged, reader):
    import shutil

    copy = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, copy)
    (copy / damaged).write_bytes((copy / damaged).read_bytes()[:100])  # cut short, as by a full disk
    with pytest.raises(ValueError, match=f"^{copy}: the {reader} does not load \\(\\w+: "):
        load_model(copy)
