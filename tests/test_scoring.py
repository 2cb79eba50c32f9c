"""The scoring engine against a deliberately simple reference, on real BLiMP data."""

import shutil
from functools import partial

import numpy as np
import pytest

from classit.config import DistributedConfig, TrainConfig
from classit.data.corpus import prepare_corpus
from classit.evaluate.scoring import choose, encode_candidate, load_model, reference_score
from classit.evaluate.tasks.blimp import aggregate, pair_scores, read_pairs
from classit.models import build_model
from classit.tokenizer import load_tokenizer
from classit.train.loop import Stage, collate_blocks, init_single_process, train_stage
from conftest import SHARED_DATA, small_config

BLIMP = SHARED_DATA / "blimp"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model trained for a few dozen steps, saved as an HF checkpoint."""
    init_single_process()
    tmp = tmp_path_factory.mktemp("scoring")
    corpus = prepare_corpus(small_config(tmp))
    tokenizer = load_tokenizer(corpus.tokenizer_path)
    tcfg = TrainConfig(learning_rate=2e-3, batch_size=8, max_steps=40, warmup_steps=5, eval_every_steps=1000,
                       checkpoints={"schedule": "final"})
    stage = Stage("pretrain", corpus.load_blocks("train"), corpus.load_blocks("validation").select(range(8)),
                  tcfg, partial(collate_blocks, pad_id=tokenizer.pad_token_id))
    saved = tmp / "final"

    def keep(metrics, checkpoint_dir=None, name=None):
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, saved, dirs_exist_ok=True)

    train_stage(build_model("tiny", tokenizer), tokenizer, stage, DistributedConfig(num_workers=1), keep,
                log=lambda _: None)
    return saved


def test_completion_tokens_follow_the_pipelines_offsets(checkpoint):
    _, tokenizer = load_model(checkpoint)
    whole = encode_candidate(tokenizer, "the dog runs .")
    assert whole.ids[0] == tokenizer.bos_token_id and not whole.scored[0] and all(whole.scored[1:])
    tail = encode_candidate(tokenizer, "the dog runs .", completion=" runs .")
    text_tokens = [tokenizer.decode([i]) for i, s in zip(tail.ids, tail.scored) if s]
    assert "".join(text_tokens) == " runs ."


def test_ties_go_to_the_first_candidate():
    assert choose(np.array([[-3.0, -3.0], [-4.0, -2.0], [-1.0, -2.0]])).tolist() == [0, 1, 0]


@pytest.mark.skipif(not BLIMP.is_dir(), reason="needs ../shared/data/blimp")
def test_engine_matches_simple_reference_on_blimp(checkpoint):
    model, tokenizer = load_model(checkpoint, device="cpu")
    pairs = read_pairs(BLIMP, fast_per_paradigm=4, seed=1)
    assert len(pairs) == 67 * 4 and len({p["UID"] for p in pairs}) == 67
    fast = pair_scores(model, tokenizer, pairs, max_tokens=2048)
    slow = np.array([[reference_score(model, encode_candidate(tokenizer, p[k])) for k in ("good", "bad")]
                     for p in pairs])
    assert np.abs(fast - slow).max() < 1e-4
    assert aggregate(pairs, fast) == aggregate(pairs, slow)
    result = aggregate(pairs, fast)
    assert set(result["field"]) <= {"morphology", "syntax", "semantics", "syntax/semantics"}
    assert 0.0 <= result["average"]["accuracy"] <= 100.0


def test_supplement_layout_takes_the_paradigm_from_the_file_name(tmp_path):
    (tmp_path / "hypernym.jsonl").write_text('{"sentence_good": "a dog is an animal .", '
                                             '"sentence_bad": "an animal is a dog ."}\n')
    pairs = read_pairs(tmp_path)
    assert pairs[0]["UID"] == "hypernym" and pairs[0]["field"] == "supplement"
    (tmp_path / "broken.jsonl").write_text('{"sentence": "x"}\n')
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        read_pairs(tmp_path)
