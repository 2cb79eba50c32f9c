"""The per-trial leaderboard a sweep prints when it ends: one row per trial that trained to the end,
best first by the first objective, the Pareto front of several objectives marked. (`data.leaderboard`
is the report's view: one row per configuration, over its seeds.)"""

from __future__ import annotations

import math

import numpy as np

from classit.analysis.stats import pareto_mask
from classit.evaluate.aggregates import NAMES as AGGREGATES
from classit.evaluate.catalog import is_score_column
from classit.units import text_table


def pareto_front(board, objectives: list[str], modes: list[str]):
    """Rows no other row beats on every objective (and strictly on one); a row missing an
    objective (its evaluation failed) is never on the front."""
    points = np.column_stack([board[o].to_numpy(float) * (1 if m == "max" else -1) for o, m in zip(objectives, modes)])
    complete = ~np.isnan(points).any(axis=1)
    front = np.zeros(len(points), dtype=bool)
    front[complete] = pareto_mask(points[complete])
    return list(front)


SCORED = ("finished", "eval_failed")  # trials that trained to the end, whatever their evaluation gave


def leaderboard(trials, objectives: list[str], modes: list[str]):
    """One row per trial that trained to the end (`eval_failed` ones too, with their status),
    best first by the first objective; the Pareto front marked."""
    if trials.empty:
        return trials
    board = trials[trials["status"].isin(SCORED)].drop_duplicates("trial").copy()
    for o in objectives:
        if o not in board:
            board[o] = float("nan")
    if len(objectives) > 1:
        board["pareto"] = pareto_front(board, objectives, modes)
    return board.sort_values(objectives[0], ascending=modes[0] == "min").reset_index(drop=True)


def tie_won(board, scores) -> dict[str, str]:
    """The board's trials whose final checkpoint's tasks were mostly won by ties (a model that scores
    the candidates alike), each with `catalog.tie_warning`'s line; `scores`: the `eval_scores` table."""
    from classit.evaluate.catalog import TIED_METRIC, tie_warning

    if board.empty or scores.empty:
        return {}
    tied = {trial: rows.to_dict("records") for trial, rows in scores[scores["metric"] == TIED_METRIC].groupby("trial")}
    warnings = {trial: tie_warning(tied.get(trial, []), checkpoint)
                for trial, checkpoint in zip(board["trial"], board["checkpoint"])}
    return {trial: warning for trial, warning in warnings.items() if warning}


def format_leaderboard(board, objectives: list[str], tied: dict[str, str] | None = None) -> str:
    if board.empty:
        return "leaderboard: no finished trials"
    params = [c for c in board.columns if c.startswith("param.")]
    scores = [c for c in board.columns if is_score_column(c)]
    scores = [o for o in objectives if o in board and o != "val_loss"] + [c for c in scores if c not in objectives]
    scores += [a for a in AGGREGATES if a in board and a not in scores and board[a].notna().any()]
    header = ["trial", "status", *[p.removeprefix("param.") for p in params], "val_loss", *scores]
    rows = [header]
    for _, r in board.iterrows():
        cells = [("* " if r.get("pareto") else "") + r["trial"], r["status"]]
        cells += ["-" if _missing(r[p]) else (f"{r[p]:.3g}" if isinstance(r[p], float) else str(r[p])) for p in params]
        cells += [f"{r['val_loss']:.4f}", *[f"{r[s]:.4g}" if not _missing(r[s]) else "-" for s in scores]]
        rows.append(cells)
    text = text_table(rows)
    note = "\n(* on the Pareto front of the objectives)" if "pareto" in board else ""
    failed = board.loc[board["status"] == "eval_failed", "trial"].tolist()
    if failed:
        note += f"\nevaluation failed for trial(s) {', '.join(failed)}: see the error rows of eval_scores"
    note += "".join(f"\nwarning: trial {trial}: {warning}" for trial, warning in (tied or {}).items())
    trained_on = board[board["hardware"].fillna("") != ""].groupby("hardware")["trial"].apply(list) \
        if "hardware" in board else {}
    if len(trained_on) > 1:
        note += ("\nnote: trained on different processors, whose fp32 numbers differ in their last digits and "
                 "grow apart in training (docs/results.md): "
                 + "; ".join(f"{name}: {', '.join(trials)}" for name, trials in trained_on.items()))
    return f"leaderboard ({len(board)} trials, best first by {objectives[0]}):\n{text}{note}"


def failed_evaluations(board) -> list[str]:
    return [] if board.empty else board.loc[board["status"] == "eval_failed", "trial"].tolist()


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
