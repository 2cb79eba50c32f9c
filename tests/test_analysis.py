"""The analysis layer on synthetic results with known effects."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classit.analysis import data, stats
from classit.analysis.report import write_report
from classit.results import read_table, write_rows

REPO = Path(__file__).resolve().parents[1]
UIDS = [f"paradigm_{i}" for i in range(12)]


FIELDS = ["morphology", "semantics", "syntax", "syntax/semantics"]


def synthetic_results(root: Path, effect: float, seeds: int = 5, rng_seed: int = 0,
                      curricula=("switch_wiki", "merged", "pt")) -> Path:
    """Trials of the curricula over `seeds` seeds; the first's BLiMP UIDs score `effect` points above
    the second's, `pt`'s 3 points; RTE (fine-tuning) scores the other way round; noise throughout."""
    rng = np.random.default_rng(rng_seed)
    base = rng.uniform(55, 85, size=len(UIDS))
    shift = dict(zip(curricula[:2], (effect, 0.0))) | {"pt": 3.0}
    trials, scores, metrics = [], [], []
    for curriculum in shift:
        for seed in range(seeds):
            key, checkpoint = f"{curriculum}-{seed}", f"/ckpt/{curriculum}-{seed}"
            seed_noise = rng.normal(0, 0.5)
            uid_values = base + shift[curriculum] + seed_noise + rng.normal(0, 1.0, size=len(UIDS))
            rte = 0.6 - shift[curriculum] / 100 + rng.normal(0, 0.01)
            trials.append({"sweep": "s", "trial": key, "run": f"s-{key}", "status": "finished", "error": "",
                           "param.curriculum": curriculum, "param.learning_rate": 1e-3, "param.seed": seed,
                           "params": json.dumps({"curriculum": curriculum, "seed": seed}), "val_loss": 1.0 + seed / 10,
                           "checkpoint": checkpoint, "config.model.preset": "tiny"})
            job = {"trial": key, "checkpoint": checkpoint, "words_seen": 1000, "error": "", "n_items": 100}
            scores += [{**job, "task": "blimp", "subtask": f"UID:{u}", "metric": "accuracy", "value": v}
                       for u, v in zip(UIDS, uid_values)]
            scores.append({**job, "task": "blimp", "subtask": "average", "metric": "accuracy",
                           "value": float(uid_values.mean())})
            scores += [{**job, "task": "blimp", "subtask": f"field:{f}", "metric": "accuracy", "value": v}
                       for f, v in zip(FIELDS, uid_values[:len(FIELDS)])]
            scores.append({**job, "task": "rte", "subtask": "validation", "metric": "accuracy", "value": rte})
            metrics += [{"trial": f"s-{key}", "stage": "x", "step": s, "exposure_words": 1000 * s,
                         "loss": 3.5 / (s + 1), "val_loss": 3.0 / (s + 1)} for s in range(5)]
    write_rows(str(root / "trials"), trials)
    write_rows(str(root / "eval_scores"), scores)
    write_rows(str(root / "train_metrics"), metrics)
    return root


def effect(results_dir, score, pair=("switch_wiki", "merged")):
    table = stats.curriculum_effects(data.load(results_dir), pairs=[pair], resamples=2000)
    return table.set_index("score").loc[score]


def test_an_injected_curriculum_effect_is_recovered_and_no_effect_is_not_claimed(tmp_path):
    found = effect(synthetic_results(tmp_path / "effect", effect=2.0), "blimp")
    assert found["difference"] > 0 and found["ci_low"] > 0 and found["excludes_zero"]
    assert abs(found["difference"] - 2.0) < 1.0 and found["pairs"] == 5 and found["items"] == len(UIDS)
    rte = effect(tmp_path / "effect", "rte")
    assert rte["difference"] < 0 and rte["ci_high"] < 0  # the opposite effect on fine-tuning
    none = effect(synthetic_results(tmp_path / "none", effect=0.0, rng_seed=1), "blimp")
    assert none["ci_low"] < 0 < none["ci_high"] and not none["excludes_zero"]
    # The demo's curricula: none of the paper's sequential-vs-merged pairs, each compared with `pt`.
    table = stats.curriculum_effects(data.load(synthetic_results(
        tmp_path / "demo", effect=2.0, curricula=("switch", "wiki_switch", "pt"))), resamples=200)
    blimp = table[table["score"] == "blimp"].set_index("comparison")["difference"]
    assert set(blimp.index) == {"switch - pt", "wiki_switch - pt"}
    assert blimp["switch - pt"] == pytest.approx(2.0 - 3.0, abs=1.0)
    assert blimp["wiki_switch - pt"] == pytest.approx(0.0 - 3.0, abs=1.0)


def test_the_two_level_bootstrap_draws_units_then_each_units_items():
    """The vectorized draw against its definition, one resample at a time (independent draws, so
    equal up to Monte Carlo noise); skipping the item level would shrink the spread by a fifth."""
    rng = np.random.default_rng(3)
    per_unit = [rng.normal(mean, 2.0, size=n) for mean, n in [(0.0, 10), (0.2, 12), (-0.1, 8), (0.1, 1)]]
    fast = stats.two_level_bootstrap(per_unit, 20_000, np.random.default_rng(0))
    draws, slow = np.random.default_rng(1), []
    for _ in range(20_000):
        picked = draws.integers(len(per_unit), size=len(per_unit))
        slow.append(np.mean([per_unit[i][draws.integers(len(per_unit[i]), size=len(per_unit[i]))].mean()
                             for i in picked]))
    slow = np.array(slow)
    assert fast.shape == (20_000,) and fast.std() == pytest.approx(slow.std(), rel=0.03)
    assert np.abs(np.percentile(fast, [2.5, 50, 97.5]) - np.percentile(slow, [2.5, 50, 97.5])).max() < 0.1 * slow.std()
    assert fast.mean() == pytest.approx(np.mean([u.mean() for u in per_unit]), abs=0.02)


def test_leaderboard_zscores_and_tradeoff(tmp_path):
    results = data.load(synthetic_results(tmp_path, effect=2.0))
    board = data.leaderboard(results).set_index("config")
    assert list(board.columns[:2]) == ["blimp", "rte"] and (board["seeds"] == 5).all()
    assert board.loc["curriculum=switch_wiki, learning_rate=0.001", "blimp"].endswith(tuple("0123456789"))
    assert " ± " in board.loc["curriculum=switch_wiki, learning_rate=0.001", "blimp"]
    # One seed has no spread: the mean alone, never "± 0".
    single = data.leaderboard(data.load(synthetic_results(tmp_path / "one", effect=2.0, seeds=1))).set_index("config")
    assert (single["seeds"] == 1).all() and not single["blimp"].str.contains("±").any()
    z = data.zscores(data.scores(results))
    assert np.allclose(z.groupby("score")["z"].mean(), 0) and np.allclose(z.groupby("score")["z"].std(), 1)
    front, x, y = stats.tradeoff(z)
    assert (x, y) == ("fine-tuning", "zero-shot")
    # pt wins zero-shot, merged wins fine-tuning: both on the front; switch_wiki is between the two.
    assert set(front.loc[front["pareto"], "curriculum"]) >= {"pt", "merged"}


def test_report_writes_html_with_tables_and_figures(tmp_path):
    results_dir = synthetic_results(tmp_path / "results", effect=2.0)
    out = tmp_path / "report"
    page = write_report(data.load(results_dir), out).read_text()
    for name in ("leaderboard.md", "paper_tables.md", "curriculum_effects.md", "importance.md",
                 "zscores_boxplot.png", "learning_curves.png", "pareto.png"):
        assert (out / name).is_file(), name
    assert "<h2>Leaderboard</h2>" in page and page.count("data:image/png;base64,") >= 4
    assert (out / "blimp_fields.png").is_file() and "SORT_TABLES" not in page and 'th.closest("table")' in page
    assert page.count("<thead>") == page.count("<table>") >= 5  # every table sortable by its header
    # The heatmap's cells: each configuration's mean over its seeds of each field's accuracy.
    fields = data.blimp_fields(data.load(results_dir))
    assert list(fields.columns) == FIELDS and len(fields) == 3
    scores = read_table(str(results_dir / "eval_scores"))
    merged = scores[scores["trial"].str.startswith("merged-") & (scores["subtask"] == "field:syntax")]
    assert fields.loc[(fields.index.get_level_values(0).str.contains("merged")), "syntax"].item() == \
        pytest.approx(merged["value"].mean())
    # The same through the command and a script.
    proc = subprocess.run([sys.executable, "-m", "classit.cli", "report", str(results_dir), "--out",
                           str(tmp_path / "cli")], capture_output=True, text=True)
    assert proc.returncode == 0 and (tmp_path / "cli" / "index.html").is_file(), proc.stderr
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "curriculum_effects.py"), str(results_dir),
                           "--out", str(tmp_path / "script")], capture_output=True, text=True)
    assert proc.returncode == 0 and "switch_wiki - merged" in (tmp_path / "script" / "curriculum_effects.md").read_text()


def test_the_report_takes_the_sweep_folder_too_and_bad_folders_end_in_one_line_writing_nothing(tmp_path, capsys):
    from classit.analysis.report import main

    sweep = tmp_path / "sweep"
    synthetic_results(sweep / "results", effect=2.0)
    # The sweep's folder, as `classit status` takes it: the report goes to <sweep>/report.
    proc = subprocess.run([sys.executable, "-m", "classit.cli", "report", str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0 and (sweep / "report" / "index.html").is_file(), proc.stderr
    # A folder with no results: one line naming it, exit 2, and no report folder made beside it.
    missing = tmp_path / "elsewhere" / "nothing"
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "leaderboard.py"), str(missing)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"analysis/leaderboard.py: error: {missing}: no trials table (expected a sweep folder, <storage>/<sweep>, "
        f"its results/ or a storage folder holding sweeps)"], proc.stderr
    assert not (tmp_path / "elsewhere").exists()
    # A sweep whose first trial has not written its row yet.
    (tmp_path / "started" / "results" / "trials").mkdir(parents=True)
    assert main("report", [str(tmp_path / "started")], prog="classit report") == 2
    assert capsys.readouterr().err == f"classit report: error: {tmp_path / 'started' / 'results' / 'trials'}: " \
                                      f"no trial has written its row yet\n"
    assert not (tmp_path / "started" / "report").exists()
    # A report folder that is a file, or below one: named, nothing written.
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out in (a_file, a_file / "report"):
        assert main("leaderboard", [str(sweep), "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"analysis/leaderboard.py: error: --out {out}: {a_file} is a file, not a folder\n"
    assert a_file.read_text() == ""


def test_a_storage_folder_reports_its_newest_sweep(tmp_path, capsys):
    """As `classit status` shows it: the sweep whose driver started last, whatever the names' order."""
    from classit.analysis.report import main
    from classit.results import SWEEP_FILE, SweepRecord

    storage = tmp_path / "runs"
    for name, started in (("b-older", 1.0), ("a-newer", 2.0)):
        synthetic_results(storage / name / "results", effect=2.0)
        record = SweepRecord(config={}, pid=1, host="elsewhere", started=started)
        (storage / name / SWEEP_FILE).write_text(json.dumps(asdict(record)))
    assert main("leaderboard", [str(storage)]) == 0
    assert capsys.readouterr().out == f"{storage / 'a-newer' / 'report' / 'leaderboard.md'}\n"
    assert not (storage / "b-older" / "report").exists()
    # A record that is JSON but no sweep's record: named with its field, nothing written.
    (storage / "b-older" / SWEEP_FILE).write_text(json.dumps({"config": {}, "pid": 1, "host": "elsewhere"}))
    assert main("leaderboard", [str(storage)]) == 2
    assert capsys.readouterr().err == (f"analysis/leaderboard.py: error: {storage / 'b-older' / SWEEP_FILE}: "
                                       "started: Field required\n")


