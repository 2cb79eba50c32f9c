"""The leaderboard's aggregates: a hand computation, the published rows, missing components."""

import math

import pytest

from classit.evaluate.aggregates import GLUE, aggregates

# Published (Findings of the BabyLM Challenge 2025, ../shared/PAPER.md): human-likeness, NLP, macro.
PUBLISHED = {"CLASS-IT": (20.4, 52.9, 36.6), "GPT-2 baseline": (17.1, 55.4, 36.2),
             "GPT-BERT mixed": (24.2, 62.7, 43.5), "SimPO": (20.4, 54.1, 37.3)}


def hand_made_scores() -> dict:
    scores = {"reading:eye_tracking:r2_gain_pct": 6.0, "reading:self_paced_reading:r2_gain_pct": 2.0,
              "wug_adj:average:spearman": 0.40, "wug_past:average:spearman": 0.20, "aoa:average:pearson": 0.10,
              "blimp:average:accuracy": 75.0, "blimp_supplement:average:accuracy": 65.0,
              "ewok:average:accuracy": 51.0, "entity_tracking:average:accuracy": 30.0,
              "comps:average:accuracy": 53.0}
    glue = dict(zip(GLUE.values(), (0.62, 0.35, 0.80, 0.57, 0.60, 0.53, 0.61)))
    return scores | glue


def test_aggregates_equal_a_hand_computation():
    result = aggregates(hand_made_scores())
    # human-likeness: reading (6 + 2) / 2 = 4, WUGs 40 and 20, AoA 10: (4 + 40 + 20 + 10) / 4
    assert result["babylm:human_likeness"].value == pytest.approx(18.5)
    glue = 100 * (0.62 + 0.35 + 0.80 + 0.57 + 0.60 + 0.53 + 0.61) / 7
    assert result["babylm:nlp"].value == pytest.approx((75 + 65 + 51 + 30 + 53 + glue) / 6)
    assert result["babylm:macro"].value == pytest.approx((18.5 + result["babylm:nlp"].value) / 2)
    assert all(a.missing == () for a in result.values())


@pytest.mark.parametrize("model", PUBLISHED)
def test_published_macro_is_the_mean_of_the_two_aggregates(model):
    human, nlp, macro = PUBLISHED[model]
    # Each published figure is rounded to 0.1: the mean of two rounded figures is within 0.05 + 0.05.
    assert abs((human + nlp) / 2 - macro) <= 0.1 + 1e-9


def test_a_missing_component_leaves_the_aggregate_empty_with_its_name():
    scores = hand_made_scores()
    del scores["aoa:average:pearson"], scores["qqp:validation:f1"]
    scores["comps:average:accuracy"] = math.nan  # a failed job's score counts as missing too
    result = aggregates(scores)
    assert math.isnan(result["babylm:human_likeness"].value)
    assert result["babylm:human_likeness"].missing == ("aoa:average:pearson",)
    assert math.isnan(result["babylm:nlp"].value)
    assert result["babylm:nlp"].missing == ("comps:average:accuracy", "qqp:validation:f1")
    assert math.isnan(result["babylm:macro"].value) and len(result["babylm:macro"].missing) == 3


def test_report_shows_the_aggregates_a_trial_has_and_names_what_another_lacks(tmp_path):
    from classit.analysis import data
    from classit.analysis.report import write_babylm_aggregates
    from classit.results import write_rows

    trial = {"sweep": "s", "run": "r", "status": "finished", "error": "", "val_loss": 1.0, "checkpoint": "/c"}
    complete = {**trial, "trial": "complete", "param.curriculum": "switch", **hand_made_scores()}
    partial = {**trial, "trial": "partial", "param.curriculum": "wiki", "blimp:average:accuracy": 70.0}
    write_rows(str(tmp_path / "results" / "trials"), [complete, partial])
    (tmp_path / "report").mkdir()
    [path] = write_babylm_aggregates(data.load(tmp_path / "results"), tmp_path / "report")
    lines = {line.split("|")[1].strip(): line for line in path.read_text().splitlines() if line.startswith("| ")}
    macro = aggregates(hand_made_scores())["babylm:macro"].value
    assert f"{macro:.4g}" in lines["complete"] and lines["complete"].rstrip(" |").endswith("-")
    cells = [c.strip() for c in lines["partial"].strip(" |").split("|")]
    assert cells[2:5] == ["-", "-", "-"]  # human-likeness, NLP, macro: empty, never a partial mean
    named = cells[5].split(", ")
    assert "aoa" in named and "comps" in named and named.count("reading") == 1  # each missing task once
    assert "blimp" not in named  # what it has is not listed as missing


