"""The analysis scripts: Markdown tables and PNG figures from a sweep's results, and one HTML report.

Each `analysis/<name>.py RESULTS_DIR [--out DIR]` runs one of the writers below;
`analysis/report.py` (and `classit report`) runs them all and writes `index.html`, self-contained.
RESULTS_DIR is a sweep's results folder, `<storage>/<sweep>/results`.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from classit.analysis import data, stats
from classit.config import ConfigError, output_folder


def markdown(frame: pd.DataFrame, floats: str = "{:.4g}") -> str:
    if frame.empty:
        return "_no rows_\n"
    cells = [[floats.format(v) if isinstance(v, float) else str(v) for v in row]
             for row in frame.itertuples(index=False)]
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_leaderboard(results: data.Results, out: Path) -> list[Path]:
    table = data.leaderboard(results)
    text = ("# Leaderboard\n\nOne row per configuration (the swept parameters but the seed): each score's mean ± "
            "std over seeds on the final checkpoint; `z ...`: per-score z-scores across configurations, "
            "averaged (the CLASS-IT aggregate).\n\n" + markdown(table))
    (out / "leaderboard.md").write_text(text)
    return [out / "leaderboard.md"]


def write_paper_tables(results: data.Results, out: Path) -> list[Path]:
    frame = data.scores(results)
    z = data.zscores(frame)
    preset = results.trials.set_index("trial").get("config.model.preset", pd.Series(dtype=str))
    # astype(object): a column all missing maps to float NaN
    frame = frame.assign(preset=frame["trial"].map(preset).astype(object).fillna("-"))
    per_curriculum = frame.pivot_table(index=["curriculum", "preset"], columns="score", values="value",
                                       aggfunc="mean").reset_index()
    trials = frame[["trial", "curriculum", "preset"]].drop_duplicates()
    babylm = data.babylm_aggregates(results).merge(trials, on="trial")
    present = data.present_aggregates(babylm)
    if present:  # the BabyLM leaderboard's aggregates where the trials have them
        per_curriculum = per_curriculum.merge(babylm.groupby(["curriculum", "preset"], as_index=False)[present].mean(),
                                              on=["curriculum", "preset"], how="left")
    per_model = z.groupby(["config", "curriculum"], as_index=False).agg(
        mean_z=("z", "mean"), median_z=("z", "median"), scores=("z", "count")).sort_values("mean_z", ascending=False)
    kinds = z.pivot_table(index="curriculum", columns="kind", values="z", aggfunc="mean").reset_index()
    text = ("# CLASS-IT views\n\n## Scores per curriculum and model size (mean over configurations and seeds)\n\n"
            + markdown(per_curriculum) + "\n## Mean z-score per curriculum: zero-shot vs fine-tuning\n\n"
            + markdown(kinds) + "\n## Per-task z-scores across the compared configurations, averaged per "
            "configuration\n\n" + markdown(per_model))
    (out / "paper_tables.md").write_text(text)

    plt = _figure()
    curricula = sorted(z["curriculum"].unique())
    fig, ax = plt.subplots(figsize=(1.4 * len(curricula) + 2, 4))
    ax.boxplot([z.loc[z["curriculum"] == c, "z"].dropna() for c in curricula], showmeans=False)
    ax.set_xticks(range(1, len(curricula) + 1), curricula)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("curriculum")
    ax.set_ylabel("z-score per task (across configurations)")
    ax.set_title("Per-task z-scores by curriculum (median and IQR)")
    return [out / "paper_tables.md", _save(plt, fig, out / "zscores_boxplot.png")]


def write_curriculum_effects(results: data.Results, out: Path, resamples: int = 10_000) -> list[Path]:
    effects = stats.curriculum_effects(results, resamples=resamples)
    front, x, y = stats.tradeoff(data.zscores(data.scores(results)))
    text = ("# Curriculum effects\n\nPaired differences (A - B) of each score, matched on seed and the other swept "
            "parameters; 95% intervals from a two-level bootstrap (seeds, then items: the per-UID scores a "
            f"task averages), {resamples:,} resamples. `excludes_zero`: the interval does not contain 0.\n\n"
            + markdown(effects) + f"\n## Trade-off: {x} vs {y} (mean z per configuration)\n\n" + markdown(front))
    (out / "curriculum_effects.md").write_text(text)
    paths = [out / "curriculum_effects.md"]
    if not front.empty:
        plt = _figure()
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for curriculum, part in front.groupby("curriculum"):
            ax.scatter(part[x], part[y], label=curriculum, s=40)
        edge = front[front["pareto"]].sort_values(x)
        ax.plot(edge[x], edge[y], color="black", lw=1, label="Pareto front")
        ax.set_xlabel(f"{x} (mean z)")
        ax.set_ylabel(f"{y} (mean z)")
        ax.set_title("Trade-off between the objectives")
        ax.legend(fontsize=8)
        paths.append(_save(plt, fig, out / "pareto.png"))
    return paths


def write_learning_curves(results: data.Results, out: Path) -> list[Path]:
    """Losses and scores against words, one line per trial (a configuration's seeds each their own
    line), each configuration one colour in every panel and both figures, named in full below."""
    val, evals = data.learning_curves(results)
    plt = _figure()
    colors = config_colors([*val.get("config", []), *evals.get("config", [])])
    paths = []
    losses = [(c, label) for c, label in (("loss", "training loss"), ("val_loss", "validation loss (instruction data)"))
              if c in val and val[c].notna().any()]
    if losses:
        fig, axes = plt.subplots(1, len(losses), figsize=(6 * len(losses), 4.5), squeeze=False, layout="constrained")
        for ax, (column, label) in zip(axes[0], losses):
            for config, xs, ys in runs(val.dropna(subset=[column]), "exposure_words", column):
                ax.plot(xs, ys, marker=".", lw=1, color=colors[config])
            ax.set_xlabel("words of exposure (pretraining included)")
            ax.set_ylabel(label)
            ax.set_title(f"Learning curves: {label.split(' (')[0]}")
        _legend(fig, colors, set(val["config"]))
        paths.append(_save(plt, fig, out / "learning_curves.png"))
    if not evals.empty:
        names = sorted(evals["score"].unique())
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False, layout="constrained")
        for ax, name in zip(axes[0], names):
            for config, xs, ys in runs(evals[evals["score"] == name], "words_seen", "value"):
                ax.plot(xs, ys, marker="o", lw=1, color=colors[config])
            ax.set_xlabel("words seen at the checkpoint")
            ax.set_ylabel(name)
            ax.set_title(f"{name} by checkpoint")
        _legend(fig, colors, set(evals["config"]))
        paths.append(_save(plt, fig, out / "scores_by_words.png"))
    return paths


def config_colors(configs) -> dict[str, tuple]:
    """One colour (RGBA) per configuration, the same in every figure of the report."""
    from matplotlib import colormaps

    names = sorted(set(configs))
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: palette(k % palette.N) for k, name in enumerate(names)}


def runs(frame: pd.DataFrame, x: str, y: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(configuration, x, y) per trial, in order of x: a configuration's seeds are separate runs."""
    return [(config, part[x].to_numpy(), part[y].to_numpy())
            for (config, _), part in frame.sort_values(x).groupby(["config", "trial"], sort=True)]