def test_corrupt_results_file_is_named_in_the_report(tmp_path):
    results_dir = synthetic_results(tmp_path / "results", effect=2.0)
    (results_dir / "eval_scores" / "part-broken.parquet").write_bytes(b"garbage")
    page = write_report(data.load(results_dir), tmp_path / "report").read_text()
    assert "part-broken.parquet" in page
    assert pd.read_parquet(next((results_dir / "trials").glob("part-*.parquet"))).shape[0] == 15


def test_importance_assesses_a_conditional_parameter_on_the_trials_that_draw_it():
    """A mix-ratio sweep: `mix_ratio` exists for `merged` only and decides its score, `learning_rate`
    for all but `pt`. fANOVA over all trials cannot take either (Optuna's evaluator drops them
    unsaid); each gets the trials that draw it, and there the figures are Optuna's own."""
    import optuna

    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        curriculum = ["pt", "merged", "switch_wiki"][i % 3]
        row = {"trial": f"t{i}", "param.curriculum": curriculum, "blimp:average:accuracy": 60 + rng.normal(0, 0.2)}
        if curriculum != "pt":
            row["param.learning_rate"] = rng.uniform(1e-4, 3e-3)
        if curriculum == "merged":
            row["param.mix_ratio"] = rng.uniform(0.1, 0.9)
            row["blimp:average:accuracy"] += 20 * row["param.mix_ratio"]
        rows.append(row | {"val_loss": 3 - 100 * row.get("param.learning_rate", 0.0) + rng.normal(0, 0.01)})
    trials = pd.DataFrame(rows)
    scopes = dict(stats.importance_scopes(trials))
    assert list(scopes) == ["All 60 trials", "The 40 trials that draw learning_rate (curriculum: merged, switch_wiki)",
                            "The 20 trials that draw mix_ratio (curriculum: merged)"]
    assert list(scopes["All 60 trials"].index) == ["curriculum"]
    merged = scopes["The 20 trials that draw mix_ratio (curriculum: merged)"]
    assert set(merged.index) == {"mix_ratio", "learning_rate"}
    assert merged.loc["mix_ratio", "blimp:average:accuracy"] > 0.9
    assert scopes["The 40 trials that draw learning_rate (curriculum: merged, switch_wiki)"].loc[
        "learning_rate", "val_loss"] > 0.9
    # The same figures from Optuna itself: one study of every trial with what each drew, asked for the
    # parameters the merged trials draw (its evaluator keeps the trials that have them all).
    study = optuna.create_study()
    part = trials[trials["param.curriculum"] == "merged"]
    space = {n: optuna.distributions.FloatDistribution(part[f"param.{n}"].min(), part[f"param.{n}"].max())
             for n in ("learning_rate", "mix_ratio")}
    for row in trials.to_dict("records"):
        drawn = {n: row[f"param.{n}"] for n in space if not pd.isna(row.get(f"param.{n}"))}
        study.add_trial(optuna.trial.create_trial(params=drawn, distributions={n: space[n] for n in drawn},
                                                  value=row["blimp:average:accuracy"]))
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=list(space))
    for name, value in expected.items():
        assert merged.loc[name, "blimp:average:accuracy"] == pytest.approx(value)


def test_learning_curves_draw_each_seed_as_its_own_run_in_its_configurations_colour(tmp_path):
    """Five seeds of a configuration are five lines (not one zigzag through all their points), and a
    configuration has one colour whichever figure or panel draws it."""
    from classit.analysis.report import config_colors, runs

    results = data.load(synthetic_results(tmp_path, effect=2.0))
    val, evals = data.learning_curves(results)
    lines = runs(val, "exposure_words", "loss")
    assert len(lines) == 3 * 5 and all(len(xs) == 5 and (np.diff(xs) > 0).all() for _, xs, _ in lines)
    assert sorted(set(config for config, _, _ in lines)) == sorted(set(val["config"]))
    colors = config_colors([*val["config"], *evals["config"]])
    assert len(set(colors.values())) == len(colors) == 3
    assert config_colors(reversed(list(val["config"]))) == colors
