"""(Super)GLUE fine-tuning: BoolQ, MultiRC, RTE, WSC, MRPC, QQP, MNLI, as the official pipeline runs them.

Data: `glue_filtered/<task>.train.jsonl` and `<task>.valid.jsonl` (the official layout); each
line holds the task's text fields and an integer (or boolean) `label`, which is the class index
as is: label k is logit k, and for F1 the positive class is 1 (sklearn's default, as the pipeline).

Model and training follow the pipeline's `finetune` package (`finetune/run.py`, `trainer.py`,
`classifier_model.py`), in fp32 whatever dtype the checkpoint was saved in:

- inputs are the tokenizer's pair encoding of the task's two texts (templated for MultiRC and
  WSC), truncated to 512 tokens;
- the base transformer (what `AutoModel` loads) feeds one position's hidden state to a head
  LayerNorm -> Linear -> GELU -> LayerNorm -> Dropout(0.1) -> Linear (layer norms without
  affine parameters). Which position is the `pooling` setting:
  - `final` (classit's default): the last real token, the one position of a causal LM that sees
    the whole input (left padding, so it is the last position of every row);
  - `official`: right padding and the first position (`encoding[:, 0]`), as the official
    `eval_finetuning.sh` runs (it passes neither `--padding_side` nor `--take_final`, so the
    defaults `right` and first position hold). With a tokenizer that prepends BOS, as BabyLM
    tokenizers do, that position sees only BOS: the head learns the label prior. Use it for
    numbers comparable with the leaderboard's;
- AdamW (lr 3e-5, betas 0.9/0.999, eps 1e-8, weight decay 0.01 on every parameter), cosine
  schedule with 6% linear warm-up decaying to 0.1 x the peak, batch 32 (16 for BoolQ and
  MultiRC), 10 epochs (30 for WSC), shuffled batches with the last partial one dropped, drawn from
  the global generator as the pipeline's DataLoader draws them, seed 42 before the head is made;
- after every epoch the model is scored on the validation file and the best epoch is kept (by
  accuracy, by F1 for MRPC and QQP); its validation scores are the results (accuracy, F1 and MCC;
  accuracy only for MNLI), and its predictions are what the leaderboard export writes.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from classit.artefacts import parse_json
from classit.evaluate.catalog import FINETUNE_METRICS, FINETUNE_SELECT_BY
from classit.evaluate.progress import Progress
from classit.evaluate.tasks.inputs import glue_files, missing_input
from classit.evaluate.tasks.zero_shot import need_fields


@dataclass(frozen=True)
class FinetuneTask:
    first: tuple[str, ...]  # fields of the first text, joined by spaces or put into `template`
    second: tuple[str, ...]
    template: str | None = None
    num_labels: int = 2
    batch_size: int = 32
    epochs: int = 10


TASKS = {
    "boolq": FinetuneTask(("question",), ("passage",), batch_size=16),
    "multirc": FinetuneTask(("question", "answer"), ("paragraph",), "Question: {} Answer: {}", batch_size=16),
    "rte": FinetuneTask(("sentence1",), ("sentence2",)),
    "wsc": FinetuneTask(("span2_text", "span1_text"), ("text",), 'Does "{}" refer to "{}" in this passage?',
                        epochs=30),
    "mrpc": FinetuneTask(("sentence1",), ("sentence2",)),
    "qqp": FinetuneTask(("question1",), ("question2",)),
    "mnli": FinetuneTask(("premise",), ("hypothesis",), num_labels=3),
}


@dataclass(frozen=True)
class FinetuneSettings:
    """The pipeline's defaults; per-task batch size and epochs come from `TASKS`."""

    learning_rate: float = 3e-5
    weight_decay: float = 0.01
    warmup_proportion: float = 0.06
    min_factor: float = 0.1
    dropout: float = 0.1
    max_length: int = 512
    eval_batch_size: int = 64
    seed: int = 42


def read_examples(path: Path, task: str) -> tuple[list[tuple[str, str]], list[int]]:
    spec = TASKS[task]
    texts, labels = [], []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        raw = parse_json(line, path, line_no)
        need_fields(raw, (*spec.first, *spec.second, "label"), path, line_no)
        label = raw["label"]
        if isinstance(label, bool):
            label = int(label)
        if not isinstance(label, int) or not 0 <= label < spec.num_labels:
            raise ValueError(f"{path}:{line_no}: label {raw['label']!r} is not a class index below {spec.num_labels}")
        first = [str(raw[k]) for k in spec.first]
        texts.append((spec.template.format(*first) if spec.template else " ".join(first),
                      " ".join(str(raw[k]) for k in spec.second)))
        labels.append(label)
    return texts, labels


def task_files(task: str, data_dir: str | Path) -> tuple[Path, Path]:
    if missing := missing_input(task, data_dir):
        raise FileNotFoundError(missing)
    return glue_files(task, data_dir)


POOLINGS = ("final", "official")
PADDING_SIDE = {"final": "left", "official": "right"}  # official: the pipeline's default --padding_side


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The hidden state the head reads per row: the last real token (`final`, either padding
    side), or the first position (`official`, as the pipeline's `encoding[:, 0]`)."""
    if pooling == "official":
        return hidden[:, 0]
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)
    return hidden[torch.arange(len(hidden), device=hidden.device), last]


