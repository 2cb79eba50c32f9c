"""A run's checkpoints: when they are taken (the BabyLM word marks), what each holds (Hugging Face
weights and tokenizer, the trainer's state, and DeepSpeed's optimizer state while it may still be
resumed from), and which keep that optimizer state.

Every mark checkpoint keeps its weights, for evaluation and the leaderboard's revisions; the
optimizer state, several times the weights' size, is kept in the newest `run.keep_optimizer_states`
registered checkpoints only (`prune_optimizer_states`, called by Ray Train's controller once a
checkpoint is registered: never before, so a restart always finds state to resume from).
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pydantic import with_config

from classit.artefacts import parse_json_as, remove_abandoned

BABYLM_WORD_MARKS = (
    [m * 1_000_000 for m in range(1, 10)]
    + [m * 10_000_000 for m in range(1, 10)]
    + [m * 100_000_000 for m in range(1, 11)]
)
TRAINER_STATE = "trainer_state.json"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"  # DeepSpeed's own folder for the one state it keeps, inside DEEPSPEED_DIR
SCRATCH_PREFIX = "classit-ckpt-"


@contextmanager
def checkpoint_scratch() -> Iterator[Path]:
    """A temporary folder, named by this host and process, that a checkpoint is written into before
    it is copied to storage. A worker killed as it saves (Ctrl-C's abort, a lost worker, SIGKILL)
    leaves its folder, as large as a checkpoint, in the temporary directory: those of processes no
    longer running are removed first."""
    prefix = f"{SCRATCH_PREFIX}{socket.gethostname()}-"
    remove_abandoned(Path(tempfile.gettempdir()), prefix)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as folder:
        yield Path(folder)


def checkpoint_marks(prior_exposure_words: int, word_scale: float | None) -> list[int]:
    """The BabyLM word marks still ahead of a stage that starts at `prior_exposure_words` of exposure.

    Marks count total exposure, the base model's included, so instruction tuning continues the
    schedule pretraining began. `word_scale` (None: 1, the BabyLM marks exactly) shrinks the
    schedule for small runs.
    """
    return [m for m in sorted(scaled_marks(word_scale)) if m > prior_exposure_words]


def scaled_marks(word_scale: float | None) -> dict[int, int]:
    """Each BabyLM mark's word count under `word_scale` -> the mark (the largest where several coincide)."""
    scale = 1.0 if word_scale is None else word_scale
    return {max(1, round(m * scale)): m for m in BABYLM_WORD_MARKS}


@dataclass
@with_config(extra="forbid")
class TrainerState:
    """What a resumed worker needs besides weights and optimizer state.

    Word counts follow the BabyLM rules: `prior_*` are the input and exposure words of everything
    that made the starting model (pretraining, earlier stages), `input_words` the new input this
    stage adds, `words_seen` this stage's exposure, repeats included.
    """

    stage: str
    stage_index: int = 0
    prior_input_words: int = 0
    prior_exposure_words: int = 0
    input_words: int = 0
    step: int = 0
    words_seen: int = 0
    tokens_seen: int = 0
    next_mark: int = 0
    babylm_mark: int = 0  # the BabyLM mark (in unscaled words) the checkpoint saved now stands for; 0: none
    initial_val_loss: float | None = None
    hardware: str = ""  # the processor that trained up to this checkpoint (its last stretch, if resumed)

    @property
    def total_input_words(self) -> int:
        return self.prior_input_words + self.input_words

    @property
    def total_exposure_words(self) -> int:
        return self.prior_exposure_words + self.words_seen


def save_tokenizer_and_model(model, tokenizer, folder: Path, state_dict: dict | None = None) -> None:
    """An HF checkpoint folder that AutoModelForCausalLM and AutoTokenizer load (transformers 4.51 and 5)."""
    from classit.tokenizer import save_tokenizer

    model.save_pretrained(folder, state_dict=state_dict if state_dict is not None else model.state_dict())
    save_tokenizer(tokenizer, folder)


def save_checkpoint(engine, tokenizer, state: TrainerState, folder: Path, resumable: bool) -> None:
    """HF-format weights and tokenizer (rank 0), plus DeepSpeed state from every rank when resumable."""
    from classit.results import hardware
    from classit.train.distributed import device, world  # torch: imported by the workers only, not by planners

    rank, _ = world()
    state = replace(state, hardware=hardware(str(device())))
    # A collective under ZeRO-3 (it gathers the partitioned weights), so every rank calls it.
    weights = engine._zero3_consolidated_16bit_state_dict() if engine.zero_optimization_stage() == 3 else None
    if rank == 0:
        save_tokenizer_and_model(engine.module, tokenizer, folder, weights)
        (folder / TRAINER_STATE).write_text(json.dumps(asdict(state), indent=2))
    if resumable:
        engine.save_checkpoint(str(folder / DEEPSPEED_DIR), tag=DEEPSPEED_TAG,
                               client_state={"trainer_state": asdict(state)})


def load_trainer_state(folder: Path) -> TrainerState:
    path = folder / TRAINER_STATE
    return parse_json_as(TrainerState, path.read_text(), path)


def read_trainer_state(fs, folder: str) -> TrainerState:
    """A checkpoint's trainer state on `fs`, a pyarrow filesystem (local or cloud storage alike)."""
    path = posixpath.join(folder, TRAINER_STATE)
    with fs.open_input_stream(path) as stream:
        return parse_json_as(TrainerState, stream.read(), path)


def prune_optimizer_states(fs, registered: str, keep: int) -> list[str]:
    """Once the checkpoint at `registered` (a path on `fs`, a pyarrow filesystem: local or cloud
    storage alike) is registered, delete the DeepSpeed state of the run's checkpoints older than the
    newest `keep`. Checkpoints newer than `registered` (persisted, not registered yet) are left
    alone. Returns the checkpoint folders pruned."""
    from pyarrow.fs import FileSelector, FileType

    def position(folder: str) -> tuple[int, int, int] | None:
        """Where a checkpoint stands in the run (exposure never falls); None: not one with state."""
        if fs.get_file_info(posixpath.join(folder, DEEPSPEED_DIR)).type != FileType.Directory:
            return None
        try:
            state = read_trainer_state(fs, folder)
        except FileNotFoundError:
            return None
        return state.total_exposure_words, state.stage_index, state.step

    newest = position(registered)
    if newest is None:
        return []  # a checkpoint without optimizer state (checkpoints.resumable false)
    folders = [info.path for info in fs.get_file_info(FileSelector(posixpath.dirname(registered)))
               if info.type == FileType.Directory]
    older = sorted((at, folder) for folder in folders if (at := position(folder)) is not None and at <= newest)
    pruned = [folder for _, folder in older[:-keep]]
    for folder in pruned:
        fs.delete_dir(posixpath.join(folder, DEEPSPEED_DIR))
    return pruned


def planned_checkpoints(start: int, end: int, checkpoints) -> int:
    """How many checkpoints a stage from `start` to `end` words of exposure saves (a `CheckpointConfig`):
    one at each mark it crosses, and its last."""
    marks = checkpoint_marks(start, checkpoints.word_scale) if checkpoints.schedule == "babylm" else []
    return sum(mark < end for mark in marks) + 1


def checkpoint_bytes(parameters: int, bf16: bool, zero_stage: int) -> tuple[int, int]:
    """One checkpoint's weights (safetensors, in the training dtype) and its DeepSpeed state, over all
    ranks: the engine's copy of the weights, Adam's two fp32 moments, and fp32 master weights where
    ZeRO or bf16 keeps them apart from the model's."""
    weights = parameters * (2 if bf16 else 4)
    return weights, weights + parameters * (8 + (4 if bf16 or zero_stage else 0))


def run_disk_bytes(parameters: int, checkpoints: int, dcfg, keep: int | None, resumable: bool) -> int:
    """A run's checkpoints on disk at its end: every one's weights, the newest `keep` (None: all)
    ones' optimizer state. `dcfg`: the `DistributedConfig` it trains with."""
    bf16 = dcfg.precision == "bf16" or (dcfg.precision == "auto" and dcfg.use_gpu)
    zero = dcfg.zero_stage if dcfg.num_workers > 1 else 0  # a world of one runs without ZeRO
    weights, state = checkpoint_bytes(parameters, bf16, zero)
    with_state = 0 if not resumable else checkpoints if keep is None else min(keep, checkpoints)
    return checkpoints * weights + with_state * state
