"""Reading (surprisal -> R^2 gain) and GLUE fine-tuning, on small files in the official layouts."""

import json
import random

import numpy as np
import pytest

from classit.evaluate import export
from classit.evaluate.catalog import FINETUNE_METRICS, FINETUNE_SELECT_BY
from classit.evaluate.jobs import EvalJob, ModelCache, run_job
from classit.evaluate.scoring import Encoded, load_model, reference_scores
from classit.evaluate.tasks import finetune, reading
from conftest import train_tiny_checkpoint

NOUNS = ["dog", "cat", "bird", "child", "teacher", "farmer"]
VERBS = ["runs", "sleeps", "sings", "jumps", "eats", "reads"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("rf"))


def write_reading_csv(folder, n=240, seed=0, rt_from=None):
    """`reading/reading_data.csv` with the official columns; times from `rt_from(row)` or pure noise."""
    import pandas as pd

    rng = random.Random(seed)
    rows, prev = [], None
    for i in range(n):
        noun, verb = rng.choice(NOUNS), rng.choice(VERBS)
        row = {"item": f"the {noun}", "word": f" {verb}", "prev_item": prev[0] if prev else np.nan,
               "prev_word": prev[1] if prev else np.nan, "Subtlex_log10": rng.uniform(1, 5),
               "length": len(verb), "context_length": rng.randint(1, 12), "prev_length": len(prev[1]) if prev else np.nan}
        prev = (row["item"], row["word"])
        rows.append(row)
    frame = pd.DataFrame(rows)
    noise = np.random.default_rng(seed).normal(size=(n, 5))
    signal = rt_from(frame) if rt_from is not None else np.zeros(n)
    for k, column in enumerate(reading.EYE_TRACKING):
        frame[column] = 200 + 30 * signal + 10 * noise[:, k]
    frame[reading.SELF_PACED] = 300 + 30 * signal + 10 * noise[:, 4]
    for erp in ("ELAN", "LAN", "N400", "P600", "EPNP", "PNP"):
        frame[erp] = noise[:, 0]
    (folder / "reading").mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "reading" / "reading_data.csv", index=False)
    return frame


def test_surprisal_is_the_words_summed_log_probability_after_its_context(tmp_path, checkpoint):
    model, tokenizer = load_model(checkpoint, "cpu")
    write_reading_csv(tmp_path, n=12)
    frame = reading.read_reading(tmp_path)
    pred, prev = reading.surprisals(model, tokenizer, frame)
    for k in (0, 5, 11):
        context = tokenizer(frame["item"][k])["input_ids"]
        word = tokenizer(frame["word"][k], add_special_tokens=False)["input_ids"]
        assert context[0] == tokenizer.bos_token_id  # the context gets BOS, the word is tokenized alone
        encoded = Encoded.from_lists([context + word], [[False] * len(context) + [True] * len(word)])
        assert pred[k] == pytest.approx(-reference_scores(model, encoded)[0], abs=1e-4)
    assert np.isnan(prev[0]) and prev[1] == pytest.approx(pred[0])  # row 1's previous word is row 0's word


def test_r2_gain_is_the_pipelines_relative_gain_and_finds_a_real_effect(tmp_path, checkpoint):
    model, tokenizer = load_model(checkpoint, "cpu")
    frame = write_reading_csv(tmp_path, rt_from=lambda f: f["length"] - 4.5)
    pred, prev = reading.surprisals(model, tokenizer, frame)
    # The same gain by hand: least squares on the design matrix with all pairwise interactions.
    data = frame.assign(pred=pred)
    terms = reading.BASE_TERMS
    columns = [np.ones(len(data))] + [data[t] for t in terms]
    columns += [data[a] * data[b] for i, a in enumerate(terms) for b in terms[i + 1:]]

    def r2(design, y):
        fitted = design @ np.linalg.lstsq(design, y, rcond=None)[0]
        return 1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum()

    y = data["RTfirstfix"].to_numpy()
    base = r2(np.column_stack(columns), y)
    full = r2(np.column_stack(columns + [data["pred"]]), y)
    assert reading.r2_gain(data, "RTfirstfix", terms) == pytest.approx((full - base) / (1 - base) * 100, rel=1e-6)

    # Times driven by the model's own surprisal: a large gain; times it does not explain: about none.
    driven = write_reading_csv(tmp_path / "driven", rt_from=lambda f: (pred - pred.mean()) / pred.std())
    scores = reading.reading_scores(driven, pred, prev)
    assert scores["eye_tracking"] > 50 and scores["self_paced_reading"] > 50
    assert reading.reading_scores(write_reading_csv(tmp_path / "noise", seed=3), pred, prev)["eye_tracking"] < 5


