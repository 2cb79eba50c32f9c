"""Instruction data, the reply-only loss mask, guard rails, curricula and the word budget (no Ray)."""

import json
import re

import pytest
import torch
import torch.nn.functional as F

from classit.budget import BudgetError
from classit.config import ConfigError, InstructConfig, TemplateConfig, WordBudgetConfig, parse_config
from classit.data.corpus import prepare_corpus
from classit.data.curriculum import expand_curriculum, plan_curriculum, sample_mixture, split_records
from classit.data.instruct import IGNORE, encode_record, load_records, record_words, switchboard_pairs
from classit.models import build_model
from classit.tokenizer import load_tokenizer, reply_token_id
from classit.train.loop import MaskError, check_instruct_batch, collate_instruct, token_loss
from conftest import small_config

DIALOGUE = """A: hello there how are you
B: i am fine thanks
B: and you
A: pretty good
A: we went to the lake
B: oh nice

A: new dialogue starts here
B: so it does
"""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(prepare_corpus(small_config(tmp_path_factory.mktemp("it"))).tokenizer_path)


def test_switchboard_pairs_merge_speakers_and_slide(tmp_path):
    path = tmp_path / "switchboard.train"
    path.write_text(DIALOGUE)
    pairs = switchboard_pairs(path.read_text().splitlines())
    assert [(p["prompt"], p["reply"]) for p in pairs] == [
        ("hello there how are you", "i am fine thanks and you"),
        ("i am fine thanks and you", "pretty good we went to the lake"),
        ("pretty good we went to the lake", "oh nice"),
        ("new dialogue starts here", "so it does"),
    ]
    assert [record_words(p) for p in pairs] == [5 + 6, 6 + 7, 7 + 2, 4 + 3]


def test_encoding_masks_prompt_and_labels_reply_and_eos(tokenizer):
    record = {"prompt": "where does mia live ?", "reply": "mia lives near the park ."}
    enc = encode_record(tokenizer, record, max_length=64)
    ids, labels = enc["input_ids"], enc["labels"]
    boundary = ids.index(reply_token_id(tokenizer))
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert all(label == IGNORE for label in labels[:boundary + 1])
    assert labels[boundary + 1:] == ids[boundary + 1:]
    assert tokenizer.decode(ids[boundary + 1:-1]) == "mia lives near the park ."
    other = encode_record(tokenizer, {**record, "prompt": "where does leo live ?"}, max_length=64)
    assert other["labels"][-len(labels) + boundary + 1:] == labels[boundary + 1:]  # a prompt change moves no label
    assert other["input_ids"] != ids


def test_long_prompts_are_cut_from_the_left_and_counted(tokenizer):
    record = {"prompt": " ".join(["the dog runs ."] * 30), "reply": "yes ."}
    enc = encode_record(tokenizer, record, max_length=24)
    assert len(enc["input_ids"]) == 24 and enc["truncated"]
    assert enc["input_ids"][0] == tokenizer.bos_token_id
    assert [t for t in enc["labels"] if t != IGNORE] == tokenizer("yes .", add_special_tokens=False)["input_ids"] + \
        [tokenizer.eos_token_id]
    assert encode_record(tokenizer, {"prompt": "hi there", "reply": " ".join(["ok"] * 40)}, max_length=16) is None


def test_template_prefixes_are_part_of_the_sequence(tokenizer):
    template = TemplateConfig(prompt_prefix="question : ", reply_prefix="answer : ")
    enc = encode_record(tokenizer, {"prompt": "who ?", "reply": "me ."}, 64, template)
    assert tokenizer.decode(enc["input_ids"], skip_special_tokens=True).startswith("question : who ?")


