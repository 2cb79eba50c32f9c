import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from classit.config import parse_config  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config):
    """The run's child processes keep their temporary files in one folder, removed at the end: Ray's
    dashboard starts a multiprocessing forkserver whose socket folder (/tmp/pymp-*) outlives Ray."""
    config.children_tmp = tempfile.mkdtemp(prefix="classit-tests-", dir="/tmp")
    config.tmpdir_before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = config.children_tmp


def pytest_unconfigure(config):
    if config.tmpdir_before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = config.tmpdir_before
    shutil.rmtree(config.children_tmp, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def nothing_written_to_the_default_folders():
    """Every test writes under its own temporary folders: none leaves a run, a sweep or a cache in
    the folders a config's defaults point to (`run.storage_path: runs`, `run.cache_dir: .cache/classit`,
    relative to where pytest runs), where a user's own runs live."""
    defaults = [Path("runs").resolve(), Path(".cache/classit").resolve()]

    def entries() -> set[Path]:
        return {entry for folder in defaults if folder.is_dir() for entry in folder.iterdir()}

    before = entries()
    yield
    added = entries() - before
    assert not added, f"tests wrote into the default folders: {sorted(map(str, added))}"


def small_config(tmp: Path, **sections) -> "ClassitConfig":
    """The tiny preset on a small synthetic corpus, with everything written under `tmp`."""
    data = {
        "corpus": {"synthetic": {"sentences": 6000, "seed": 1}, "block_size": 64, "num_proc": 1},
        # Word-budget checkpoints every 10k words (the BabyLM schedule x 0.01): a handful per run.
        "pretrain": {"learning_rate": 2e-3, "batch_size": 8, "epochs": 2, "warmup_steps": 10,
                     "eval_every_steps": 20, "log_every_steps": 10, "checkpoints": {"word_scale": 0.01}},
        "distributed": {"num_workers": 2, "zero_stage": 2, "max_failures": 2},
        "run": {"name": "test", "storage_path": str(tmp / "runs"), "cache_dir": str(tmp / "cache")},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data)


# Modules whose tests start Ray of their own: sweeps and generation in driver processes, clusters.
RAY_OF_THEIR_OWN = ("test_sweep_resume.py", "test_cluster_ray.py", "test_cluster_up.py", "test_generate_ray.py",
                    "test_ray_session.py")


def qa_spec(**fields) -> dict:
    """A small teacher-written set: the synthetic corpus's first articles, 3 pairs each."""
    spec = {"synthetic": {"sentences": 3000, "seed": 0}, "max_articles": 24, "teacher": "synthetic",
            "sampling": {"max_new_tokens": 256}, "batch_size": 4, "articles_per_shard": 4, "actors": 2}
    spec.update(fields)
    return spec


@pytest.fixture(scope="session")
def qa_teacher(tmp_path_factory):
    """The demo's synthetic teacher, trained once for the whole run (about a minute, no Ray)."""
    from classit.config import GenerateConfig
    from classit.generate.synthetic_teacher import synthetic_teacher

    return synthetic_teacher(GenerateConfig.model_validate(qa_spec()), tmp_path_factory.mktemp("teacher"))


def pytest_collection_modifyitems(items):
    """Every test that starts Ray is `slow`, so `pytest -m "not slow"` runs the rest in minutes."""
    for item in items:
        if "ray_local" in item.fixturenames or item.path.name in RAY_OF_THEIR_OWN:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """One storage and cache folder for the sweeps of test_sweep_ray and test_sweep_resume (each
    sweep its own name): one base model for all of them, built by whichever sweep runs first."""
    return tmp_path_factory.mktemp("sweeps")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance per test module, in its own temp folder, removed afterwards."""
    import ray

    from classit.ray_session import local_ray_processes, ray_session

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    started = []
    try:
        with ray_session(num_cpus=4, _temp_dir=temp_dir, include_dashboard=True):
            yield ray
            started = local_ray_processes()  # before its shutdown
    finally:
        remove_ray_folder(temp_dir, started)


def remove_ray_folder(temp_dir: str, started: list) -> None:
    """Remove a Ray's temp folder once its processes (`started`: `local_ray_processes()` taken before
    its shutdown) are gone. A process of this Ray can outlive the shutdown by a moment and write its
    session folder again after it was removed. Not all are found by the folder in their command line:
    the dashboard's heads retitle themselves (`ray-dashboard-MetricsHead-0`, which rewrites a file in
    the session folder every few seconds). Only Ray's are waited for: a process an earlier test left
    to this one for good (a multiprocessing resource tracker) would hold every later teardown for the
    whole timeout."""
    import psutil

    psutil.wait_procs(started, timeout=10)
    ray_processes_left(temp_dir, seconds=10)
    shutil.rmtree(temp_dir, ignore_errors=True)


def loaded_by(code: str, watched: tuple[str, ...]) -> list[str]:
    """Which of the `watched` modules a fresh interpreter has loaded after running `code`."""
    import subprocess
    import sys

    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def this_cpu() -> str:
    """This machine's CPU model, as the kernel names it (the first `model name` of /proc/cpuinfo)."""
    return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name"))


