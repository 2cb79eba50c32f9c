"""The embedded demo's teacher (`teacher: synthetic`): nothing can be downloaded here, so classit
trains a tiny LLaMA to answer the configured prompt on the synthetic corpus's articles with JSON
question/answer pairs about the characters they name. Plain torch, a minute on two cores; cached."""

from __future__ import annotations

import json
import os
import random
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from classit.artefacts import artefact_dir, commit_folder, is_complete
from classit.config import GenerateConfig
from classit.data.synthetic import QA_TEMPLATES, make_world
from classit.generate.articles import load_articles
from classit.generate.qa import fill_template

TEACHER_VERSION = 1  # bump when the examples or the training below change
STEPS, BATCH, LEARNING_RATE = 250, 16, 3e-3


def teacher_examples(gcfg: GenerateConfig, articles: list[dict], seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, JSON reply) per article: questions about the characters the article names first."""
    rng = random.Random(seed)
    world = make_world(gcfg.synthetic.seed)
    by_name = {c.name: c for c in world}
    examples = []
    for article in articles:
        named = list(dict.fromkeys(w for w in article["text"].split() if w in by_name)) or [rng.choice(world).name]
        templates = rng.sample(QA_TEMPLATES, k=min(gcfg.pairs_per_article, len(QA_TEMPLATES)))
        pairs = []
        for k in range(gcfg.pairs_per_article):
            question, answer = templates[k % len(templates)]
            character = by_name[named[k % len(named)]]
            pairs.append({"question": question(character), "answer": answer(character)})
        examples.append((fill_template(gcfg, article), json.dumps({"pairs": pairs})))
    return examples


def train_teacher(gcfg: GenerateConfig, articles: list[dict], folder: Path) -> None:
    from classit.models import build_model
    from classit.tokenizer import save_tokenizer, train_tokenizer

    examples = teacher_examples(gcfg, articles)
    tokenizer = train_tokenizer([p + " " + r for p, r in examples], vocab_size=1024)
    model = build_model("tiny", tokenizer, seed=0)
    rows = []
    for prompt, reply in examples:
        head = tokenizer(prompt)["input_ids"]
        tail = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((head + tail, [-100] * len(head) + tail))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    rng = random.Random(0)
    model.train()
    for _ in range(STEPS):
        batch = rng.sample(rows, k=min(BATCH, len(rows)))
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        loss = model(input_ids=ids, attention_mask=ids != tokenizer.pad_token_id, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with deepspeed_named_cpu():
        model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)


@contextmanager
def deepspeed_named_cpu():
    """`save_pretrained` imports DeepSpeed (through accelerate) where it is installed, and DeepSpeed
    logs a warning line as it falls back to its CPU accelerator on a machine without a GPU. Named
    for it, the accelerator it would pick anyway, for the import only: Ray's processes started by
    this one later inherit its environment."""
    if "deepspeed" in sys.modules or "DS_ACCELERATOR" in os.environ or torch.cuda.device_count() > 0:
        yield
        return
    os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        yield
    finally:
        del os.environ["DS_ACCELERATOR"]


def synthetic_teacher(gcfg: GenerateConfig, cache_dir: Path) -> Path:
    """The trained demo teacher's folder, trained once per (articles, prompt, pairs) and cached."""
    articles = load_articles(gcfg, cache_dir)
    made_by = {"synthetic": gcfg.synthetic.model_dump(), "max_articles": gcfg.max_articles,
               "max_article_words": gcfg.max_article_words, "template": gcfg.template,
               "pairs_per_article": gcfg.pairs_per_article, "version": TEACHER_VERSION, "steps": STEPS,
               "batch": BATCH, "learning_rate": LEARNING_RATE}
    folder = artefact_dir(cache_dir, "teacher-synthetic", made_by)
    if not is_complete(folder):
        commit_folder(folder, lambda tmp: train_teacher(gcfg, articles, tmp), made_by)
    return folder