def _legend(fig, colors: dict, shown: set) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color, marker=".", label=config)
               for config, color in colors.items() if config in shown]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(2, len(handles)), fontsize=7)


def write_blimp_fields(results: data.Results, out: Path) -> list[Path]:
    from classit.units import format_count

    table = data.blimp_fields(results)
    if table.empty:
        return []
    plt = _figure()
    fig, ax = plt.subplots(figsize=(1.4 * len(table.columns) + 7, 0.35 * len(table) + 1.8))
    image = ax.imshow(table.to_numpy(float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns)
    ax.set_yticks(range(len(table)), [f"{config} @ {format_count(words)}" for config, words in table.index])
    for (i, j), value in np.ndenumerate(table.to_numpy(float)):
        # Dark text on viridis' light (yellow) end, white on its dark end.
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                color="black" if image.norm(value) > 0.6 else "white")
    fig.colorbar(image, ax=ax, label="BLiMP accuracy (%)")
    ax.set_title("BLiMP accuracy by field and checkpoint (words seen)")
    return [_save(plt, fig, out / "blimp_fields.png")]


def write_importance(results: data.Results, out: Path) -> list[Path]:
    scopes = stats.importance_scopes(results.trials)
    text = ("# Hyperparameter importance\n\nOptuna's fANOVA importance of the swept parameters per objective "
            "(sums to 1 per column; needs at least three trials and a parameter that varies). fANOVA takes only "
            "parameters every trial drew, so a conditional one (drawn by some curricula only) is assessed on the "
            "trials that draw it.\n\n"
            + "\n".join(f"## {label}\n\n" + markdown(table.reset_index().rename(columns={"index": "parameter"}))
                        for label, table in scopes))
    (out / "importance.md").write_text(text)
    paths = [out / "importance.md"]
    shown = [(label, table) for label, table in scopes if not table.empty]
    if shown:
        plt = _figure()
        fig, axes = plt.subplots(len(shown), 1, figsize=(7, 1.5 + 1.2 * sum(len(t) for _, t in shown)), squeeze=False)
        for ax, (label, table) in zip(axes[:, 0], shown):
            table.plot.barh(ax=ax).legend(fontsize=8)
            ax.set_xlabel("fANOVA importance")
            ax.set_ylabel("parameter")
            ax.set_title(label, fontsize=9)
        fig.suptitle("Which swept parameters matter")
        paths.append(_save(plt, fig, out / "importance.png"))
    return paths


