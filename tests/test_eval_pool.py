"""The Ray evaluation actor pool: parallel jobs, error rows for bad checkpoints, rows once each."""

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from classit.evaluate.actors import EvaluationPool
from classit.evaluate.jobs import EvalJob
from classit.results import read_table
from conftest import SHARED_DATA, loaded_by, this_cpu, train_tiny_checkpoint


def make_data_dir(tmp):
    """A small data folder in the official layouts: BLiMP paradigms and supplement files."""
    blimp = tmp / "data" / "blimp"
    blimp.mkdir(parents=True)
    source = SHARED_DATA / "blimp"
    if source.is_dir():
        for name in ("anaphor_gender_agreement", "determiner_noun_agreement_1", "passive_1"):
            lines = (source / f"{name}.jsonl").read_text().splitlines()[:20]
            (blimp / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    else:
        (blimp / "agreement.jsonl").write_text("\n".join(json.dumps(
            {"sentence_good": f"the dog {v}s .", "sentence_bad": f"the dog {v} .", "field": "morphology",
             "linguistics_term": "agreement", "UID": "agreement", "pairID": str(i)})
            for i, v in enumerate(["run", "sleep", "sing", "jump"] * 5)) + "\n")
    supplement = tmp / "data" / "supplement_filtered"
    supplement.mkdir()
    for name, (good, bad) in {"qa_congruence": ("what did you see ? a dog .", "what did you see ? in a dog ."),
                              "turn_taking": ("do you run ? yes , i do .", "do you run ? yes , you do .")}.items():
        (supplement / f"{name}.jsonl").write_text(
            "\n".join(json.dumps({"sentence_good": good, "sentence_bad": bad}) for _ in range(10)) + "\n")
    return tmp / "data"


def test_classit_evaluate_without_a_data_folder_scores_the_demos_probe_sets(ray_local, tmp_path, monkeypatch, capsys):
    """What the demo sweep scores its trials on, for a checkpoint on its own: no data to fetch."""
    from classit.cli import main

    checkpoint = train_tiny_checkpoint(tmp_path / "train")
    monkeypatch.chdir(tmp_path)  # the probes go to the default cache, .cache/classit/probes
    output = tmp_path / "scores"
    assert main(["evaluate", "--model", str(checkpoint), "--tasks", "blimp,ewok", "--output", str(output)]) == 0
    probes = tmp_path / ".cache" / "classit" / "probes"
    assert sorted(p.name for p in (probes / "blimp").iterdir()) == [
        "agreement_attractor.jsonl", "agreement_relative.jsonl", "agreement_simple.jsonl"]
    rows = read_table(str(output))
    headline = rows[(rows["subtask"] == "average") & (rows["metric"] == "accuracy")].set_index("task")
    assert (rows["error"] == "").all() and headline.loc["blimp", "n_items"] == 600
    assert headline.loc["ewok", "n_items"] == 200 and headline["value"].between(0, 100).all()
    assert "600" in capsys.readouterr().out


def test_pool_runs_checkpoints_by_tasks_and_turns_failures_into_rows(ray_local, tmp_path, capfd):
    good = train_tiny_checkpoint(tmp_path / "train")
    checkpoints = {}
    for trial in ("a", "b", "corrupt"):
        checkpoints[trial] = shutil.copytree(good, tmp_path / f"ckpt-{trial}")
    (checkpoints["corrupt"] / "model.safetensors").write_bytes(b"not a safetensors file")
    data = make_data_dir(tmp_path)
    jobs = [EvalJob(str(path), task, str(data), trial=trial, words_seen=1000)
            for trial, path in checkpoints.items() for task in ("blimp", "blimp_supplement")]
    results_dir = str(tmp_path / "eval_scores")

    pool = EvaluationPool(num_actors=2)
    try:
        rows = pool.run(jobs, results_dir=results_dir, show_progress=True)
        bars = capfd.readouterr().err.splitlines()
        again = pool.run(jobs[:3], results_dir=results_dir)  # a resumed trial evaluates some jobs again
    finally:
        pool.shutdown()

    table = read_table(results_dir)
    assert len(table) == len(rows) and len(again) > 0
    key = ["trial", "checkpoint", "task", "subtask", "metric"]
    assert not table.duplicated(key).any()  # every row exactly once, re-runs included
    errors = table[table["metric"] == "error"]
    assert set(errors["trial"]) == {"corrupt"} and len(errors) == 2
    # The reason names the checkpoint, not only the reader's "header too large".
    reason = (f"LoadError: {checkpoints['corrupt']}: the checkpoint does not load "
              "(SafetensorError: Error while deserializing header: header too large)")
    assert (errors["error"] == reason).all(), errors["error"].tolist()
    averages = table[(table["subtask"] == "average") & (table["metric"] == "accuracy")]
    assert set(zip(averages["trial"], averages["task"])) == {(t, k) for t in ("a", "b")
                                                            for k in ("blimp", "blimp_supplement")}
    # Same weights, same data: the two good checkpoints score identically.
    a = averages[averages["trial"] == "a"].set_index("task")["value"].sort_index()
    b = averages[averages["trial"] == "b"].set_index("task")["value"].sort_index()
    assert (a == b).all()
    assert table.loc[table["task"] == "blimp_supplement", "subtask"].str.contains("UID:turn_taking").any()
    # One finished bar per job (stderr is not a terminal: rich prints them once, at the end): a good
    # checkpoint's bar full at its count of candidates (two per pair), the corrupt one's marked failed.
    for job in jobs:
        [bar] = [line for line in bars if line.startswith(f"{job.trial} {job.task} ")]
        pairs = averages.set_index(["trial", "task"])["n_items"].get((job.trial, job.task))
        assert re.search(rf" {2 * pairs}/{2 * pairs} +candidates " if pairs else " failed ", bar), bar


def test_progress_counts_every_item_of_a_job(tmp_path):
    from classit.evaluate.jobs import ModelCache, run_job
    from classit.evaluate.progress import Progress

    checkpoint = train_tiny_checkpoint(tmp_path / "train")
    data, progress = make_data_dir(tmp_path), Progress()
    rows = run_job(EvalJob(str(checkpoint), "blimp", str(data)), ModelCache("cpu"), progress)
    [average] = [r for r in rows if r["subtask"] == "average" and r["metric"] == "accuracy"]
    assert progress.snapshot() == (2 * average["n_items"], 2 * average["n_items"], "candidates")


def test_unknown_task_and_missing_data_are_error_rows(tmp_path):
    from classit.evaluate.jobs import ModelCache, run_job

    rows = run_job(EvalJob(str(tmp_path), "ewok_typo", str(tmp_path)), ModelCache())
    assert rows[0]["metric"] == "error" and "unknown task" in rows[0]["error"]
    rows = run_job(EvalJob(str(tmp_path), "blimp", str(tmp_path)), ModelCache())
    assert rows[0]["metric"] == "error" and rows[0]["error"]


@pytest.mark.parametrize("cpus, actors, each", [(2, 4, 0.5), (2, 2, 1.0), (3, 2, 1.0), (8, 2, 4.0), (2, 3, 2 / 3)])
def test_actors_sharing_the_cores_each_get_a_share_that_all_fit_in(cpus, actors, each):
    """More actors than cores: a fraction each, never a whole core that some actor would wait for forever."""
    from classit.evaluate.actors import cpu_share

    assert cpu_share(cpus, actors) == pytest.approx(each) and actors * cpu_share(cpus, actors) <= cpus + 1e-9


def test_the_catalog_names_every_task_its_task_modules_run():
    from classit.evaluate.catalog import FINETUNE, TASKS
    from classit.evaluate.tasks import finetune, zero_shot

    assert set(TASKS) == {*zero_shot.TASKS, "reading", "aoa", *finetune.TASKS}
    assert set(FINETUNE) == set(finetune.TASKS)


def test_the_processes_that_only_hand_out_jobs_start_without_torch():
    """`classit evaluate`'s driver and a sweep's evaluation service import torch (~1.8 s) nowhere:
    scoring and fine-tuning are imported where a job runs."""
    code = "import classit.cli, classit.evaluate.actors, classit.evaluate.export, classit.sweep.services"
    assert loaded_by(code, ("torch",)) == []


def test_a_split_jobs_shares_are_merged_without_torch(tmp_path):
    """The pool merges a split job's shares where it hands out jobs (`classit evaluate`'s driver, a sweep's
    evaluation service): the rows come from the summed scores with numpy alone."""
    data = make_data_dir(tmp_path)
    code = ("import numpy as np\n"
            "from classit.evaluate.jobs import EvalJob, merge_shares, read_items\n"
            f"job = EvalJob('checkpoint', 'blimp', {str(data)!r}, trial='m')\n"
            "n = sum(len(item.candidates) for item in read_items(job)[1])\n"
            "share = lambda k: [{'table': 'share', 'share': (k, 2), 'scores': np.full(n, -1.0 - k), 'seconds': 1.0,\n"
            "                    'started': 0.0, 'finished': 1.0, 'hardware': 'cpu'}]\n"
            "rows = {(r['subtask'], r['metric']): r['value'] for r in merge_shares(job, [share(0), share(1)])}\n"
            "assert rows['average', 'accuracy'] == 100.0 and rows['average', 'tied_pct'] == 100.0, rows\n")
    assert loaded_by(code, ("torch",)) == []


def test_export_writes_the_leaderboard_layout_and_collates_it(tmp_path):
    from classit.evaluate import export
    from classit.evaluate.jobs import ModelCache, run_job

    checkpoint = train_tiny_checkpoint(tmp_path / "train")
    data = make_data_dir(tmp_path)
    cache, out = ModelCache("cpu"), tmp_path / "export"
    rows = {task: run_job(EvalJob(str(checkpoint), task, str(data), trial="m", export_dir=str(out)), cache)
            for task in ("blimp", "blimp_supplement")}
    # The official collate_preds.py paths: zero_shot/causal/<task>/<dataset folder>/predictions.json.
    supplement = json.loads((out / "m/main/zero_shot/causal/blimp/supplement_filtered/predictions.json").read_text())
    assert set(supplement) == {"qa_congruence", "turn_taking"}
    assert [p["id"] for p in supplement["turn_taking"]["predictions"]] == [f"turn_taking_{i}" for i in range(10)]
    # Accuracy recomputed from the exported choices (as the leaderboard does) equals ours.
    good = {"qa_congruence": "what did you see ? a dog .", "turn_taking": "do you run ? yes , i do ."}
    for uid, preds in supplement.items():
        exported = 100 * sum(p["pred"] == good[uid] for p in preds["predictions"]) / len(preds["predictions"])
        ours = next(r["value"] for r in rows["blimp_supplement"] if r["subtask"] == f"UID:{uid}")
        assert exported == pytest.approx(ours)
    collated = json.loads(export.collate(out, "m").read_text())
    assert set(collated) == {"blimp", "blimp_supplement"} and collated["blimp_supplement"] == supplement


def write_ranking_tasks(data: Path) -> list[str]:
    """EWoK, entity tracking, both WUGs and COMPS beside `make_data_dir`'s BLiMP and supplement, a few
    items each in the official layouts: the paper's suite of ranking tasks. Returns their names."""
    lines = {"ewok/physics.jsonl": [{"Context1": "the ball fell .", "Target1": "it dropped .", "Target2": "it rose .",
                                     "Domain": "physics"}] * 3,
             "entity_tracking/regular.jsonl": [{"input_prefix": "the box has the dog . the box has", "numops": 0,
                                                "options": [" the dog .", " the cat .", " nothing ."]}] * 3,
             "wug_adj/adj.jsonl": [{"sentences": f"the {a} is wuggy .\tthe {a} is wuggish .", "ratio": r}
                                   for a, r in (("dog", 0.2), ("cat", 0.5), ("bird", 0.9))],
             "wug_past/past.jsonl": [{"sentences": f"the {a} wugged .\tthe {a} wug .", "ratio": r}
                                     for a, r in (("dog", 0.3), ("cat", 0.6), ("bird", 0.8))],
             "comps/comps_base.jsonl": [{"prefix_acceptable": "a dog", "prefix_unacceptable": "a rock",
                                         "property_phrase": "can run ."}] * 3}
    for name, rows in lines.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ["blimp", "blimp_supplement", "ewok", "entity_tracking", "wug_adj", "wug_past", "comps"]


def test_a_task_is_read_tokenized_and_planned_once_per_tokenizer(tmp_path, monkeypatch):
    from classit.evaluate import scoring
    from classit.evaluate.jobs import ModelCache, run_job

    planned = []
    plan_scoring = scoring.plan_scoring
    monkeypatch.setattr(scoring, "plan_scoring", lambda *args: planned.append(args) or plan_scoring(*args))

    first = train_tiny_checkpoint(tmp_path / "train")
    second = tmp_path / "copy"
    shutil.copytree(first, second)  # another checkpoint of the same run: same tokenizer
    data = make_data_dir(tmp_path)
    tasks = write_ranking_tasks(data)
    cache = ModelCache("cpu")
    rows, kept = {}, {}
    for path in (first, second):  # each checkpoint's tasks in turn, as an actor of a sweep takes them
        rows[path] = [run_job(EvalJob(str(path), task, str(data)), cache) for task in tasks]
        kept = kept or {key: plan for key, (_, _, plan) in cache.tasks.items()}
    # The second checkpoint's jobs reused every task's plan, all seven kept at once.
    assert len(kept) == len(tasks) and all(cache.tasks[key][2] is plan for key, plan in kept.items())
    assert len(planned) == len(tasks)  # 14 jobs, each task planted and batched once
    fresh = [run_job(EvalJob(str(second), task, str(data)), ModelCache("cpu")) for task in tasks]
    values = lambda runs: [[(r["subtask"], r["value"], r["error"]) for r in rs] for rs in runs]  # noqa: E731
    assert values(rows[second]) == values(fresh) == values(rows[first])
    assert not any(r["error"] for rs in fresh for r in rs)
    run_job(EvalJob(str(second), "blimp", str(data), fast=True), cache)
    assert len(cache.tasks) == len(tasks) + 1  # a different subset is another entry
    cache.MAX_PLAN_BYTES = 0  # beyond the bound the least recently used go, the newest stays
    run_job(EvalJob(str(second), "ewok", str(data), fast=True), cache)
    assert [key[:3:2] for key in cache.tasks] == [("ewok", True)]


def test_a_split_job_writes_exactly_the_rows_of_the_whole_job(ray_local, tmp_path, capfd):
    checkpoint = train_tiny_checkpoint(tmp_path / "train")
    data = make_data_dir(tmp_path)
    job = EvalJob(str(checkpoint), "blimp", str(data), trial="m")
    runs = {}
    for name, min_items in (("whole", 10**9), ("split", 1)):
        pool = EvaluationPool(num_actors=2, num_cpus=1, split_min_items=min_items)
        try:
            runs[name] = pool.run([replace(job, export_dir=str(tmp_path / name))],
                                  results_dir=str(tmp_path / name / "eval_scores"), show_progress=True)
        finally:
            pool.shutdown()
    bars = capfd.readouterr().err.splitlines()
    timeless = lambda rows: [{k: v for k, v in r.items() if k not in ("started", "finished", "seconds", "export_dir")}  # noqa: E731
                             for r in rows]
    assert timeless(runs["split"]) == timeless(runs["whole"]) and not any(r["error"] for r in runs["whole"])
    assert len(runs["whole"]) > 3  # the average, fields, terms, UIDs
    assert {r["hardware"] for r in runs["split"]} == {this_cpu()}  # both shares' processor, named once
    predictions = "m/main/zero_shot/causal/blimp/blimp/predictions.json"
    assert (tmp_path / "split" / predictions).read_text() == (tmp_path / "whole" / predictions).read_text()
    # One bar per share, each full: every share ran, each on an actor of its own.
    shares = [line for line in bars if re.match(r"m blimp [12]/2 ", line)]
    assert len(shares) == 2 and all(re.search(r" (\d+)/\1 +candidates ", line) for line in shares), bars


def test_trials_evaluated_at_once_share_the_actors(ray_local, tmp_path):
    """The sweep's evaluation service serves every waiting trial at once: two trials' single jobs
    run at the same time on the two actors (one trial's call does not wait for the other's)."""
    import ray

    from classit.config import EvaluationConfig
    from classit.sweep.services import EvaluationService

    good = train_tiny_checkpoint(tmp_path / "train")
    data = make_data_dir(tmp_path)
    service = EvaluationService.remote(EvaluationConfig(actors=2, cpus_per_actor=1).model_dump(mode="json"),
                                       str(tmp_path / "eval_scores"))
    try:
        calls = [service.evaluate.remote([EvalJob(str(shutil.copytree(good, tmp_path / trial)), "blimp", str(data),
                                                  trial=trial)])
                 for trial in ("a", "b")]
        a, b = (rows[0] for rows in ray.get(calls))
    finally:
        ray.kill(service)
    assert a["trial"] == "a" and b["trial"] == "b" and not a["error"] and not b["error"]
    assert max(a["started"], b["started"]) < min(a["finished"], b["finished"])  # they overlapped
    table = read_table(str(tmp_path / "eval_scores"))
    assert set(table["trial"]) == {"a", "b"} and table["started"].notna().all()


def test_trials_on_one_base_compute_its_marks_surprisals_once(ray_local, tmp_path):
    """Two trials continue one base and are scored at once: each base mark's AoA surprisals are
    computed by one job, and both trials get them as their own rows (the same `started`: once)."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import write_aoa_data

    good = train_tiny_checkpoint(tmp_path / "train")
    data = str(write_aoa_data(tmp_path / "data"))
    marks = [shutil.copytree(good, tmp_path / "base" / f"mark-{m}") for m in (1, 2, 3)]
    results = tmp_path / "results" / "eval_scores"
    pool = EvaluationPool(num_actors=2, num_cpus=1)
    try:
        jobs = {trial: [EvalJob(str(mark), "aoa", data, trial=trial, revision=f"chck_{m}M", words_seen=m * 10**6,
                                series=f"/{trial}/final", config=f'{{"trial": "{trial}"}}')
                        for m, mark in enumerate(marks, 1)] for trial in ("a", "b")}
        with ThreadPoolExecutor(2) as threads:
            a, b = threads.map(lambda trial: pool.run(jobs[trial], results_dir=str(results)), ("a", "b"))
    finally:
        pool.shutdown()
    summary = {trial: {r["revision"]: r for r in rows if r["subtask"] == "surprisal"} for trial, rows in (("a", a), ("b", b))}
    assert sorted(summary["a"]) == sorted(summary["b"]) == ["chck_1M", "chck_2M", "chck_3M"]
    for revision, row in summary["a"].items():
        twin = summary["b"][revision]
        assert not row["error"] and row["started"] == twin["started"] and row["value"] == twin["value"]
        assert (twin["trial"], twin["series"], twin["config"]) == ("b", "/b/final", '{"trial": "b"}')
    detail = read_table(str(tmp_path / "results" / "aoa_surprisal"))
    assert len(detail) == 2 * 3 * 8  # trials x marks x (words x contexts), each trial's rows its own
    by_trial = {t: part.drop(columns=["trial", "series"]).sort_values(["checkpoint", "target_word", "context_id"])
                for t, part in detail.groupby("trial")}
    assert by_trial["a"].reset_index(drop=True).equals(by_trial["b"].reset_index(drop=True))
    assert set(detail.loc[detail["trial"] == "b", "series"]) == {"/b/final"}
