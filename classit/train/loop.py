"""The per-worker training loop: a DeepSpeed engine over token blocks, nothing Ray-specific.

`train_stage` runs one stage (pretraining, or later one curriculum stage) in any
torch.distributed world, gloo on CPU or NCCL on GPU. What happens to metrics and checkpoints
is up to the `Reporter` it is given: Ray Train's in `runner.py`, a no-op in benchmarks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from classit.config import DistributedConfig, LoadError, TrainConfig
from classit.data.instruct import IGNORE
from classit.train.checkpoints import (DEEPSPEED_DIR, DEEPSPEED_TAG, TRAINER_STATE, TrainerState, checkpoint_marks,
                                       checkpoint_scratch, load_trainer_state, save_checkpoint, scaled_marks)
from classit.train.distributed import all_sum, device, world
from classit.units import one_line


class NonFiniteLossError(RuntimeError):
    pass


def lr_factor(step: int, warmup: int, total: int, schedule: str, restarts: int = 1) -> float:
    """Multiplier of the peak learning rate after `step` optimizer steps."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if progress >= 1.0:
        return 0.0
    # Cosine with hard restarts, as transformers' get_cosine_with_hard_restarts_schedule_with_warmup.
    return 0.5 * (1.0 + math.cos(math.pi * ((restarts * progress) % 1.0)))


