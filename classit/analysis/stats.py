"""What the paper could not say: paired curriculum effects with bootstrap intervals, the Pareto
front of fine-tuning against zero-shot, and which swept parameters matter (fANOVA; a conditional
parameter on the trials that draw it)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from classit.evaluate.catalog import is_score_column

# (A, B): A - B. The paper's questions: does instruction tuning help (each curriculum against the
# pretrained model alone), sequential vs merged, the order of the two stages, and which data alone.
DEFAULT_PAIRS = [*((c, "pt") for c in ("switch", "wiki", "merged", "switch_wiki", "wiki_switch")),
                 ("switch_wiki", "merged"), ("wiki_switch", "merged"), ("switch_wiki", "wiki_switch"),
                 ("switch", "wiki")]


def item_scores(results) -> pd.DataFrame:
    """Per (trial, score, item): the per-UID accuracies of each final checkpoint (the items a task's
    score averages), or the score itself where a task has no items (fine-tuning, WUG, reading)."""
    from classit.analysis.data import configuration_labels, scores

    headline = scores(results)
    e = results.eval_scores
    trials = results.trials.assign(config=configuration_labels(results.trials))
    uid = e[e["subtask"].str.startswith("UID:")].merge(trials[["trial", "checkpoint"]], on=["trial", "checkpoint"])
    uid = uid.merge(headline[["trial", "score"]].drop_duplicates().assign(task=lambda f: f["score"]),
                    on=["trial", "task"])
    uid = uid.assign(item=uid["subtask"])[["trial", "score", "item", "value"]]
    whole = headline[~headline.set_index(["trial", "score"]).index.isin(uid.set_index(["trial", "score"]).index)]
    whole = whole.assign(item="-")[["trial", "score", "item", "value"]]
    keys = headline[["trial", "config", "seed", "curriculum"]].drop_duplicates()
    return pd.concat([uid, whole], ignore_index=True).merge(keys, on="trial")


def paired_effect(items: pd.DataFrame, score: str, a: str, b: str, resamples: int = 10_000,
                  seed: int = 0) -> dict | None:
    """Mean over seeds of score(A) - score(B), paired on seed and the other swept parameters, with a
    95% percentile interval from a two-level bootstrap: seeds, then items (UIDs) within each."""
    part = items[(items["score"] == score) & items["curriculum"].isin([a, b])]
    if part.empty:
        return None
    # Pair on everything but the curriculum (mix_ratio only exists for merged, so it is dropped); where
    # no two configurations share their other parameters (a TPE sweep), pair on the seed alone.
    other = part["config"].str.replace(r"(curriculum|mix_ratio)=[^,]*(, )?", "", regex=True).str.strip(", ")
    diff, paired_on = pd.Series(dtype=float), ""
    for paired_on, key in (("seed + other parameters", other), ("seed", "")):
        wide = part.assign(other=key).pivot_table(index=["other", "seed", "item"], columns="curriculum",
                                                  values="value", aggfunc="mean")
        if a in wide and b in wide:
            diff = (wide[a] - wide[b]).dropna()
        if not diff.empty:
            break
    if diff.empty:
        return None
    units = diff.groupby(level=["other", "seed"])  # one unit per paired (configuration, seed)
    per_unit = [g.to_numpy() for _, g in units]
    boot = two_level_bootstrap(per_unit, resamples, np.random.default_rng(seed))
    estimate = float(np.mean([u.mean() for u in per_unit]))
    low, high = np.percentile(boot, [2.5, 97.5])
    if len(per_unit) == 1 and len(per_unit[0]) == 1:
        low = high = float("nan")  # one seed, one item: nothing to resample, no interval
    return {"comparison": f"{a} - {b}", "score": score, "difference": estimate, "ci_low": float(low),
            "ci_high": float(high), "pairs": len(per_unit), "paired_on": paired_on,
            "items": int(np.mean([len(u) for u in per_unit])),
            "excludes_zero": bool(low > 0 or high < 0)}  # False when there is no interval


def two_level_bootstrap(per_unit: list[np.ndarray], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` bootstrap means: units drawn with replacement, then each drawn unit's items with
    replacement; the mean over the drawn units of their items' means. Each unit's draws are made at
    once (its items are a task's UIDs, tens of them), not one resample at a time: a full suite's
    report cells in 0.4 s instead of 52 (`benchmarks/bootstrap_speed.py`)."""
    picks = rng.integers(len(per_unit), size=(resamples, len(per_unit)))
    unit_means = np.empty(picks.shape)
    for unit, values in enumerate(per_unit):
        drawn = picks == unit
        items = rng.integers(len(values), size=(int(drawn.sum()), len(values)))
        unit_means[drawn] = values[items].mean(axis=1)
    return unit_means.mean(axis=1)


