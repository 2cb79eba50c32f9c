"""A sweep's results as analysis-ready frames: trials, their headline scores, z-scores, curves.

Everything here reads the Parquet tables written by the sweep (see `classit.results`) and returns
pandas frames; queries that aggregate many rows go through DuckDB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from classit.evaluate.catalog import FINETUNE, SERIES, objective_key

READING_SPR = "reading:self_paced_reading:r2_gain_pct"


@dataclass
class Results:
    folder: Path  # the sweep's results folder they were read from
    trials: pd.DataFrame
    train_metrics: pd.DataFrame
    eval_scores: pd.DataFrame
    skipped: list[str] = field(default_factory=list)  # unreadable part files, reported by name


def results_folder(path: str | Path) -> Path:
    """A sweep's results folder, given it, the sweep's own folder (the one `classit status` takes) or
    a storage folder (its newest sweep's)."""
    from classit.results import sweep_folder

    path = sweep_folder(Path(path))
    for folder in (path, path / "results"):
        if (folder / "trials").is_dir():
            return folder
    raise FileNotFoundError(f"{path}: no trials table (expected a sweep folder, <storage>/<sweep>, its results/ "
                            "or a storage folder holding sweeps)")


def load(results_dir: str | Path) -> Results:
    from classit.results import read_table

    folder = results_folder(results_dir)
    tables = {name: read_table(str(folder / name)) for name in ("trials", "train_metrics", "eval_scores")}
    if tables["trials"].empty:
        raise FileNotFoundError(f"{folder / 'trials'}: no trial has written its row yet")
    skipped = [p for t in tables.values() for p in t.attrs.get("skipped", [])]
    # Metric and score rows also carry their run's whole config; analysis takes it from the trial.
    for name in ("train_metrics", "eval_scores"):
        tables[name] = tables[name].drop(columns=["config"], errors="ignore")
    trials = tables["trials"]
    trials = trials[trials["status"] == "finished"].drop_duplicates("trial")
    return Results(folder, trials, tables["train_metrics"], tables["eval_scores"], skipped)


def param_columns(trials: pd.DataFrame) -> list[str]:
    return sorted(c for c in trials.columns if c.startswith("param.") and c != "param.seed")


def configuration_labels(trials: pd.DataFrame) -> pd.Series:
    """One label per configuration: the swept parameters except the seed."""
    columns = param_columns(trials)

    def label(row) -> str:
        parts = []
        for c in columns:
            value = row[c]
            if value is None or (isinstance(value, float) and pd.isna(value)):
                continue
            parts.append(f"{c.removeprefix('param.')}={value:.3g}" if isinstance(value, float) else
                         f"{c.removeprefix('param.')}={value}")
        return ", ".join(parts) or "default"

    return trials.apply(label, axis=1)


def headline_names(tasks) -> dict[str, str]:
    """Score key (task:subtask:metric) -> short score name, for the tasks evaluated."""
    names = {objective_key(task): task for task in tasks}
    if "reading" in tasks:
        names[objective_key("reading")] = "reading_et"
        names[READING_SPR] = "reading_spr"
    return names


def scores(results: Results) -> pd.DataFrame:
    """One row per (trial, score) on the trial's final checkpoint, with its configuration and seed."""
    e = results.eval_scores
    if e.empty:
        return pd.DataFrame(columns=["trial", "config", "seed", "curriculum", "score", "kind", "value"])
    names = headline_names(sorted(set(e["task"])))
    e = e.assign(key=e["task"] + ":" + e["subtask"] + ":" + e["metric"])
    trials = results.trials.assign(config=configuration_labels(results.trials))
    final = e.merge(trials[["trial", "checkpoint"]], on=["trial", "checkpoint"])
    final = final[final["key"].isin(names)]
    out = final.merge(trials[["trial", "config", "param.seed", *(["param.curriculum"] if "param.curriculum" in trials
                                                                  else [])]], on="trial")
    out = out.rename(columns={"param.seed": "seed", "param.curriculum": "curriculum"})
    if "curriculum" not in out:
        out["curriculum"] = "-"
    out["score"] = out["key"].map(names)
    out["kind"] = out["task"].map(lambda t: "fine-tuning" if t in FINETUNE else "zero-shot")
    return out[["trial", "config", "seed", "curriculum", "score", "kind", "value"]]


def zscores(frame: pd.DataFrame) -> pd.DataFrame:
    """Per score: standard deviations from the mean over the compared configurations (seed means).

    As the CLASS-IT paper aggregates: z per task across models, then averaged per model.
    """
    means = frame.groupby(["config", "curriculum", "score", "kind"], as_index=False)["value"].mean()
    grouped = means.groupby("score")["value"]
    std = grouped.transform("std").where(lambda s: s > 0)
    return means.assign(z=(means["value"] - grouped.transform("mean")) / std)


LEADERBOARD_SQL = """
SELECT config, score, avg(value) AS mean, stddev_samp(value) AS std, count(*) AS seeds
FROM scores GROUP BY config, score ORDER BY config, score
"""


def babylm_aggregates(results: Results) -> pd.DataFrame:
    """Per trial: its configuration label and the leaderboard's aggregates (NaN where a component
    is missing), computed from the trial's row (rows written before the aggregates existed too)."""
    from classit.evaluate.aggregates import NAMES, aggregates

    trials = results.trials
    rows = [{name: a.value for name, a in aggregates(t).items()} for t in trials.to_dict("records")]
    return pd.DataFrame(rows, columns=list(NAMES)).assign(trial=trials["trial"].values,
                                                         config=configuration_labels(trials).values)


def present_aggregates(frame: pd.DataFrame) -> list[str]:
    """The aggregates some trial has: the ones worth a column."""
    from classit.evaluate.aggregates import NAMES

    return [name for name in NAMES if name in frame and frame[name].notna().any()]


def leaderboard(results: Results) -> pd.DataFrame:
    """One row per configuration: mean +- std over seeds per score, and z-score aggregates."""
    import duckdb

    frame = scores(results)
    if frame.empty:
        return pd.DataFrame()
    con = duckdb.connect()
    con.register("scores", frame)
    summary = con.execute(LEADERBOARD_SQL).df()
    # One seed has no spread to show: its mean alone, not "± 0" as if the seeds had agreed.
    cell = summary.apply(lambda r: f"{r['mean']:.4g}" + ("" if pd.isna(r["std"]) else f" ± {r['std']:.2g}"), axis=1)
    table = summary.assign(cell=cell).pivot(index="config", columns="score", values="cell")
    z = zscores(frame)
    aggregates = {"z zero-shot": z[z["kind"] == "zero-shot"], "z fine-tuning": z[z["kind"] == "fine-tuning"],
                  "z all": z}
    for name, part in aggregates.items():
        if not part.empty:
            table[name] = part.groupby("config")["z"].mean().round(3)
    babylm = babylm_aggregates(results)
    present = present_aggregates(babylm)
    if present:  # the BabyLM leaderboard's aggregates, mean over seeds
        table = table.join(babylm.groupby("config")[present].mean().round(2))
    seeds = frame.groupby("config")["seed"].nunique().rename("seeds")
    val = results.trials.assign(config=configuration_labels(results.trials)).groupby("config")["val_loss"].mean()
    table = table.join(seeds).join(val.round(4).rename("val_loss"))
    order = "z all" if "z all" in table else "val_loss"
    return table.sort_values(order, ascending=order == "val_loss").reset_index()


def learning_curves(results: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and validation loss against words of exposure (train_metrics: rows with `loss` or
    `val_loss`), and scores against words seen at each evaluated checkpoint (eval_scores), per
    trial, labelled with the trial's configuration."""
    trials = results.trials.assign(config=configuration_labels(results.trials))
    runs = trials.set_index("run")["config"] if "run" in trials else pd.Series(dtype=str)
    m = results.train_metrics
    losses = [c for c in ("loss", "val_loss") if c in m]
    val = m.dropna(subset=losses, how="all") if losses else pd.DataFrame()
    if not val.empty:
        val = val.assign(config=val["trial"].map(runs)).dropna(subset=["config"])
    e = results.eval_scores
    names = headline_names(sorted(set(e["task"]))) if not e.empty else {}
    if not e.empty:
        e = e.assign(key=e["task"] + ":" + e["subtask"] + ":" + e["metric"])
        by_checkpoint = e["key"].isin(names) & ~e["task"].isin(SERIES)  # a series task scores a run once
        e = e[by_checkpoint].merge(trials[["trial", "config"]], on="trial").assign(score=lambda f: f["key"].map(names))
    return val, e


def blimp_fields(results: Results) -> pd.DataFrame:
    """BLiMP accuracy per field (morphology, syntax, ...) at each evaluated checkpoint, the mean over
    a configuration's seeds: one row per (configuration, words seen), one column per field."""
    e = results.eval_scores
    if e.empty:
        return pd.DataFrame()
    fields = e[(e["task"] == "blimp") & e["subtask"].str.startswith("field:") & (e["error"] == "")]
    if fields.empty:
        return pd.DataFrame()
    labels = results.trials.assign(config=configuration_labels(results.trials))[["trial", "config"]]
    fields = fields.merge(labels, on="trial").assign(field=lambda f: f["subtask"].str.removeprefix("field:"))
    return fields.pivot_table(index=["config", "words_seen"], columns="field", values="value", aggfunc="mean")