def deepspeed_config(tcfg: TrainConfig, dcfg: DistributedConfig, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": tcfg.batch_size,
        "gradient_accumulation_steps": tcfg.gradient_accumulation_steps,
        "gradient_clipping": tcfg.max_grad_norm,
        "zero_optimization": {"stage": dcfg.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,  # we log ourselves
        "wall_clock_breakdown": False,
    }


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over labelled positions (labels -100 are ignored), and their count."""
    # Shift the labels rather than the logits: no copy of the (batch x length x vocab) logits.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return total, (targets != IGNORE).sum()


def collate_blocks(rows: dict[str, list], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed pretraining blocks (a batch of dataset rows, column-wise): every non-pad token is a target."""
    input_ids = torch.as_tensor(rows["input_ids"], dtype=torch.long)
    mask = input_ids != pad_id
    return {"input_ids": input_ids, "attention_mask": mask.long(), "labels": input_ids.masked_fill(~mask, IGNORE),
            "num_words": torch.as_tensor(rows["num_words"], dtype=torch.long)}


class MaskError(ValueError):
    """A batch whose loss mask is wrong: it would silently train on the wrong tokens."""


def check_instruct_batch(batch: dict[str, torch.Tensor], eos_id: int) -> None:
    """Guard rails: fail loudly on a batch that would train on the wrong tokens."""
    labels, ids = batch["labels"], batch["input_ids"]
    if (labels == IGNORE).all():
        raise MaskError("instruction batch has no labelled token: every label is -100")
    if not (labels == IGNORE).any():
        raise MaskError("instruction batch has no masked token: the prompt would be trained on")
    last = batch["attention_mask"].sum(dim=1) - 1  # right padding: the last real token
    rows = torch.arange(len(ids))
    if not ((ids[rows, last] == eos_id) & (labels[rows, last] == eos_id)).all():
        raise MaskError("a reply's EOS is missing or not in the loss")


def collate_instruct(rows: dict[str, list], pad_id: int, eos_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of encoded records (column-wise) to its longest, then check the mask."""
    width = max(map(len, rows["input_ids"]))
    n = len(rows["input_ids"])
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    for i, (ids, labs) in enumerate(zip(rows["input_ids"], rows["labels"])):
        input_ids[i, :len(ids)] = torch.as_tensor(ids)
        labels[i, :len(labs)] = torch.as_tensor(labs)
    lengths = torch.as_tensor([len(ids) for ids in rows["input_ids"]])
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "num_words": torch.as_tensor(rows["num_words"], dtype=torch.long)}
    check_instruct_batch(batch, eos_id)
    return batch


class Reporter(Protocol):
    def __call__(self, metrics: dict, checkpoint_dir: str | None = None, name: str | None = None) -> None: ...


@dataclass
class Stage:
    """One stage of training: its data, its optimisation, how to batch rows, and its word counts."""

    name: str
    train: object  # a map-style dataset of rows
    validation: dict[str, object]  # named validation sets ("" for one unnamed set); val_loss is on their union
    config: TrainConfig
    collate: Callable[[dict[str, list]], dict[str, torch.Tensor]]  # column-wise rows -> tensors
    index: int = 0
    prior_input_words: int = 0
    prior_exposure_words: int = 0
    input_words: int = 0
    extra_metrics: dict = field(default_factory=dict)

    def fresh_state(self) -> TrainerState:
        return TrainerState(stage=self.name, stage_index=self.index, prior_input_words=self.prior_input_words,
                            prior_exposure_words=self.prior_exposure_words, input_words=self.input_words)


def steps_per_epoch(n_rows: int, tcfg: TrainConfig, world_size: int) -> int:
    return n_rows // (tcfg.batch_size * world_size) // tcfg.gradient_accumulation_steps


def planned_steps(n_rows: int, tcfg: TrainConfig, world_size: int) -> int:
    total = steps_per_epoch(n_rows, tcfg, world_size) * tcfg.epochs
    return min(total, tcfg.max_steps) if tcfg.max_steps else total


def _batches(dataset, epoch: int, seed: int, skip: int, tcfg: TrainConfig, collate):
    """This rank's micro-batches for an epoch: a seeded shuffle, sharded, whole optimizer steps only.

    Rows that do not fill a whole step (batch x workers x accumulation) are left for later epochs'
    shuffles: a leftover micro-batch would otherwise add its gradient to the next epoch's first step.
    """
    rank, world_size = world()
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_rank = steps_per_epoch(len(dataset), tcfg, world_size) * tcfg.gradient_accumulation_steps * tcfg.batch_size
    mine = order[rank * per_rank:(rank + 1) * per_rank]
    for start in range(skip * tcfg.batch_size, per_rank, tcfg.batch_size):
        yield collate(dataset[mine[start:start + tcfg.batch_size]])


@torch.no_grad()  # not inference_mode: ZeRO-3 keeps parameters it gathers here, and training needs them
def validation_losses(model, sets: dict[str, object], collate, batch_size: int) -> dict[str, float]:
    """Mean token loss over the union of the validation sets (`val_loss`), and over each named one
    (`val_loss:<name>`; an unnamed set, "", adds no column). Each set is sharded across ranks
    without overlap; sums and counts are reduced exactly across workers."""
    rank, world_size = world()
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    sums = []
    for dataset in sets.values():
        total, count = 0.0, 0
        # Every rank runs as many forward passes (ZeRO-3 gathers parameters in each, collectively);
        # a rank past the end of the set runs one on its first row and counts nothing.
        for k in range(-(-len(dataset) // (world_size * batch_size))):
            start = (k * world_size + rank) * batch_size
            batch = collate(dataset[start:start + batch_size] if start < len(dataset) else dataset[:1])
            logits = model(input_ids=batch["input_ids"].to(dev), use_cache=False).logits  # right-padded: no mask
            loss_sum, n = token_loss(logits, batch["labels"].to(dev))
            if start < len(dataset):
                total, count = total + loss_sum.item(), count + int(n)
        sums += [total, count]
    model.train(was_training)
    sums = all_sum(sums)
    losses = {"val_loss": sum(sums[0::2]) / max(sum(sums[1::2]), 1)}
    for name, total, count in zip(sets, sums[0::2], sums[1::2]):
        if name:
            losses[f"val_loss:{name}"] = total / max(count, 1)
    return losses


def evenly_spaced(dataset, rows: int | None):
    """At most `rows` rows, evenly spaced: a sample of every part of a set stored source by source."""
    if rows is None or rows >= len(dataset):
        return dataset
    return dataset.select(np.linspace(0, len(dataset) - 1, rows).round().astype(int).tolist())


def import_deepspeed():
    """DeepSpeed, without two costs that training never uses:
    - its autotuner's `import mlflow` (whenever mlflow is installed, ~1.5 s of CPU per worker start);
    - its CPU shared-memory all-reduce op, which serves DeepSpeed inference alone yet is built when an
      engine starts: a C++ compile on a machine's first run (~35 s), then ~0.7 s per worker to probe
      and load. Training's all-reduce is the process group's (gloo or NCCL) either way."""
    import importlib
    import sys

    if "deepspeed" not in sys.modules and "mlflow" not in sys.modules:
        sys.modules["mlflow"] = None  # an import of it fails fast; the autotuner then does without
        try:
            importlib.import_module("deepspeed")
        finally:
            del sys.modules["mlflow"]
    import deepspeed

    # By module name: the attribute `deepspeed.comm.torch` is the torch package, which comm star-exports.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # as where it cannot build
    return deepspeed


def build_engine(model, stage: Stage, dcfg: DistributedConfig, total_steps: int):
    deepspeed = import_deepspeed()

    tcfg = stage.config
    bf16 = dcfg.precision == "bf16" or (dcfg.precision == "auto" and torch.cuda.is_available())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # norms: never decayed
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tcfg.learning_rate, betas=(tcfg.adam_beta1, tcfg.adam_beta2), fused=True)

    def scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, tcfg.warmup_steps, total_steps, tcfg.schedule, tcfg.restarts))

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(tcfg, effective(dcfg), bf16))
    if world()[1] == 1:
        engine.enable_backward_allreduce = False  # nothing to reduce across a world of one
    if dcfg.compile:
        engine.compile()  # in place: state-dict keys and checkpoints stay those of the plain model
    return engine


def effective(dcfg: DistributedConfig) -> DistributedConfig:
    """ZeRO partitions state across ranks: with one rank it would only copy, so it is switched off."""
    return dcfg if world()[1] > 1 else dcfg.model_copy(update={"zero_stage": 0})


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The model's whole weights on every rank, on CPU (gathered from the partitions under ZeRO-3)."""
    deepspeed = import_deepspeed()

    module = engine.module
    zero3 = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None, enabled=zero3):
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@dataclass
class CheckpointSchedule:
    """Where a stage saves besides its end: each BabyLM word mark (scaled by `word_scale`) that its
    total exposure crosses, under the `babylm` schedule; none under `end`."""

    marks: list[int]  # in total exposure words, ascending
    names: dict[int, int]  # mark -> the unscaled BabyLM mark it stands for

    @classmethod
    def of(cls, stage: Stage) -> CheckpointSchedule:
        ccfg = stage.config.checkpoints
        marks = checkpoint_marks(stage.prior_exposure_words, ccfg.word_scale) if ccfg.schedule == "babylm" else []
        return cls(marks, scaled_marks(ccfg.word_scale))

    def crossed(self, state: TrainerState) -> bool:
        return state.next_mark < len(self.marks) and state.total_exposure_words >= self.marks[state.next_mark]

    def advance(self, state: TrainerState, crossed: bool) -> None:
        """Past every mark crossed now (one step can cross several); the checkpoint names the newest."""
        while self.crossed(state):
            state.next_mark += 1
        state.babylm_mark = self.names[self.marks[state.next_mark - 1]] if crossed else 0


def stage_steps(stage: Stage, world_size: int) -> int:
    tcfg = stage.config
    total_steps = planned_steps(len(stage.train), tcfg, world_size)
    if total_steps == 0:
        raise ValueError(f"stage {stage.name}: {len(stage.train)} rows are too few for one step "
                         f"of {tcfg.batch_size} x {world_size} workers x {tcfg.gradient_accumulation_steps} "
                         "accumulation")
    return total_steps


def check_finite(loss: float, stage: str, step: int) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"stage {stage}: non-finite loss ({loss}) at step {step}; "
                                 f"lower the learning rate or check the data")