def test_loop_loss_equals_cross_entropy_over_reply_and_eos_only(tokenizer):
    records = [{"prompt": "do the dogs run ?", "reply": "yes , the dogs run ."},
               {"prompt": "where does mia live ? tell me please", "reply": "mia lives near the park ."}]
    rows = [encode_record(tokenizer, r, 64) for r in records]
    batch = collate_instruct({k: [r[k] for r in rows] for k in ("input_ids", "labels", "num_words")},
                             tokenizer.pad_token_id, tokenizer.eos_token_id)
    model = build_model("tiny", tokenizer).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    total, count = token_loss(logits, batch["labels"])
    # Direct: predict each reply token and the EOS from the position before it.
    direct = []
    for i, row in enumerate(rows):
        start = row["input_ids"].index(reply_token_id(tokenizer)) + 1
        for pos in range(start, len(row["input_ids"])):
            direct.append(F.cross_entropy(logits[i, pos - 1], torch.tensor(row["input_ids"][pos])))
    assert count == len(direct)
    assert (total / count).item() == pytest.approx(torch.stack(direct).mean().item(), abs=1e-5)


def test_guard_rails_fire_on_bad_batches(tokenizer):
    rows = [encode_record(tokenizer, {"prompt": "do the dogs run ?", "reply": "yes ."}, 64)]
    good = collate_instruct({k: [r[k] for r in rows] for k in ("input_ids", "labels", "num_words")},
                            tokenizer.pad_token_id, tokenizer.eos_token_id)
    eos = tokenizer.eos_token_id
    with pytest.raises(MaskError, match="no labelled token"):
        check_instruct_batch({**good, "labels": torch.full_like(good["labels"], IGNORE)}, eos)
    with pytest.raises(MaskError, match="no masked token"):
        check_instruct_batch({**good, "labels": good["input_ids"].clone()}, eos)
    unlabelled_eos = good["labels"].clone()
    unlabelled_eos[0, -1] = IGNORE
    with pytest.raises(MaskError, match="EOS"):
        check_instruct_batch({**good, "labels": unlabelled_eos}, eos)
    no_eos = {**good, "input_ids": good["input_ids"].clone()}
    no_eos["input_ids"][0, -1] = 5
    with pytest.raises(MaskError, match="EOS"):
        check_instruct_batch(no_eos, eos)


def test_presets_expand_to_the_papers_curricula():
    def names(curriculum, **kw):
        return [s.datasets for s in expand_curriculum(InstructConfig(curriculum=curriculum, **kw))]

    assert names("pt") == []
    assert names("switch") == [["switch"]] and names("wiki") == [["wiki"]]
    assert names("switch_wiki") == [["switch"], ["wiki"]] and names("wiki_switch") == [["wiki"], ["switch"]]
    assert names("merged") == [["switch", "wiki"]]
    assert expand_curriculum(InstructConfig(curriculum="merged", mix_ratio=0.3))[0].weights == [0.3, 0.7]


def test_mixture_shares_follow_weights_and_natural_sizes():
    sizes = {"switch": 100, "wiki": 300}
    natural = sample_mixture(sizes, ["switch", "wiki"], None, seed=0)
    assert len(natural) == 400 and len(set(natural)) == 400
    mixed = sample_mixture(sizes, ["switch", "wiki"], [0.75, 0.25], seed=0)
    assert len(mixed) == 400 and sum(d == "switch" for d, _ in mixed) == 300  # switch repeated to its share
    assert {i for d, i in mixed if d == "switch"} == set(range(100))


def test_plan_counts_words_and_over_budget_fails_with_counts():
    icfg = InstructConfig(curriculum="switch_wiki", train={"epochs": 2, "batch_size": 4})
    records = {name: load_records(name, icfg.datasets[name]) for name in ("switch", "wiki")}
    train, _ = split_records(records, icfg)
    plan = plan_curriculum(icfg, train, world_size=2, base_input_words=1000, base_exposure_words=5000,
                           budget=WordBudgetConfig())
    switch_words = sum(map(record_words, train["switch"]))
    assert plan.stages[0].input_words == switch_words
    assert plan.stages[0].steps == len(train["switch"]) // 8 * 2
    assert plan.input_words == 1000 + switch_words + sum(map(record_words, train["wiki"]))
    tight = WordBudgetConfig(max_exposure_words=6000)
    with pytest.raises(BudgetError) as err:
        plan_curriculum(icfg, train, 2, 1000, 5000, tight)
    message = str(err.value)
    assert "\n" not in message and "exposure" in message and f"{plan.exposure_words:,}" in message
    allowed = tight.model_copy(update={"allow_over_budget": True})
    assert plan_curriculum(icfg, train, 2, 1000, 5000, allowed).exposure_words == plan.exposure_words