def ray_processes(marker: str) -> list[str]:
    """Processes whose command line holds `marker` (a Ray temp folder: that Ray's processes)."""
    import subprocess

    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def ray_processes_left(marker: str, seconds: float) -> list[str]:
    """The processes of that Ray still running after waiting up to `seconds` for them to exit."""
    deadline = time.time() + seconds
    while (left := ray_processes(marker)) and time.time() < deadline:
        time.sleep(0.25)
    return left


def actors(class_name: str, alive_only: bool = True, seconds: float = 10) -> list:
    """Actors of a class in the Ray cluster this process is connected to, asked by its address so
    that another Ray instance on the machine cannot make the lookup ambiguous. Every caller looks
    for actors it knows exist, and Ray's state API once answered a sweep's six trials with none:
    asked again while it lists none, for up to `seconds`."""
    import ray
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name)] + ([("state", "=", "ALIVE")] if alive_only else [])
    deadline = time.time() + seconds
    while not (found := list_actors(address=ray.get_runtime_context().gcs_address, filters=filters)) \
            and time.time() < deadline:
        time.sleep(0.5)
    return found


def train_tiny_checkpoint(tmp: Path, steps: int = 40) -> Path:
    """A tiny model trained in this process for a few dozen steps, saved as an HF checkpoint."""
    from functools import partial

    from classit.config import DistributedConfig, TrainConfig
    from classit.data.corpus import prepare_corpus
    from classit.models import build_model
    from classit.tokenizer import load_tokenizer
    from classit.train.distributed import init_single_process
    from classit.train.loop import Stage, collate_blocks, train_stage

    init_single_process()
    corpus = prepare_corpus(small_config(tmp))
    tokenizer = load_tokenizer(corpus.tokenizer_path)
    tcfg = TrainConfig(learning_rate=2e-3, batch_size=8, max_steps=steps, warmup_steps=5, eval_every_steps=1000,
                       checkpoints={"schedule": "final"})
    stage = Stage("pretrain", corpus.load_blocks("train"), {"": corpus.load_blocks("validation").select(range(8))},
                  tcfg, partial(collate_blocks, pad_id=tokenizer.pad_token_id))
    saved = tmp / "final"

    def keep(metrics, checkpoint_dir=None, name=None):
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, saved, dirs_exist_ok=True)

    train_stage(build_model("tiny", tokenizer), tokenizer, stage, DistributedConfig(num_workers=1), keep,
                log=lambda _: None)
    return saved


def write_aoa_data(folder: Path, words=("dog", "cat", "bird", "fox")) -> Path:
    """The official `aoa/` layout: each word's contexts (`cdi_childes.json`) and the share of
    children producing it at 16-30 months (`cdi_human.csv`), each word learnt at its own age."""
    import json

    from classit.evaluate.tasks.aoa import MONTHS

    (folder / "aoa").mkdir(parents=True, exist_ok=True)
    contexts = ["the girl sees the", "a boy has a"]
    (folder / "aoa" / "cdi_childes.json").write_text(json.dumps({w: [{"context": c} for c in contexts] for w in words}))
    rows = [f"{w}," + ",".join(f"{min(1.0, 0.05 * i + 0.04 * k):.3f}" for i in range(len(MONTHS)))
            for k, w in enumerate(words)]
    (folder / "aoa" / "cdi_human.csv").write_text("word," + ",".join(MONTHS) + "\n" + "\n".join(rows) + "\n")
    return folder


def wandb_history(path: Path) -> list[dict]:
    """The history rows (`wandb.log` calls) of an offline run's `.wandb` file: W&B's record log
    (a 7-byte file header, then LevelDB-log chunks in 32 KiB blocks, each a 7-byte header and a
    piece of one protobuf `Record`)."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    position, pieces, rows = 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pieces += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE/LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            if record.HasField("history"):
                rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                             for item in record.history.item})
        elif kind == 0:
            break
    return rows