def checkpoint_name(stage: Stage, state: TrainerState) -> str:
    # Named by total exposure, the BabyLM checkpoint's word count.
    return f"{stage.name}-step{state.step:07d}-words{state.total_exposure_words:012d}"


def start_engine(model, stage: Stage, dcfg: DistributedConfig, total_steps: int, resume_from: Path | None,
                 log: Callable[[str], None]):
    """The stage's state and DeepSpeed engine: fresh, or resumed from a checkpoint folder of this
    stage (with its optimizer state where the folder keeps it, weights only otherwise)."""
    state = stage.fresh_state()
    with_optimizer = resume_from is not None and (resume_from / DEEPSPEED_DIR).exists()
    if resume_from is not None and (resume_from / TRAINER_STATE).exists():
        state = load_trainer_state(resume_from)
        if not with_optimizer:  # weights only: optimizer restarts
            from classit.models import load_checkpoint

            model.load_state_dict(load_checkpoint(resume_from).state_dict())
    engine = build_engine(model.to(device()), stage, dcfg, total_steps)
    if with_optimizer:
        saved = resume_from / DEEPSPEED_DIR
        if not (saved / DEEPSPEED_TAG).is_dir():  # DeepSpeed's own check fails with an empty AssertionError
            raise LoadError(f"{saved}: no DeepSpeed state ({DEEPSPEED_TAG}/) to resume from")
        try:
            engine.load_checkpoint(str(saved), tag=DEEPSPEED_TAG)
        except Exception as err:  # torch's reader names no file ("failed finding central directory")
            raise LoadError(f"{saved}: the optimizer state does not load ({one_line(err)})") from err
        if world()[0] == 0:
            log(f"[{stage.name}] resumed at step {state.step} ({state.words_seen:,} words seen)")
    return state, engine


