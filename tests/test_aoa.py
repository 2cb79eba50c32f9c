"""The AoA fits and score on synthetic curves with known answers, and the cases the pipeline rejects."""

import math

import numpy as np
import pandas as pd
import pytest

from classit.evaluate.tasks.aoa import (CHANCE_VOCABULARY, MONTHS, child_aoa, curve_fitness, model_aoa,
                                        revision_words, sigmoid)

AGES = np.arange(16, 31, dtype=float)
WORDS = np.array([1e6 * m for m in range(1, 10)] + [1e7 * m for m in range(1, 10)] + [1e8 * m for m in range(1, 11)])
CHANCE = math.log2(CHANCE_VOCABULARY)


def surprisal_curve(midpoint: float, steepness: float = 4.0, drop: float = 12.0) -> np.ndarray:
    """Surprisal falling from chance by `drop` bits around log10(words + 1) = `midpoint`."""
    return CHANCE - sigmoid(np.log10(WORDS + 1), drop, steepness, midpoint, 0.0)


def expected_model_aoa(midpoint: float, steepness: float = 4.0, drop: float = 12.0) -> float:
    """The halfway point between chance and the lowest surprisal seen, on the true curve."""
    lowest = surprisal_curve(midpoint, steepness, drop).min()
    target = CHANCE - 0.5 * (CHANCE - lowest)
    # -surprisal = drop / (1 + exp(-b (x - c))) - CHANCE reaches -target at:
    return midpoint - math.log(drop / (CHANCE - target) - 1) / steepness


def test_child_aoa_recovers_the_age_where_half_the_children_say_the_word():
    shares = sigmoid(AGES, 1.0, 0.5, 22.0, 0.0)
    assert child_aoa(AGES, shares) == pytest.approx(22.0, abs=1e-3)
    shares[[0, 5]] = np.nan  # missing months are left out of the fit
    assert child_aoa(AGES, shares) == pytest.approx(22.0, abs=1e-3)


def test_child_aoa_rejects_what_the_pipeline_rejects():
    assert child_aoa(AGES, np.full(15, np.nan)) is None
    two = np.full(15, np.nan)
    two[[3, 9]] = [0.2, 0.8]
    assert child_aoa(AGES, two) is None  # fewer than 3 months
    assert child_aoa(AGES, sigmoid(AGES, 0.3, 0.5, 22.0, 0.0)) is None  # never half the children


def test_model_aoa_recovers_the_halfway_point_of_a_surprisal_curve():
    for midpoint in (6.8, 7.5, 8.2):
        assert model_aoa(list(surprisal_curve(midpoint)), list(WORDS)) == pytest.approx(
            expected_model_aoa(midpoint), abs=1e-3)


def test_model_aoa_rejects_what_the_pipeline_rejects():
    curve = surprisal_curve(7.5)
    assert model_aoa(list(curve[:2]), list(WORDS[:2])) is None  # fewer than 3 checkpoints
    assert model_aoa([math.nan] * 5, list(WORDS[:5])) is None
    assert model_aoa(list(curve[::-1]), list(WORDS)) is None  # surprisal rising: a falling fit, no AoA
    # The threshold is halfway to the lowest surprisal seen, so any falling curve crosses it in range.
    assert model_aoa(list(surprisal_curve(12.0)), list(WORDS)) is not None
    with pytest.raises(ValueError):
        model_aoa(list(curve), list(WORDS[:-1]))


def test_revision_names_read_as_words():
    assert revision_words("chck_10M") == 1e7 and revision_words("chck_200M") == 2e8
    assert revision_words(5e5) == 5e5 and revision_words("main") is None


def test_curve_fitness_correlates_model_and_child_aoas_over_the_words_both_fits_keep():
    children = {"ball": 18.0, "dog": 20.0, "milk": 24.0, "tree": 28.0}
    midpoints = {"ball": 6.6, "dog": 7.0, "milk": 7.9, "tree": 8.8}
    human = pd.DataFrame([{"word": w, **dict(zip(MONTHS, sigmoid(AGES, 1.0, 0.6, age, 0.0)))}
                          for w, age in children.items()] + [{"word": "late", **dict.fromkeys(MONTHS, 0.1)}])
    rows = [{"target_word": w, "step": f"chck_{int(n // 1e6)}M", "surprisal": float(s)}
            for w in [*children, "late"] for n, s in zip(WORDS, surprisal_curve(midpoints.get(w, 7.0)))]
    rows.append({"target_word": "ball", "step": "chck_5M", "surprisal": "n/a"})  # unreadable: skipped
    result = curve_fitness(rows, human)
    assert result["words"] == list(children)  # "late" has no child AoA
    model = [expected_model_aoa(midpoints[w]) for w in children]
    np.testing.assert_allclose(result["model_aoas"], model, atol=1e-3)
    assert result["curve_fitness"] == pytest.approx(np.corrcoef(model, list(children.values()))[0, 1], abs=1e-4)
    # Fewer than 3 words left: the pipeline's score is 0.0, not undefined.
    few = curve_fitness([r for r in rows if r["target_word"] in ("ball", "dog")], human)
    assert few == {"curve_fitness": 0.0, "n_words": 2, "words": ["ball", "dog"]}


