import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from classit.config import parse_config  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def small_config(tmp: Path, **sections) -> "ClassitConfig":
    """The tiny preset on a small synthetic corpus, with everything written under `tmp`."""
    data = {
        "corpus": {"synthetic": {"sentences": 6000, "seed": 1}, "block_size": 64, "num_proc": 1},
        "pretrain": {"learning_rate": 2e-3, "batch_size": 8, "epochs": 2, "warmup_steps": 10,
                     "eval_every_steps": 20, "log_every_steps": 10},
        "distributed": {"num_workers": 2, "zero_stage": 2, "max_failures": 2},
        "run": {"name": "test", "storage_path": str(tmp / "runs"), "cache_dir": str(tmp / "cache")},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance per test module, in its own temp folder, removed afterwards."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=4, _temp_dir=temp_dir, log_to_driver=True, include_dashboard=True)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
