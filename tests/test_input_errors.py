"""Bad input through the real entry points: over-budget plans and malformed instruction data end in
one line on stderr and exit 2, before Ray starts (its temp folder stays empty)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import train_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("base"))


def run_cli(tmp: Path, *args: str) -> str:
    """Runs `classit ...`; asserts exit 2, one stderr line and no Ray; returns that line."""
    ray_tmp = tmp / "ray"
    ray_tmp.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "classit.cli", *args], capture_output=True, text=True, cwd=tmp,
                          env={**os.environ, "RAY_TMPDIR": str(ray_tmp)}, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert list(ray_tmp.iterdir()) == []  # Ray never started
    return proc.stderr.strip()


def small(tmp: Path) -> list[str]:
    return ["--set", "corpus.synthetic.sentences=2000", "--set", f"run.cache_dir={tmp / 'cache'}",
            "--set", f"run.storage_path={tmp / 'runs'}"]


def test_pretraining_input_over_budget(tmp_path):
    line = run_cli(tmp_path, "pretrain", *small(tmp_path), "--set", "budget.max_input_words=5000")
    assert "budget: the pretraining corpus" in line and "input" in line and "> 5,000 words" in line


def test_pretraining_exposure_over_budget(tmp_path):
    line = run_cli(tmp_path, "pretrain", *small(tmp_path), "--set", "budget.max_exposure_words=20000")
    words = json.loads(next((tmp_path / "cache").glob("corpus-*/blocks-*/stats.json")).read_text())["train"]["words"]
    assert f"exposure {words * 8:,} > 20,000 words" in line and f"pretraining ({words:,} input words" in line


def test_curriculum_exposure_over_budget(tmp_path, base):
    line = run_cli(tmp_path, "instruct", "--base", str(base), "--curriculum", "switch_wiki", *small(tmp_path),
                   "--set", "budget.max_exposure_words=20000")
    assert "budget: curriculum switch_wiki" in line and "> 20,000 words" in line and "total" in line


def test_sweep_trial_over_budget(tmp_path):
    # The demo's base is 35,010 words of exposure at this size: within; its trials add more.
    line = run_cli(tmp_path, "sweep", *small(tmp_path), "--set", "budget.max_exposure_words=40000")
    assert line.startswith("classit: error: sweep trial curriculum=") and "exposure" in line and "> 40,000" in line
    line = run_cli(tmp_path, "sweep", *small(tmp_path), "--set", "budget.max_exposure_words=30000")
    assert "budget: the tiny base's pretraining (11,670 input words, 35,010 of exposure)" in line


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "a ?", "reply": "b ."}\n{"prompt": "c ?", "reply": \n', "qa.jsonl:2: not valid JSON"),
    (b'{"prompt": "a ?"}\n', "qa.jsonl:1: instruct.datasets.qa: record has no 'reply' text"),
    (b'{"reply": "b ."}\n', "qa.jsonl:1: instruct.datasets.qa: record has no 'prompt' text"),
    (b'{"prompt": "a ?", "reply": "b ."}\n\n{"prompt": "caf\xe9 ?", "reply": "b ."}\n', "qa.jsonl:3: not UTF-8 text"),
])
def test_malformed_instruction_data_is_named_by_file_and_line(tmp_path, base, content, message):
    (tmp_path / "qa.jsonl").write_bytes(content)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"instruct": {"datasets": {"qa": {"path": str(tmp_path / "qa.jsonl")}},
                                                   "curriculum": [{"datasets": ["qa"]}]}}))
    line = run_cli(tmp_path, "instruct", "--base", str(base), "--config", str(config), *small(tmp_path))
    assert message in line
