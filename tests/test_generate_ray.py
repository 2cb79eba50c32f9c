"""`classit generate-qa` end to end, each run a driver process with its own Ray: the records of
a whole run, a killed run resumed to the same records, and a sweep that reuses the cached set."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import qa_spec, ray_processes, ray_processes_left

from classit.config import parse_config
from classit.generate.qa import check_pair, template_hash
from classit.generate.teacher import teacher_hash

PROVENANCE = ("id", "article_id", "article_title", "teacher", "teacher_hash", "template_hash", "sampling", "seed",
              "attempt", "words")


def qa_config(tmp: Path, teacher: Path, **generate) -> dict:
    return {"instruct": {"datasets": {"switch": {"synthetic": "conversation", "max_records": 200},
                                      "wiki": {"generate": qa_spec(teacher=str(teacher), **generate)}},
                         "curriculum": "wiki"},
            "run": {"cache_dir": str(tmp / "cache"), "storage_path": str(tmp / "runs")}}


class Driver:
    """`classit generate-qa` in a process of its own, with its own Ray temp folder."""

    def __init__(self, tmp: Path, config: dict):
        self.path = tmp / "config.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rg-", dir="/tmp"))  # short: socket paths are limited
        self.command = [sys.executable, "-m", "classit.cli", "generate-qa", "--config", str(self.path)]
        self.env = {**os.environ, "RAY_TMPDIR": str(self.ray_tmp)}

    def run(self) -> str:
        done = subprocess.run(self.command, env=self.env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    def kill_when(self, ready, timeout: float = 300) -> None:
        proc = subprocess.Popen(self.command, env=self.env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.1)
        assert proc.poll() is None, "the generation ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        leftover = ray_processes_left(str(self.ray_tmp), seconds=60)  # Ray's local processes share the driver's fate
        for line in leftover:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        assert not leftover, leftover

    def close(self) -> None:
        assert not ray_processes(str(self.ray_tmp))
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def generated_folder(tmp: Path) -> Path:
    (folder,) = (tmp / "cache").glob("qa-*")
    return folder


@pytest.fixture(scope="module")
def whole(tmp_path_factory, qa_teacher):
    """One uninterrupted run: its folder and console."""
    tmp = tmp_path_factory.mktemp("whole")
    driver = Driver(tmp, qa_config(tmp, qa_teacher))
    try:
        out = driver.run()
    finally:
        driver.close()
    return generated_folder(tmp), out


def test_every_record_validates_and_the_count_is_articles_times_pairs_less_the_rejections(whole, qa_teacher):
    folder, out = whole
    summary = json.loads((folder / "artefact.json").read_text())
    records = pq.read_table(folder / "records.parquet").to_pylist()
    gcfg = parse_config(qa_config(folder, qa_teacher)).instruct.datasets["wiki"].generate
    assert summary["articles"] == 24 and summary["shards"] == 6
    assert len(records) == summary["records"] == 24 * 3 - summary["missing"] > 0
    assert sum(summary["rejected"].values()) >= summary["missing"]
    assert f"{len(records)} records = 24 articles x 3 - {summary['missing']} missing" in out
    asked = {}
    for record in records:
        assert check_pair({"question": record["prompt"], "answer": record["reply"]}, gcfg, set()) is None
        assert record["prompt"].lower() not in asked.setdefault(record["article_id"], set())
        asked[record["article_id"]].add(record["prompt"].lower())
        assert record["text"] == f"{record['prompt']}\n{record['reply']}" and record["source"] == "wiki"
        assert all(record[k] is not None for k in PROVENANCE)
        assert record["teacher_hash"] == teacher_hash(qa_teacher) and record["template_hash"] == template_hash(gcfg)
    assert len({r["id"] for r in records}) == len(records)
    assert summary["words"] == sum(r["words"] for r in records)


def test_a_killed_generation_reruns_only_its_missing_shards_to_the_same_records(tmp_path, whole, qa_teacher):
    shards = tmp_path / "cache"
    finished = lambda: sorted(shards.glob("qa-*/shards/shard-*.parquet"))  # noqa: E731
    driver = Driver(tmp_path, qa_config(tmp_path, qa_teacher, actors=1))
    try:
        driver.kill_when(lambda: len(finished()) >= 2)
        kept = {p: p.stat().st_mtime_ns for p in finished()}
        assert 2 <= len(kept) < 6 and not list(shards.glob("qa-*/artefact.json"))
        out = driver.run()
    finally:
        driver.close()
    assert f"{6 - len(kept)} of 6 shards to generate" in out and f"({len(kept)} kept from an earlier run)" in out
    assert out.count(" written (") == 6 - len(kept)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())  # never written twice
    folder = generated_folder(tmp_path)
    assert folder.name == whole[0].name  # the same key: articles, teacher, template, settings
    resumed = sorted(pq.read_table(folder / "records.parquet").to_pylist(), key=lambda r: r["id"])
    uninterrupted = sorted(pq.read_table(whole[0] / "records.parquet").to_pylist(), key=lambda r: r["id"])
    assert resumed == uninterrupted


def test_a_sweep_naming_the_set_reuses_it_and_counts_its_words(whole, qa_teacher, tmp_path, capsys, monkeypatch):
    import ray

    from classit.cli import main
    from classit.data.corpus import corpus_train_words
    from classit.generate.job import ensure_generated
    from classit.sweep.plan import plan_trials, validate
    from classit.train.instruct import load_instruct_data

    folder = whole[0]
    data = qa_config(folder.parents[1], qa_teacher)
    data.update(corpus={"synthetic": {"sentences": 3000, "seed": 0}}, evaluation={"tasks": ["blimp"]},
                sweep={"name": "uses-qa", "search": "grid", "space": {"curriculum": {"choice": ["wiki"]}},
                       "metrics": ["blimp"], "modes": ["max"]})
    cfg = validate(parse_config(data))
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    lines = []
    ensure_generated(cfg, log=lines.append)  # the sweep driver's first step
    assert f"generate wiki: reused {folder}" in lines and not ray.is_initialized()
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before  # nothing generated again

    (params, plan), = plan_trials(cfg)[0]
    train, _ = load_instruct_data(cfg)
    cached = {(r["prompt"], r["reply"]) for r in pq.read_table(folder / "records.parquet").to_pylist()}
    assert train["wiki"] and all((r["prompt"], r["reply"]) in cached for r in train["wiki"])
    generated_words = sum(len(r["prompt"].split()) + len(r["reply"].split()) for r in train["wiki"])
    corpus_words = corpus_train_words(cfg)
    assert plan.input_words == corpus_words + generated_words
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", "--config", str(path), "--dry-run"]) == 0
    assert f"{corpus_words + generated_words:,}" in capsys.readouterr().out
    # `classit generate-qa` on a set made already: reused, with no Ray started for it.
    started, init = [], ray.init
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: started.append(kwargs) or init(*args, **kwargs))
    assert main(["generate-qa", "--config", str(path)]) == 0 and started == []
    assert capsys.readouterr().out.splitlines()[::2] == [f"generate wiki: reused {folder}",
                                                          f"records: {folder / 'records.parquet'}"]
    # One word fewer in the budget than the base's corpus and the generated set: refused.
    data["budget"] = {"max_input_words": corpus_words + generated_words - 1}
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", "--config", str(path), "--dry-run"]) == 2
    assert "input words" in capsys.readouterr().err