def test_reading_job_writes_rows_and_leaderboard_predictions(tmp_path, checkpoint):
    write_reading_csv(tmp_path / "data", n=60)
    job = EvalJob(str(checkpoint), "reading", str(tmp_path / "data"), trial="m", export_dir=str(tmp_path / "out"))
    rows = run_job(job, ModelCache("cpu"))
    assert {r["subtask"] for r in rows} == {*reading.EYE_TRACKING, "eye_tracking", "self_paced_reading"}, rows
    saved = json.loads(export.prediction_path(tmp_path / "out", "m", "main", "reading").read_text())
    assert len(saved["reading"]["predictions"]) == 60 and saved["reading"]["predictions"][0]["prev_pred"] is None


GLUE_ROW = {
    "boolq": lambda i, y: {"question": f"is the dog {i} big ?", "passage": "the dog is big .", "label": bool(y)},
    "multirc": lambda i, y: {"question": "who runs ?", "answer": f"the dog {i}", "paragraph": "the dog runs .",
                             "label": y},
    "rte": lambda i, y: {"sentence1": f"the dog {i} runs .", "sentence2": "a dog runs .", "label": y},
    "wsc": lambda i, y: {"span1_text": "the dog", "span2_text": "it", "text": f"the dog {i} ran because it was big .",
                         "label": y},
    "mrpc": lambda i, y: {"sentence1": f"the cat {i} sleeps .", "sentence2": "a cat sleeps .", "label": y},
    "qqp": lambda i, y: {"question1": f"who {i} sings ?", "question2": "who is singing ?", "label": y},
    "mnli": lambda i, y: {"premise": f"the bird {i} sings .", "hypothesis": "a bird sings .", "label": y},
}


