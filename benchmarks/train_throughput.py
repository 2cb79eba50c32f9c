"""Training throughput: classit's loop (DeepSpeed engine) vs a plain Hugging Face Trainer.

Both train the same model preset from the same initial weights on the same packed blocks,
with the same batch size, learning rate, clipping and precision, in this one process.
Both are timed over the same steps (the first 10% left out as warm-up, which holds the
compilation; evaluation and checkpointing excluded), in alternating runs. Prints tokens/s for
each, the ratio (target: classit / Trainer >= 1.0), and each run's whole wall time, compilation
included. classit runs with `distributed.compile` (the setting for a long pretraining run) unless
`--no-compile`; the Trainer runs as it comes (`--trainer-compile` gives it `torch_compile=True`).

    python benchmarks/train_throughput.py [--preset tiny] [--steps 200] [--batch-size 8] [--no-compile] [--trainer-compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

os.environ.setdefault("DS_ACCELERATOR", "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from classit.config import DistributedConfig, TrainConfig, parse_config  # noqa: E402
from classit.data.corpus import prepare_corpus  # noqa: E402
from classit.models import build_model, count_parameters  # noqa: E402
from classit.tokenizer import load_tokenizer  # noqa: E402
from classit.train.distributed import init_single_process  # noqa: E402
from classit.train.loop import Stage, collate_blocks, train_stage  # noqa: E402


WORLD_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
_world_env: dict[str, str] = {}  # the single-process world's variables, set only while our loop runs


def time_classit(preset, tokenizer, blocks, tcfg, dcfg, skip: int) -> tuple[float, float]:
    """Steady-state tokens/s (the loop's own timed windows after the first `skip` steps) and wall seconds."""
    started = time.perf_counter()
    os.environ.update(_world_env)
    init_single_process()
    stage = Stage("bench", blocks, {"": blocks.select(range(8))}, tcfg, partial(collate_blocks, pad_id=tokenizer.pad_token_id))
    model = build_model(preset, tokenizer, seed=0)
    windows = []  # (tokens, seconds) of each logged window

    def report(metrics, checkpoint_dir=None, name=None):
        if "tokens_per_s" in metrics:
            tokens = metrics["tokens_seen"] - (windows[-1][2] if windows else 0)
            windows.append((tokens, tokens / metrics["tokens_per_s"], metrics["tokens_seen"], metrics["step"]))

    try:
        train_stage(model, tokenizer, stage, dcfg, report=report, log=lambda _: None)
    finally:  # the next Trainer must not see a distributed launch, or it would wrap its model in DDP
        for key in WORLD_ENV:
            _world_env[key] = os.environ.pop(key)
    steady = [w for w in windows if w[3] > skip]
    return sum(w[0] for w in steady) / sum(w[1] for w in steady), time.perf_counter() - started


def time_hf_trainer(preset, tokenizer, blocks, tcfg, bf16: bool, skip: int, compile: bool) -> tuple[float, float]:
    """Steady-state tokens/s of a plain Trainer, timed the same way (steps after the first `skip`), and wall seconds."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    started = time.perf_counter()
    model = build_model(preset, tokenizer, seed=0)
    collate = partial(collate_blocks, pad_id=tokenizer.pad_token_id)

    def collator(rows):
        batch = collate({k: [r[k] for r in rows] for k in ("input_ids", "num_words")})
        batch.pop("num_words")
        return batch

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (skip, tcfg.max_steps):
                marks[state.global_step] = time.perf_counter()

    args = TrainingArguments(
        output_dir="/tmp/classit-bench-hf", per_device_train_batch_size=tcfg.batch_size, max_steps=tcfg.max_steps,
        learning_rate=tcfg.learning_rate, warmup_steps=tcfg.warmup_steps, lr_scheduler_type="linear",
        max_grad_norm=tcfg.max_grad_norm, weight_decay=tcfg.weight_decay, bf16=bf16, report_to=[],
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=False, seed=tcfg.seed, use_cpu=not torch.cuda.is_available(), torch_compile=compile)
    trainer = Trainer(model=model, args=args, train_dataset=blocks, data_collator=collator, callbacks=[Clock()])
    trainer.train()
    unwrapped = getattr(trainer.model_wrapped, "_orig_mod", trainer.model_wrapped)  # torch.compile's wrapper
    assert unwrapped is model, "the Trainer wrapped its model (DDP?): not a plain Trainer"
    tokens = (tcfg.max_steps - skip) * tcfg.batch_size * len(blocks[0]["input_ids"])
    return tokens / (marks[tcfg.max_steps] - marks[skip]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak (H100/H200 SXM: 989)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each, alternating; medians reported")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="classit without distributed.compile")
    parser.add_argument("--trainer-compile", action="store_true", help="the Trainer with torch_compile=True")
    args = parser.parse_args()

    cfg = parse_config({"model": {"preset": args.preset}, "corpus": {"block_size": args.block_size}})
    corpus = prepare_corpus(cfg)
    tokenizer = load_tokenizer(corpus.tokenizer_path)
    blocks = corpus.load_blocks("train")
    gpu = torch.cuda.is_available()
    tcfg = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, warmup_steps=10, epochs=1000,
                       eval_every_steps=10**9, log_every_steps=max(1, args.steps // 20), checkpoints={"schedule": "final"})
    skip = args.steps // 10  # warm-up steps left out of both timings
    dcfg = DistributedConfig(num_workers=1, zero_stage=args.zero_stage, use_gpu=gpu, compile=args.compile)

    # Runs alternate (Trainer, classit, Trainer, ...) so that a drift in the machine's speed
    # touches both alike; the ratio is the median of each adjacent pair's ratio.
    timed = [(time_hf_trainer(args.preset, tokenizer, blocks, tcfg, bf16=gpu, skip=skip, compile=args.trainer_compile),
              time_classit(args.preset, tokenizer, blocks, tcfg, dcfg, skip=skip)) for _ in range(args.repeats)]
    runs = [(hf_run[0], our_run[0]) for hf_run, our_run in timed]
    hf = statistics.median(r[0] for r in runs)
    ours = statistics.median(r[1] for r in runs)
    ratio = statistics.median(r[1] / r[0] for r in runs)
    hf_wall = statistics.median(hf_run[1] for hf_run, _ in timed)
    our_wall = statistics.median(our_run[1] for _, our_run in timed)
    device = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"preset {args.preset}  steps {args.steps}  batch {args.batch_size}x{args.block_size}  "
          f"ZeRO-{args.zero_stage}  {'bf16' if gpu else 'fp32'}  on {device}")
    print(f"HF Trainer{' (compiled)' if args.trainer_compile else ''}  {hf:12,.0f} tokens/s  "
          f"(median of {args.repeats}; {hf_wall:.1f} s a run)")
    print(f"classit loop{' (compiled)' if args.compile else ''}  {ours:12,.0f} tokens/s  "
          f"(median of {args.repeats}; {our_wall:.1f} s a run, initial validation and checkpoint included)")
    print("pairs (Trainer, classit): " + ", ".join(f"({h:,.0f}, {o:,.0f})" for h, o in runs))
    print(f"ratio classit / Trainer = {ratio:.2f}  (median of the {args.repeats} pairs' ratios; target >= 1.0)")
    if gpu:
        params = count_parameters(build_model(args.preset, tokenizer))
        peak = args.peak_tflops * 1e12
        print(f"MFU (6 x {params:,} params x tokens/s / {args.peak_tflops:.0f} TFLOP/s bf16 peak): "
              f"classit {6 * params * ours / peak:.1%}  Trainer {6 * params * hf / peak:.1%}")


if __name__ == "__main__":
    main()