@pytest.mark.parametrize("instruct, message", [
    ({"curriculum": "merged", "mix_ratio": 1.2}, "instruct.mix_ratio"),
    ({"curriculum": "merged", "mix_ratio": -0.1}, "instruct.mix_ratio"),
    ({"curriculum": "switch", "mix_ratio": 0.5}, "mix_ratio: only applies to the merged curriculum"),
    ({"curriculum": [{"datasets": ["switch", "lectures"]}]}, "unknown dataset 'lectures'"),
    ({"curriculum": [{"datasets": ["switch", "wiki"], "weights": [0.5, 0.4]}]}, "sum to 1"),
    ({"curriculum": "lectures"}, "instruct.curriculum"),
])
def test_bad_instruct_config_is_one_line(instruct, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"instruct": instruct})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_records_missing_a_reply_are_named(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "a ?", "reply": "b ."}) + "\n" + json.dumps({"prompt": "c ?"}) + "\n")
    cfg = parse_config({"instruct": {"datasets": {"qa": {"path": str(path)}}, "curriculum": [{"datasets": ["qa"]}]}})
    with pytest.raises(ConfigError, match=r"qa.jsonl:2: instruct.datasets.qa: record has no 'reply'"):
        load_records("qa", cfg.instruct.datasets["qa"])


@pytest.mark.parametrize("content, message", [
    ('[{"prompt": "a ?", "reply": "b ."},\n {"prompt": "c ?" "reply": "d ."}]',
     r"^{path}: not valid JSON \(JSONDecodeError: Expecting ',' delimiter: line 2 column"),
    ('{"prompt": "a ?", "reply": "b ."}', r"^{path}: expected a JSON list of records$"),
])
def test_a_malformed_json_file_of_records_is_named_in_one_line(tmp_path, content, message):
    path = tmp_path / "qa.json"
    path.write_text(content)
    cfg = parse_config({"instruct": {"datasets": {"qa": {"path": str(path)}}, "curriculum": [{"datasets": ["qa"]}]}})
    with pytest.raises(ConfigError, match=message.format(path=re.escape(str(path)))) as err:
        load_records("qa", cfg.instruct.datasets["qa"])
    assert "\n" not in str(err.value)


def test_hf_dataset_takes_a_saved_dataset_folder_as_the_corpus_and_generation_do(tmp_path):
    import datasets

    rows = [{"prompt": f"what is {i} ?", "reply": f"it is {i} .", "source": "wiki"} for i in range(5)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "qa"))
    cfg = parse_config({"instruct": {"datasets": {"qa": {"hf_dataset": str(tmp_path / "qa")}},
                                     "curriculum": [{"datasets": ["qa"]}]}})
    assert load_records("qa", cfg.instruct.datasets["qa"]) == rows


def test_a_base_whose_weights_do_not_load_is_named_in_the_error(tmp_path, tokenizer):
    from classit.models import build_model
    from classit.train.checkpoints import save_tokenizer_and_model
    from classit.train.instruct import _model_with

    save_tokenizer_and_model(build_model("tiny", tokenizer, seed=0), tokenizer, tmp_path)
    assert _model_with(tmp_path, None).config.hidden_size == 128
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short, as by a full disk
    with pytest.raises(ValueError, match=f"^{tmp_path}: the checkpoint does not load"):
        _model_with(tmp_path, None)