class Classifier(nn.Module):
    """A causal LM's transformer with a classification head on one position (see `pool`)."""

    def __init__(self, transformer: nn.Module, num_labels: int, dropout: float, pooling: str = "final"):
        super().__init__()
        hidden = transformer.config.hidden_size
        self.transformer, self.pooling = transformer, pooling
        self.head = nn.Sequential(
            nn.LayerNorm(hidden, 1e-5, elementwise_affine=False), nn.Linear(hidden, hidden), nn.GELU(),
            nn.LayerNorm(hidden, 1e-5, elementwise_affine=False), nn.Dropout(dropout), nn.Linear(hidden, num_labels))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(pool(hidden, attention_mask, self.pooling))


def classification_metrics(labels: list[int], predictions: list[int], names: tuple[str, ...]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    compute = {"accuracy": accuracy_score, "f1": f1_score, "mcc": matthews_corrcoef}
    return {name: float(compute[name](labels, predictions)) for name in names}


def cosine_factor(step: int, warmup: int, total: int, min_factor: float) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(min_factor, min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _loader(tokenizer, texts, max_length: int, batch_size: int, shuffle: bool = False):
    """(indices, input ids, attention mask) batches, drawn as the pipeline's DataLoader draws them:
    shuffled with the last partial batch dropped (training) on the global torch generator, whose
    draws interleave with dropout's, so that a seed gives the pipeline's batches, epoch by epoch."""
    from torch.utils.data import DataLoader

    def collate(index: list[int]):
        firsts, seconds = zip(*(texts[i] for i in index))
        enc = tokenizer(list(firsts), list(seconds), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        return index, enc["input_ids"], enc["attention_mask"]

    return DataLoader(range(len(texts)), batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, collate_fn=collate)


@torch.no_grad()
def predict(model: Classifier, tokenizer, texts, settings: FinetuneSettings) -> list[int]:
    model.eval()
    device = next(model.parameters()).device
    preds: list[int] = []
    for _, ids, mask in _loader(tokenizer, texts, settings.max_length, settings.eval_batch_size):
        preds += model(ids.to(device), mask.to(device)).argmax(-1).tolist()
    return preds


def load_for_finetuning(checkpoint: str | Path, pooling: str):
    """Tokenizer (padded on the pooling's side) and the LM's transformer in fp32, as the pipeline
    (transformers 4.51 loads fp32 by default) fine-tunes whatever dtype the checkpoint was saved in."""
    from classit.models import load_checkpoint
    from classit.tokenizer import load_tokenizer

    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    tokenizer = load_tokenizer(checkpoint, padding_side=PADDING_SIDE[pooling])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if pooling == "official" and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        warnings.warn(f"{checkpoint}: pooling official with a tokenizer that prepends BOS: the first position, "
                      f"which the head reads, sees no input", stacklevel=2)
    # The LM's transformer without its LM head: the weights the pipeline's AutoModel loads.
    return tokenizer, load_checkpoint(checkpoint).base_model.float()  # bf16 -> fp32 is exact


def finetune(checkpoint: str | Path, task: str, data_dir: str | Path,
             settings: FinetuneSettings = FinetuneSettings(), device: str | None = None,
             pooling: str = "final", progress: Progress | None = None) -> tuple[dict[str, float], list[int], int]:
    """Fine-tune on the task's train file; the best epoch's validation metrics and predictions, and its epoch."""
    spec = TASKS[task]
    train_file, valid_file = task_files(task, data_dir)
    train_texts, train_labels = read_examples(train_file, task)
    valid_texts, valid_labels = read_examples(valid_file, task)
    steps_per_epoch = len(train_texts) // spec.batch_size  # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise ValueError(f"{train_file}: {len(train_texts)} examples, fewer than one batch of {spec.batch_size}")

    torch.manual_seed(settings.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, transformer = load_for_finetuning(checkpoint, pooling)
    model = Classifier(transformer, spec.num_labels, settings.dropout, pooling).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total = spec.epochs * steps_per_epoch
    warmup = int(settings.warmup_proportion * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, warmup, total, settings.min_factor))
    labels = torch.tensor(train_labels)
    batches = _loader(tokenizer, train_texts, settings.max_length, spec.batch_size, shuffle=True)

    progress = progress or Progress()
    progress.start(total, "steps")
    best, best_state, best_epoch = None, None, 0
    for epoch in range(1, spec.epochs + 1):
        model.train()
        for index, ids, mask in batches:
            loss = F.cross_entropy(model(ids.to(device), mask.to(device)), labels[index].to(device))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            progress.advance()
        scores = classification_metrics(valid_labels, predict(model, tokenizer, valid_texts, settings),
                                        FINETUNE_METRICS[task])
        if best is None or scores[FINETUNE_SELECT_BY[task]] > best[FINETUNE_SELECT_BY[task]]:
            best, best_state, best_epoch = scores, copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    return best, predict(model, tokenizer, valid_texts, settings), best_epoch