def curriculum_effects(results, pairs=DEFAULT_PAIRS, resamples: int = 10_000) -> pd.DataFrame:
    items = item_scores(results)
    rows = [paired_effect(items, score, a, b, resamples)
            for a, b in pairs for score in sorted(items["score"].unique())]
    return pd.DataFrame([r for r in rows if r is not None])


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Rows of `points` (higher is better in every column) that no other row dominates."""
    return np.array([not ((points >= p).all(axis=1) & (points > p).any(axis=1)).any() for p in points])


def tradeoff(z: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """Per configuration: fine-tuning vs zero-shot mean z (or the first two scores), on the front or not."""
    kinds = set(z["kind"])
    if {"zero-shot", "fine-tuning"} <= kinds:
        x, y = "fine-tuning", "zero-shot"
        table = z.pivot_table(index=["config", "curriculum"], columns="kind", values="z", aggfunc="mean")
    else:
        names = sorted(z["score"].unique())[:2]
        if len(names) < 2:
            return pd.DataFrame(), "", ""
        x, y = names
        table = z.pivot_table(index=["config", "curriculum"], columns="score", values="z", aggfunc="mean")
    table = table[[x, y]].dropna().reset_index()
    table["pareto"] = pareto_mask(table[[x, y]].to_numpy())
    return table, x, y


def importance(trials: pd.DataFrame, objective: str) -> pd.Series:
    """fANOVA importance of each swept parameter for one objective (Optuna's evaluator), over the
    given trials: every parameter that varies among them and that each of them drew."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    data = trials.dropna(subset=[objective])
    params = [c for c in data.columns if c.startswith("param.") and data[c].notna().all() and data[c].nunique() > 1]
    if not params or len(data) < 3:
        return pd.Series(dtype=float, name=objective)
    distributions = {c.removeprefix("param."): FloatDistribution(float(data[c].min()), float(data[c].max()))
                     if pd.api.types.is_numeric_dtype(data[c])
                     else CategoricalDistribution(sorted(data[c].astype(str).unique())) for c in params}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for _, row in data.iterrows():
        drawn = {name: (float if isinstance(d, FloatDistribution) else str)(row[f"param.{name}"])
                 for name, d in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=drawn, distributions=distributions,
                                                  value=float(row[objective])))
    fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = optuna.importance.get_param_importances(study, evaluator=fanova)
    return pd.Series(found, name=objective)


def importance_scopes(trials: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The swept parameters' importance (parameters x objectives), scope by scope: all trials for the
    parameters every trial draws; then, for each conditional parameter (drawn by some trials only:
    `learning_rate` by all but `pt`, `mix_ratio` by `merged`), the trials that draw it. fANOVA needs
    every parameter in every trial, so one table over all trials would leave those out unsaid."""
    objectives = ["val_loss"] + [c for c in trials.columns if is_score_column(c)]
    scored = trials.dropna(subset=[o for o in objectives if o in trials], how="all")
    params = [c for c in scored.columns if c.startswith("param.") and scored[c].nunique() > 1]
    subsets: dict[tuple, list[str]] = {}  # trials drawing a conditional parameter -> those parameters
    for c in params:
        drawn = scored[c].notna()
        if not drawn.all():
            subsets.setdefault(tuple(scored.index[drawn]), []).append(c.removeprefix("param."))
    scopes = [(f"All {len(scored)} trials", scored)] + [
        (f"The {len(rows)} trials that draw {', '.join(names)}{_condition(scored, scored.loc[list(rows)])}",
         scored.loc[list(rows)]) for rows, names in subsets.items()]
    tables = []
    for label, part in scopes:
        found = [importance(part, o) for o in objectives if o in part]
        tables.append((label, pd.concat([f for f in found if not f.empty], axis=1)
                       if any(not f.empty for f in found) else pd.DataFrame()))
    return tables


def _condition(trials: pd.DataFrame, part: pd.DataFrame) -> str:
    """Which values of the parameters every trial draws a subset of trials has, where they are fewer:
    ' (curriculum: merged)'."""
    narrowed = [f"{c.removeprefix('param.')}: {', '.join(sorted(part[c].astype(str).unique()))}"
                for c in trials.columns if c.startswith("param.") and trials[c].notna().all()
                and not pd.api.types.is_numeric_dtype(trials[c]) and part[c].nunique() < trials[c].nunique()]
    return f" ({'; '.join(narrowed)})" if narrowed else ""