def test_leaderboards_and_paper_tables_show_the_aggregates_where_trials_have_them(tmp_path):
    from classit.analysis import data
    from classit.analysis.report import write_paper_tables
    from classit.results import EVAL_SCORES_SCHEMA, write_rows
    from classit.analysis.trials import format_leaderboard, leaderboard

    trial = {"sweep": "s", "run": "r", "status": "finished", "error": "", "val_loss": 1.0, "checkpoint": "/c",
             "param.seed": 0}
    complete = {**trial, "trial": "complete", "param.curriculum": "switch", **hand_made_scores()}
    partial = {**trial, "trial": "partial", "param.curriculum": "wiki", "blimp:average:accuracy": 70.0}
    rows = [t | {name: a.value for name, a in aggregates(t).items()} for t in (complete, partial)]  # as trials write them
    write_rows(str(tmp_path / "results" / "trials"), rows)
    write_rows(str(tmp_path / "results" / "eval_scores"), [
        {"trial": t["trial"], "checkpoint": "/c", "task": "blimp", "subtask": "average", "metric": "accuracy",
         "value": t["blimp:average:accuracy"], "error": ""} for t in (complete, partial)], EVAL_SCORES_SCHEMA)
    results = data.load(tmp_path / "results")
    macro = aggregates(hand_made_scores())["babylm:macro"].value

    board = data.leaderboard(results).set_index("config")  # the analysis layer's, per configuration
    assert board.loc["curriculum=switch", "babylm:macro"] == pytest.approx(macro, abs=0.005)
    assert math.isnan(board.loc["curriculum=wiki", "babylm:macro"])
    (tmp_path / "report").mkdir()
    [tables, _] = write_paper_tables(results, tmp_path / "report")
    header = next(line for line in tables.read_text().splitlines() if line.startswith("| curriculum | preset"))
    assert "babylm:human_likeness" in header and "babylm:macro" in header
    # The sweep's printed leaderboard adds the aggregate columns some trial has.
    printed = format_leaderboard(leaderboard(results.trials, ["blimp:average:accuracy"], ["max"]),
                                 ["blimp:average:accuracy"])
    assert "babylm:macro" in printed.splitlines()[1] and f"{macro:.4g}" in printed


def test_the_sweeps_leaderboard_names_the_processors_where_trials_were_trained_on_more_than_one():
    import pandas as pd

    from classit.analysis.trials import format_leaderboard

    trials = [{"trial": t, "status": "finished", "val_loss": 1.0, "blimp:average:accuracy": 50.0, "hardware": hw}
              for t, hw in [("a", "AMD EPYC"), ("b", "Intel Xeon"), ("c", "AMD EPYC"), ("d", None)]]
    printed = format_leaderboard(pd.DataFrame(trials), ["blimp:average:accuracy"]).splitlines()
    assert printed[-1] == ("note: trained on different processors, whose fp32 numbers differ in their last digits "
                           "and grow apart in training (docs/results.md): AMD EPYC: a, c; Intel Xeon: b")
    one_and_unknown = pd.DataFrame([trials[0], trials[2], trials[3]])
    assert "processors" not in format_leaderboard(one_and_unknown, ["blimp:average:accuracy"])


def test_the_sweeps_leaderboard_warns_under_a_trial_whose_scores_were_mostly_won_by_ties(tmp_path):
    """A diverged run that scores every candidate alike gets 100% on BLiMP (ties count as correct):
    the printed leaderboard names it under the table, from its final checkpoint's `tied_pct` rows."""
    from classit.analysis.trials import leaderboard
    from classit.results import EVAL_SCORES_SCHEMA, read_table, write_rows
    from classit.sweep.runner import leaderboard_text

    results = tmp_path / "results"
    trials = [{"sweep": "s", "run": t, "trial": t, "status": "finished", "error": "", "val_loss": loss,
               "checkpoint": f"/{t}/final", "param.seed": 0, "blimp:average:accuracy": acc}
              for t, loss, acc in (("diverged", 6.36, 100.0), ("trained", 2.9, 67.0))]
    write_rows(str(results / "trials"), trials)
    scores = [{"trial": t, "checkpoint": c, "task": "blimp", "subtask": "average", "metric": m, "value": v, "error": ""}
              for t, c, m, v in (("diverged", "/diverged/final", "accuracy", 100.0),
                                 ("diverged", "/diverged/final", "tied_pct", 100.0),
                                 ("diverged", "/diverged/mark", "tied_pct", 0.0),  # an earlier checkpoint
                                 ("trained", "/trained/final", "accuracy", 67.0),
                                 ("trained", "/trained/final", "tied_pct", 0.0))]
    write_rows(str(results / "eval_scores"), scores, EVAL_SCORES_SCHEMA)
    board = leaderboard(read_table(str(results / "trials")), ["blimp:average:accuracy"], ["max"])
    lines = leaderboard_text(board, ["blimp:average:accuracy"], str(results)).splitlines()
    assert lines[2].split()[0] == "diverged"  # still ranked by its score ...
    assert [line for line in lines if line.startswith("warning")] == [  # ... and named under the table
        "warning: trial diverged: blimp 100% of items won by a tie: the model scores the candidates alike "
        "(a diverged run?), and a tie counts as correct, as in the official pipeline"]


def test_the_paper_grid_scores_every_component_of_the_leaderboard_aggregates():
    """The study's config is how the published aggregates are reproduced: none may stay empty."""
    from pathlib import Path

    import yaml

    from classit.evaluate.aggregates import NAMES, component_tasks

    data = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "class_it_paper.yaml").read_text())
    tasks = set(data["evaluation"]["tasks"])
    for name in NAMES:
        assert set(component_tasks(name)) <= tasks, (name, set(component_tasks(name)) - tasks)