def optimizer_steps(engine, batches, accumulation: int):
    """Forward and backward over each micro-batch; per optimizer step, its mean token loss and the
    words and input tokens it saw, summed over every rank."""
    dev = engine.device
    acc, micro = [0.0, 0.0, 0.0, 0.0], 0  # loss sum, target tokens, words, input tokens
    for batch in batches:
        # Batches are right-padded, so causal attention never lets a real token see padding:
        # no mask is needed, and without one attention takes the fast is_causal kernel.
        logits = engine(input_ids=batch["input_ids"].to(dev), use_cache=False).logits
        loss_sum, n = token_loss(logits, batch["labels"].to(dev))
        engine.backward(loss_sum / n.clamp(min=1))
        engine.step()
        step_loss, step_targets = torch.stack([loss_sum.detach().double(), n.double()]).tolist()
        acc = [acc[0] + step_loss, acc[1] + step_targets, acc[2] + int(batch["num_words"].sum()),
               acc[3] + int(batch["attention_mask"].sum())]
        micro += 1
        if micro % accumulation == 0:
            loss_total, targets, words, tokens = all_sum(acc)
            acc = [0.0, 0.0, 0.0, 0.0]
            yield loss_total / max(targets, 1), int(words), int(tokens)


class Throughput:
    """Tokens per second of training alone: the window is reset after evaluating and checkpointing."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.tokens, self.start = 0, time.perf_counter()

    def rate(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


def progress_line(stage: str, total_steps: int, metrics: dict) -> str:
    val = f" val_loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
    return (f"[{stage}] step {metrics['step']}/{total_steps} loss {metrics['loss']:.4f}{val} "
            f"lr {metrics['lr']:.2e} {metrics['tokens_per_s']:,.0f} tok/s {metrics['words_seen']:,} words")


@dataclass
class StageRun:
    """What a stage's steps share: its engine and state, and how they become metrics and checkpoints."""

    stage: Stage
    engine: object
    state: TrainerState
    tokenizer: object
    report: Reporter
    total_steps: int
    validation: dict

    def evaluate(self) -> dict[str, float]:
        tcfg = self.stage.config
        return validation_losses(self.engine.module, self.validation, self.stage.collate, tcfg.batch_size)

    def counts(self) -> dict:
        stage, state = self.stage, self.state
        return {"stage": stage.name, "stage_index": stage.index, "total_steps": self.total_steps,
                **stage.extra_metrics, "step": state.step, "words_seen": state.words_seen,
                "tokens_seen": state.tokens_seen, "input_words": state.total_input_words,
                "exposure_words": state.total_exposure_words}

    def metrics(self, loss: float, epoch: int, tokens_per_s: float, evaluating: bool) -> dict:
        return {**self.counts(), "loss": loss, "lr": self.engine.get_lr()[0], "epoch": epoch,
                "tokens_per_s": tokens_per_s, **(self.evaluate() if evaluating else {})}

    def report_start(self, log: Callable[[str], None] | None) -> None:
        """The validation loss before the stage's first step (once: not again on a resume)."""
        losses = self.evaluate()
        self.state.initial_val_loss = losses["val_loss"]
        self.report({**self.counts(), "epoch": 0, "lr": self.engine.get_lr()[0], **losses})
        if log:
            log(f"[{self.stage.name}] step 0/{self.total_steps} val_loss {self.state.initial_val_loss:.4f}")

    def save(self, metrics: dict) -> None:
        with checkpoint_scratch() as tmp:
            save_checkpoint(self.engine, self.tokenizer, self.state, tmp, self.stage.config.checkpoints.resumable)
            self.report(metrics, checkpoint_dir=str(tmp), name=checkpoint_name(self.stage, self.state))