@pytest.mark.parametrize("content, message", [
    ([{"context": "the dog"}], "<root>: Input should be a valid dictionary (got [{'context': 'the dog'}])"),
    ({"dog": [{"text": "the dog"}]}, "dog.0.context: Field required"),
    ({"dog": [{"context": 3}]}, "dog.0.context: Input should be a valid string (got 3)"),
])
def test_contexts_of_another_shape_are_named_by_file_and_field(tmp_path, content, message):
    import json

    from classit.evaluate.tasks.aoa import read_contexts

    path = tmp_path / "cdi_childes.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as raised:
        read_contexts(path)
    assert str(raised.value) == f"{path}: {message}"


def test_a_child_table_without_its_word_or_month_columns_is_named(tmp_path):
    from classit.evaluate.tasks.aoa import read_child_curves

    path = tmp_path / "cdi_human.csv"
    path.write_text("word,16,17\ndog,0.1,0.6\n")
    assert list(read_child_curves(path)["word"]) == ["dog"]
    for header, has in (("lemma,16,17", "lemma, 16, 17"), ("word,age,share", "word, age, share")):
        path.write_text(f"{header}\ndog,0.1,0.6\n")
        with pytest.raises(ValueError) as raised:
            read_child_curves(path)
        assert str(raised.value) == f"{path}: needs a word column and month columns 16-30 (has {has})"
    path.write_text("word,16,17\ndog,0.1,most\n")
    with pytest.raises(ValueError) as raised:
        read_child_curves(path)
    assert str(raised.value) == (f"{path}: a share that is not a number "
                                 "(ValueError: could not convert string to float: 'most')")


def test_surprisal_rows_score_the_word_after_each_context_as_the_pipeline_does(tmp_path):
    import json

    import torch

    from classit.evaluate.scoring import load_model
    from classit.evaluate.tasks.aoa import read_contexts, surprisal_rows
    from conftest import train_tiny_checkpoint

    (tmp_path / "cdi_childes.json").write_text(json.dumps({
        "dog": [{"context": "the cat sees the "}, {"context": " a boy has a"}],
        "a": [{"context": "one-character words are dropped"}], "ball": [{"context": "the dog"}]}))
    contexts = read_contexts(tmp_path / "cdi_childes.json")
    assert contexts == {"dog": ["the cat sees the ", " a boy has a"], "ball": ["the dog"]}
    assert read_contexts(tmp_path / "cdi_childes.json", min_context=2) == {"dog": contexts["dog"]}
    model, tokenizer = load_model(train_tiny_checkpoint(tmp_path / "ckpt"), device="cpu")
    rows = surprisal_rows(model, tokenizer, contexts, "chck_1M", 1_000_000)
    assert [(r["target_word"], r["context_id"], r["step"]) for r in rows] == [
        ("dog", 0, "chck_1M"), ("dog", 1, "chck_1M"), ("ball", 0, "chck_1M")]
    # The pipeline's computation, written out: the stripped context, a space, the word; the tokens
    # whose character span ends after the word's start, each scored given all before it.
    for row, context, word in zip(rows, ["the cat sees the", "a boy has a", "the dog"], ["dog", "dog", "ball"]):
        text = f"{context} {word}"
        encoded = tokenizer(text, return_offsets_mapping=True)
        ids = torch.tensor([encoded["input_ids"]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids[:, :-1]).logits.float(), dim=-1)[0]
        start = len(text) - len(word)
        scored = [i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > start and i > 0]
        expected = -sum(log_probs[i - 1, ids[0, i]].item() for i in scored)
        assert row["surprisal"] == pytest.approx(expected, abs=1e-4)