def write_babylm_aggregates(results: data.Results, out: Path) -> list[Path]:
    from classit.evaluate.aggregates import aggregates

    rows = []
    labels = data.configuration_labels(results.trials)
    for trial, label in zip(results.trials.to_dict("records"), labels):
        row = {"trial": trial["trial"], "config": label}
        missing: list[str] = []
        for name, aggregate in aggregates(trial).items():
            row[name.removeprefix("babylm:")] = "-" if math.isnan(aggregate.value) else aggregate.value
            for task in (key.split(":")[0] for key in aggregate.missing):
                if task not in missing:  # reading's two scores, and every aggregate's, named once
                    missing.append(task)
        rows.append(row | {"missing": ", ".join(missing) or "-"})
    text = ("# BabyLM leaderboard aggregates\n\nOn the leaderboard's 0-100 scale, per trial (final checkpoint): "
            "human-likeness (reading, WUG adjective and past tense, AoA), NLP (BLiMP, supplement, EWoK, entity "
            "tracking, COMPS, GLUE) and their mean. Empty where a component is missing (named).\n\n"
            + markdown(pd.DataFrame(rows)))
    (out / "babylm_aggregates.md").write_text(text)
    return [out / "babylm_aggregates.md"]


WRITERS = {"leaderboard": write_leaderboard, "babylm_aggregates": write_babylm_aggregates,
           "paper_tables": write_paper_tables,
           "curriculum_effects": write_curriculum_effects, "learning_curves": write_learning_curves,
           "blimp_fields": write_blimp_fields, "importance": write_importance}


def write_report(results: data.Results, out: Path) -> Path:
    """Every analysis, then one self-contained HTML page with all tables and figures."""
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for writer in WRITERS.values():
        for path in writer(results, out):
            if path.suffix == ".md":
                sections.append(_markdown_to_html(path.read_text()))
            else:
                encoded = base64.b64encode(path.read_bytes()).decode()
                sections.append(f'<figure><img alt="{path.stem}" src="data:image/png;base64,{encoded}">'
                                f"<figcaption>{path.name}</figcaption></figure>")
    warning = ""
    if results.skipped:
        warning = ("<p class=warn>Unreadable results files skipped: "
                   + ", ".join(html.escape(p) for p in results.skipped) + "</p>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>classit report: {html.escape(str(results.folder))}"
            "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:"
            "collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}"
            ".warn{color:#a00}th{cursor:pointer;background:#f4f4f4}th:hover{background:#e4e4ff}</style>"
            f"<script>{SORT_TABLES}</script></head><body>"
            f"<h1>classit report</h1><p>{html.escape(str(results.folder))}: {len(results.trials)} finished trials</p>"
            + warning + "".join(sections) + "</body></html>")
    (out / "index.html").write_text(page)
    return out / "index.html"


# Every table sorts by the column whose header is clicked (again: the other way): numbers as
# numbers, "-" and empty cells last; no server, no library.
SORT_TABLES = """
document.addEventListener("click", function (event) {
  var th = event.target.closest("th");
  if (!th) return;
  var table = th.closest("table"), column = th.cellIndex;
  var rows = Array.prototype.slice.call(table.rows, 1);
  var descending = th.dataset.order === "asc";
  Array.prototype.forEach.call(table.rows[0].cells, function (cell) { delete cell.dataset.order; });
  th.dataset.order = descending ? "desc" : "asc";
  function key(row) {
    var text = row.cells[column].textContent.trim(), number = parseFloat(text.split(" ")[0]);
    return text === "" || text === "-" ? null : (isNaN(number) ? text : number);
  }
  rows.sort(function (a, b) {
    var x = key(a), y = key(b);
    if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);
    var order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
    return descending ? -order : order;
  });
  rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
});
"""


def _markdown_to_html(text: str) -> str:
    """The subset our writers produce: headings, paragraphs, pipe tables."""
    parts, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                table.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        if table:
            head, *body = table
            parts.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead><tbody>"
                         + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
                         + "</tbody></table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level + 1}>{html.escape(line.lstrip('#').strip())}</h{level + 1}>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(parts)


def main(name: str, argv: list[str] | None = None, prog: str | None = None, description: str | None = None) -> int:
    """An analysis script (or `classit report`): bad input ends in one line on stderr, exit code 2,
    with nothing written."""
    parser = argparse.ArgumentParser(prog=prog or f"analysis/{name}.py", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", nargs="?", default="runs",
                        help="a sweep's folder, <storage>/<sweep>, or its results/; or <storage> for its newest "
                             "sweep (default: ./runs)")
    parser.add_argument("--out", help="report folder (default: <storage>/<sweep>/report)")
    args = parser.parse_args(argv)
    try:
        results = data.load(args.results_dir)
    except (FileNotFoundError, ConfigError) as err:  # ConfigError: a damaged file, named
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else results.folder.resolve().parent / "report"
    try:
        output_folder("--out", out)
    except ConfigError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if name == "report":
        print(write_report(results, out))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for path in WRITERS[name](results, out):
        print(path)
    return 0