def train_stage(model, tokenizer, stage: Stage, dcfg: DistributedConfig, report: Reporter,
                resume_from: Path | None = None, log: Callable[[str], None] = print):
    """Train one stage to its planned steps. `resume_from`: a checkpoint folder of this stage.

    Returns the final state and the engine (for `full_state_dict`, when a next stage needs the weights).
    """
    tcfg = stage.config
    rank, world_size = world()
    total_steps = stage_steps(stage, world_size)
    schedule = CheckpointSchedule.of(stage)
    state, engine = start_engine(model, stage, dcfg, total_steps, resume_from, log)
    validation = {name: evenly_spaced(rows, tcfg.max_validation_rows) for name, rows in stage.validation.items()}
    run = StageRun(stage, engine, state, tokenizer, report, total_steps, validation)
    if state.initial_val_loss is None:
        run.report_start(log if rank == 0 else None)

    engine.train()
    throughput = Throughput()
    epoch, skip = divmod(state.step, steps_per_epoch(len(stage.train), tcfg, world_size))
    while state.step < total_steps:
        batches = _batches(stage.train, epoch, tcfg.seed, skip * tcfg.gradient_accumulation_steps, tcfg, stage.collate)
        skip = 0
        for loss, words, tokens in optimizer_steps(engine, batches, tcfg.gradient_accumulation_steps):
            check_finite(loss, stage.name, state.step + 1)
            state.step += 1
            state.words_seen += words
            state.tokens_seen += tokens
            throughput.tokens += tokens
            done, crossed = state.step >= total_steps, schedule.crossed(state)
            evaluating = state.step % tcfg.eval_every_steps == 0 or done
            if not (state.step % tcfg.log_every_steps == 0 or evaluating or crossed):
                continue
            metrics = run.metrics(loss, epoch, throughput.rate(), evaluating)
            if rank == 0:
                log(progress_line(stage.name, total_steps, metrics))
            if crossed or done:
                schedule.advance(state, crossed)
                run.save(metrics)
            else:
                report(metrics)
            throughput.reset()
            if done:
                break
        epoch += 1
    return state, engine