def write_glue(folder, task, labels_train, labels_valid):
    glue = folder / "glue_filtered"
    glue.mkdir(parents=True, exist_ok=True)
    for split, labels in (("train", labels_train), ("valid", labels_valid)):
        rows = [GLUE_ROW[task](i, y) for i, y in enumerate(labels)]
        (glue / f"{task}.{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_examples_are_read_with_the_pipelines_templates_and_labels(tmp_path):
    write_glue(tmp_path, "wsc", [1, 0], [1])
    texts, labels = finetune.read_examples(tmp_path / "glue_filtered" / "wsc.train.jsonl", "wsc")
    assert texts[0] == ('Does "it" refer to "the dog" in this passage?', "the dog 0 ran because it was big .")
    assert labels == [1, 0]
    write_glue(tmp_path, "multirc", [1], [0])
    texts, _ = finetune.read_examples(tmp_path / "glue_filtered" / "multirc.train.jsonl", "multirc")
    assert texts[0] == ("Question: who runs ? Answer: the dog 0", "the dog runs .")
    write_glue(tmp_path, "boolq", [True, False], [True])  # BoolQ's booleans are class indices 1 and 0
    assert finetune.read_examples(tmp_path / "glue_filtered" / "boolq.train.jsonl", "boolq")[1] == [1, 0]
    write_glue(tmp_path, "rte", [0, 2], [0])
    with pytest.raises(ValueError, match=r"rte.train.jsonl:2: label 2 is not a class index below 2"):
        finetune.read_examples(tmp_path / "glue_filtered" / "rte.train.jsonl", "rte")
    path = tmp_path / "glue_filtered" / "rte.train.jsonl"
    path.write_text(path.read_text().splitlines()[0] + '\n["a list"]\n')  # JSON, but no object
    with pytest.raises(ValueError, match=r"rte.train.jsonl:2: not a JSON object \(got list\)$"):
        finetune.read_examples(path, "rte")


def test_f1_takes_class_1_as_positive_and_mrpc_qqp_select_by_f1():
    # Class 1 positive: precision 1, recall 1/2 -> 2/3 (class 0 as positive would give 0.8).
    scores = finetune.classification_metrics([1, 1, 0, 0], [1, 0, 0, 0], ("accuracy", "f1", "mcc"))
    assert scores["f1"] == pytest.approx(2 / 3) and scores["accuracy"] == 0.75
    assert {t for t, metric in FINETUNE_SELECT_BY.items() if metric == "f1"} == {"mrpc", "qqp"}
    assert FINETUNE_METRICS["mnli"] == ("accuracy",) and finetune.TASKS["mnli"].num_labels == 3
    assert (finetune.TASKS["wsc"].epochs, finetune.TASKS["boolq"].batch_size, finetune.TASKS["rte"].batch_size) == (30, 16, 32)


def test_label_k_is_logit_k(tmp_path, checkpoint):
    """Trained (at a high rate) on all-1 labels the model predicts 1 (F1 1); on all-0, 0 (F1 0)."""
    fast = finetune.FinetuneSettings(learning_rate=3e-3, warmup_proportion=0.0)
    for label, f1 in ((1, 1.0), (0, 0.0)):
        write_glue(tmp_path / str(label), "mrpc", [label] * 64, [label] * 8)
        scores, preds, _ = finetune.finetune(checkpoint, "mrpc", tmp_path / str(label), fast, device="cpu")
        assert preds == [label] * 8 and scores["accuracy"] == 1.0 and scores["f1"] == f1


@pytest.mark.parametrize("task", list(finetune.TASKS))
def test_each_finetuning_task_runs_end_to_end_with_pipeline_defaults(tmp_path, checkpoint, task):
    spec = finetune.TASKS[task]
    rng = random.Random(0)
    write_glue(tmp_path / "data", task, [rng.randrange(spec.num_labels) for _ in range(spec.batch_size * 2)],
               [rng.randrange(spec.num_labels) for _ in range(10)])
    job = EvalJob(str(checkpoint), task, str(tmp_path / "data"), trial="m", export_dir=str(tmp_path / "out"))
    rows = run_job(job, ModelCache("cpu"))
    assert all(not r["error"] for r in rows), rows
    values = {r["metric"]: r["value"] for r in rows}
    assert set(values) == {*FINETUNE_METRICS[task], "best_epoch"}
    assert 0 <= values["accuracy"] <= 1 and 1 <= values["best_epoch"] <= spec.epochs
    saved = json.loads(export.prediction_path(tmp_path / "out", "m", "main", task).read_text())
    assert [p["id"] for p in saved[task]["predictions"]] == [f"{task}_{i}" for i in range(10)]
    assert {p["pred"] for p in saved[task]["predictions"]} <= set(range(spec.num_labels))


def test_pooling_reads_the_last_real_token_or_the_official_first_position(checkpoint):
    import torch

    hidden = torch.arange(2 * 5, dtype=torch.float).reshape(2, 5, 1)  # each position's value is its index
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert finetune.pool(hidden, left, "final").flatten().tolist() == [4, 9]  # the last real token
    assert finetune.pool(hidden, right, "final").flatten().tolist() == [2, 9]
    assert finetune.pool(hidden, right, "official").flatten().tolist() == [0, 5]  # encoding[:, 0]
    # The official rule end to end: right padding (the pipeline's default --padding_side) and a
    # first position that, with this BOS-prepending tokenizer, holds BOS for every row: no input seen.
    with pytest.warns(UserWarning, match="first position, which the head reads, sees no input"):
        tokenizer, _ = finetune.load_for_finetuning(checkpoint, "official")
    batch = tokenizer(["the dog runs .", "a cat"], ["it runs .", "a cat sleeps on the mat ."], padding=True,
                      return_tensors="pt")
    assert tokenizer.padding_side == "right" and (batch["attention_mask"][:, 0] == 1).all()
    assert (batch["input_ids"][:, 0] == tokenizer.bos_token_id).all()
    assert batch["attention_mask"][0, -1] == 0  # the shorter pair is padded at its end
    final_tokenizer, transformer = finetune.load_for_finetuning(checkpoint, "final")
    assert final_tokenizer.padding_side == "left" and next(transformer.parameters()).dtype == torch.float32


def test_a_bf16_checkpoint_fine_tunes_in_fp32_and_rows_carry_the_pooling(tmp_path, checkpoint):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(checkpoint).to(torch.bfloat16).save_pretrained(bf16)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(bf16)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    rng = random.Random(1)
    write_glue(tmp_path / "data", "rte", [rng.randrange(2) for _ in range(64)], [rng.randrange(2) for _ in range(10)])
    for pooling in ("final", "official"):
        job = EvalJob(str(bf16), "rte", str(tmp_path / "data"), trial="m", pooling=pooling,
                      export_dir=str(tmp_path / "out"))
        rows = run_job(job, ModelCache("cpu"))
        assert all(not r["error"] for r in rows), rows
        assert {r["pooling"] for r in rows} == {pooling} and {r["metric"] for r in rows} >= {"accuracy", "f1"}
        saved = json.loads(export.prediction_path(tmp_path / "out", "m", "main", "rte").read_text())
        assert saved["rte"]["pooling"] == pooling
