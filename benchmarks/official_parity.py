"""classit beside the official BabyLM 2025 evaluation pipeline: the same checkpoint and data, task
by task, item-level agreement of the predictions and both wall times.

    python benchmarks/official_parity.py --official DIR --python PYTHON --checkpoint CKPT [--blimp DIR] [--run RUN]

`DIR` holds the official pipeline's source (its `evaluation_pipeline/` package, e.g. from
babylm/evaluation-pipeline-2025); `PYTHON` is an interpreter with its pinned requirements
(transformers 4.51.3; torch as here). Neither is part of classit. The official evaluation data is
not needed: small files in each official layout are generated (BLiMP can be the real one, e.g.
`../shared/data/blimp`). Both sides write `predictions.json` in the official results layout and
are compared prediction by prediction (WUG: the chosen completion and its probability).

Tasks: BLiMP, BLiMP supplement, EWoK, entity tracking, WUG adjective, WUG past tense, COMPS,
reading, the seven (Super)GLUE fine-tuning tasks (each with the flags the pipeline's
`eval_finetuning.sh` passes it, read from that script, in both poolings), and with `--run` (a run
folder with BabyLM-mark checkpoints) age of acquisition. classit runs each task as the evaluation jobs an actor runs, in this process; the official side is its
command line, a process per task, as its scripts run it; for AoA, whose command line reads Hub
revisions, its `StepSurprisalExtractor` on each mark's folder and its `AoAEvaluator` on the rows.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

# classit task -> (the official --task, the official data folder)
TASKS = {"blimp": ("blimp", "blimp_filtered"), "blimp_supplement": ("blimp", "supplement_filtered"),
         "ewok": ("ewok", "ewok_filtered"), "entity_tracking": ("entity_tracking", "entity_tracking"),
         "wug_adj": ("wug_adj", "wug_adj_nominalization"), "wug_past": ("wug_past", "wug_past_tense"),
         "comps": ("comps", "comps")}
FINETUNE_TASKS = ("boolq", "multirc", "rte", "wsc", "mrpc", "qqp", "mnli")  # eval_finetuning.sh's
# Each task's two fields the generated pair goes into (MultiRC's question and WSC's pronoun are fixed).
GLUE_FIELDS = {"rte": ("sentence1", "sentence2"), "mrpc": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
               "mnli": ("premise", "hypothesis"), "boolq": ("passage", "question"), "multirc": ("paragraph", "answer"),
               "wsc": ("text", "span1_text")}
NOUNS = ["dog", "cat", "girl", "boy", "bird", "teacher", "baby", "farmer", "horse", "child"]
PROPERTIES = ["can fly .", "has fur .", "can swim .", "is alive .", "eats food .", "can talk .", "has wheels ."]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_layouts(root: Path, blimp: Path | None, seed: int = 0, n: int = 300) -> Path:
    """Small files in each official layout (plain English over a few nouns: any tokenizer splits it)."""
    rng = random.Random(seed)
    noun = lambda: rng.choice(NOUNS)  # noqa: E731
    if blimp is not None:
        shutil.copytree(blimp, root / "blimp_filtered", dirs_exist_ok=True)
    else:
        _jsonl(root / "blimp_filtered" / "agreement.jsonl", [
            {"sentence_good": f"the {a} runs .", "sentence_bad": f"the {a} run .", "field": "morphology",
             "linguistics_term": "agreement", "UID": "agreement"} for a in (noun() for _ in range(n))])
    for uid in ("hypernym", "turn_taking"):
        _jsonl(root / "supplement_filtered" / f"{uid}.jsonl", [
            {"sentence_good": f"a {a} is an animal .", "sentence_bad": f"an animal is a {a} ."}
            for a in (noun() for _ in range(n // 2))])
    _jsonl(root / "ewok_filtered" / "social-relations.jsonl", [
        {"Context1": f"the {a} is next to the {b} .", "Context2": f"the {a} is far from the {b} .",
         "Target1": f"the {a} can touch the {b} .", "Target2": f"the {a} cannot touch the {b} .",
         "Domain": "social-relations", "ContextType": "short", "ContextDiff": "distance", "TargetDiff": "negation"}
        for a, b in ((noun(), noun()) for _ in range(n))])
    for split in ("regular", "ambiref"):
        _jsonl(root / "entity_tracking" / f"{split}.jsonl", [
            {"input_prefix": f"the box holds the {a} . the box holds", "options": [f" the {a} .", f" the {b} .",
                                                                                 " nothing ."], "numops": ops}
            for a, b, ops in ((noun(), noun(), rng.randint(0, 2)) for _ in range(n // 2))])
    # A nonce stem per item, so the first candidate's probability varies (a constant one leaves
    # Spearman's rho undefined, and the pipeline's temperature loop then fails with a KeyError).
    nonce = lambda: "".join(rng.choice("bdglmprst") + rng.choice("aeiou") for _ in range(2))  # noqa: E731
    _jsonl(root / "wug_adj_nominalization" / "wug_adj_nominalization.jsonl", [
        {"sentences": f"this {a} is {w} .\tthis {a} has {w}ness .\tthis {a} has {w}ity .", "ratio": rng.random()}
        for a, w in ((noun(), nonce()) for _ in range(n // 3))])
    _jsonl(root / "wug_past_tense" / "wug_past_tense.jsonl", [
        {"sentences": f"the {a} {w}ed .\tthe {a} {w} .", "ratio": rng.random()}
        for a, w in ((noun(), nonce()) for _ in range(n // 3))])
    for stem in ("comps_base", "comps_wugs", "comps_wugs_dist-before", "comps_wugs_dist-in-between"):
        _jsonl(root / "comps" / f"{stem}.jsonl", [
            {"prefix_acceptable": f"a {a}", "prefix_unacceptable": f"a {b}", "property_phrase": rng.choice(PROPERTIES)}
            for a, b in ((noun(), noun()) for _ in range(n // 4))])
    write_reading(root)
    write_aoa(root)
    write_glue(root)
    return root


def write_glue(root: Path, seed: int = 0, train: int = 160, valid: int = 64) -> None:
    """`glue_filtered/<task>.{train,valid}.jsonl` for every fine-tuning task, in its fields: a label a
    small model can learn from the words (do two sentences name the same things?), so predictions
    that agree say more than a label prior would."""
    rng = random.Random(seed)

    def pair(labels: int = 2) -> tuple[str, str, int]:
        a, b, c = rng.sample(NOUNS, 3)
        label = rng.randrange(labels)  # 0: the same pair; 1: another noun; 2 (MNLI): no second noun
        second = [f"the {a} is near the {b} .", f"the {a} is near the {c} .", f"the {a} is asleep ."][label]
        return f"the {a} is near the {b} .", second, label

    def example(task: str) -> dict:
        first, second, label = pair(3 if task == "mnli" else 2)
        fields = GLUE_FIELDS[task]
        row = {fields[0]: first, fields[1]: second, "label": label}
        if task == "multirc":
            row["question"] = "who is near whom ?"
        if task == "wsc":
            row["span2_text"] = "it"
        return row

    for task in FINETUNE_TASKS:
        for split, n in (("train", train), ("valid", valid)):
            _jsonl(root / "glue_filtered" / f"{task}.{split}.jsonl", [example(task) for _ in range(n)])


def write_reading(root: Path, n: int = 240, seed: int = 0) -> None:
    """`reading/reading_data.csv` with the official columns; times partly driven by word length."""
    import numpy as np
    import pandas as pd

    rng, noise = random.Random(seed), np.random.default_rng(seed)
    rows, prev = [], None
    for _ in range(n):
        item, word = f"the {rng.choice(NOUNS)} saw the", f" {rng.choice(NOUNS)}"
        rows.append({"item": item, "word": word, "prev_item": prev[0] if prev else np.nan,
                     "prev_word": prev[1] if prev else np.nan, "Subtlex_log10": rng.uniform(1, 5),
                     "length": len(word) - 1, "context_length": rng.randint(1, 12),
                     "prev_length": len(prev[1]) - 1 if prev else np.nan})
        prev = (item, word)
    frame = pd.DataFrame(rows)
    for column in ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound", "self_paced_reading_time"):
        frame[column] = 200 + 20 * frame["length"] + 10 * noise.normal(size=n)
    for erp in ("ELAN", "LAN", "N400", "P600", "EPNP", "PNP"):
        frame[erp] = noise.normal(size=n)
    (root / "reading").mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "reading" / "reading_data.csv", index=False)


def write_aoa(root: Path, seed: int = 0) -> None:
    """`aoa/cdi_childes.json` (three contexts per target) and `aoa/cdi_human.csv` (the share of
    children producing each target by month, each learnt at its own age). The targets are short
    phrases: a small vocabulary's one-token word starts below the pipeline's halfway-to-chance
    threshold (chance in bits, log2 300,000 = 18.2), so no fit would keep it; a phrase of several
    tokens starts above it and falls as the model learns."""
    import numpy as np

    rng = random.Random(seed)
    targets = [f"{a} near the {b}" for a, b in zip(NOUNS, NOUNS[3:] + NOUNS[:3])]
    contexts = ["the boy sees the", "the girl likes the", "the babies watch the"]
    (root / "aoa").mkdir(parents=True, exist_ok=True)
    (root / "aoa" / "cdi_childes.json").write_text(json.dumps({t: [{"context": c} for c in contexts] for t in targets}))
    months = np.arange(16, 31)
    rows = [f"{t}," + ",".join(f"{v:.4f}" for v in 1 / (1 + np.exp(-0.8 * (months - rng.uniform(17, 29)))))
            for t in targets]
    (root / "aoa" / "cdi_human.csv").write_text("word," + ",".join(map(str, months)) + "\n" + "\n".join(rows) + "\n")


OFFICIAL_AOA = """
import json, sys
from evaluation_pipeline.AoA_word.eval_util import StepConfig, load_eval
from evaluation_pipeline.AoA_word.evaluation_functions import StepSurprisalExtractor
from evaluation_pipeline.utils import AoAEvaluator
word_path, human_path, marks_path, out_path = sys.argv[1:]
words, contexts = load_eval(word_path, 0)
results = []
for revision, word_count, folder in json.load(open(marks_path)):
    config = StepConfig(track="non-strict-small")
    config.steps, config.word_counts = [revision], [word_count]  # one mark: its folder is the model
    extractor = StepSurprisalExtractor(config=config, model_name=folder, backend="causal", device="cpu")
    results += extractor.analyze_steps(contexts=contexts, target_words=words)["results"]
fit = AoAEvaluator(human_path).compute_curve_fitness({"results": results})
json.dump({"results": results, "curve_fitness": fit["curve_fitness"], "n_words": fit["n_words"]}, open(out_path, "w"))
"""


def parity_aoa(official: Path, python: str, run: Path, data: Path, work: Path) -> None:
    """AoA: every (mark, word, context) surprisal, the words both fits keep, and the score."""
    from classit.evaluate.jobs import ModelCache, aoa_jobs, aoa_scores, run_job, split_tables

    jobs = aoa_jobs([run], str(data))
    marks = work / "aoa_marks.json"
    marks.write_text(json.dumps([[j.revision, j.words_seen, j.checkpoint] for j in jobs]))
    start = time.perf_counter()
    subprocess.run([python, "-c", OFFICIAL_AOA, str(data / "aoa" / "cdi_childes.json"),
                    str(data / "aoa" / "cdi_human.csv"), str(marks), str(work / "official_aoa.json")],
                   cwd=official, check=True, capture_output=True)
    official_s = time.perf_counter() - start
    theirs = json.loads((work / "official_aoa.json").read_text())
    start = time.perf_counter()
    cache, rows, surprisals = ModelCache("cpu"), [], []
    for job in jobs:
        job_rows, detail = split_tables(run_job(job, cache))
        rows, surprisals = rows + job_rows, surprisals + detail
    [score] = next(iter(aoa_scores(jobs, rows, surprisals).values()))
    classit_s = time.perf_counter() - start
    if score["error"]:
        raise RuntimeError(f"classit aoa: {score['error']}")
    key = lambda r: (r["step"], r["target_word"], r["context_id"])  # noqa: E731
    ours = {key(r): r["surprisal"] for r in surprisals}
    diffs = [abs(ours[key(r)] - r["surprisal"]) / max(abs(r["surprisal"]), 1e-12) for r in theirs["results"]]
    same = sum(d <= 1e-6 for d in diffs)
    diff = abs(score["value"] - theirs["curve_fitness"]) / max(abs(theirs["curve_fitness"]), 1e-12)
    print(f"{'aoa (' + str(len(jobs)) + ' marks)':<26}{len(diffs):>8}{same:>11}{max(diffs):>20.2e}{classit_s:>11.1f}"
          f"{official_s:>12.1f}{score['value']:>15.6g}{theirs['curve_fitness']:>15.6g}{diff:>12.1e}"
          f"  words kept: {score['n_items']} / {theirs['n_words']}")


def official_finetune_flags(official: Path) -> dict[str, list[str]]:
    """Each task's flags as the pipeline's `eval_finetuning.sh` passes them, its defaults in place
    of its variables; read from the script itself, so classit's own task table is checked, not used."""
    script = (official / "eval_finetuning.sh").read_text().replace("\\\n", " ")
    defaults = dict(re.findall(r"^(\w+)=\$\{\d+:-([^}]*)\}", script, re.M))
    flags, looped = {}, None
    for line in script.splitlines():
        if found := re.match(r"\s*for task in \{([\w,]+)\}", line):
            looped = found.group(1).split(",")
        elif line.strip() == "done":
            looped = None
        elif "evaluation_pipeline.finetune.run" in line:
            words = [re.sub(r"\$(\w+)", lambda m: defaults.get(m.group(1), m.group(0)), w) for w in shlex.split(line)]
            kept, name = [], None
            for word in words[3:]:  # after `python -m evaluation_pipeline.finetune.run`
                name = word if word.startswith("--") else name
                if name in ("--num_labels", "--batch_size", "--num_epochs", "--sequence_length", "--metrics",
                            "--metric_for_valid", "--seed"):
                    kept.append(word)
            task = words[words.index("--task") + 1]
            for each in (looped if task == "$task" else [task]):
                flags[each] = kept
    return flags


def parity_finetune(official: Path, python: str, checkpoint: Path, data: Path, work: Path, task: str,
                    flags: list[str], pooling: str) -> None:
    """A fine-tuning task: every validation prediction and the metrics, CPU, both sides, with the
    flags of the pipeline's `eval_finetuning.sh` but a learning rate of 1e-3 (at its 3e-5 a tiny
    model on 160 examples learns only the label prior, on both sides, and identical predictions
    would say nothing). `official` pooling: the pipeline's defaults (right padding, first
    position); `final`: its `--take_final --padding_side left`, the last real token."""
    from classit.evaluate.tasks.finetune import FinetuneSettings, finetune

    glue, work = data / "glue_filtered", work / f"{task}-{pooling}"
    pooling_flags = ["--take_final", "--padding_side", "left"] if pooling == "final" else []
    start = time.perf_counter()
    subprocess.run([python, "-m", "evaluation_pipeline.finetune.run", "--model_name_or_path", str(checkpoint),
                    "--train_data", str(glue / f"{task}.train.jsonl"), "--valid_data", str(glue / f"{task}.valid.jsonl"),
                    "--predict_data", str(glue / f"{task}.valid.jsonl"), "--task", task, "--learning_rate", "1e-3",
                    "--results_dir", str(work), *flags, *pooling_flags], cwd=official, check=True, capture_output=True)
    official_s = time.perf_counter() - start
    start = time.perf_counter()
    scores, ours, _ = finetune(checkpoint, task, data, FinetuneSettings(learning_rate=1e-3), "cpu", pooling)
    classit_s = time.perf_counter() - start
    folder = work / checkpoint.name / "main" / "finetune" / task
    theirs = [p["pred"] for p in json.loads((folder / "predictions.json").read_text())[task]["predictions"]]
    same = sum(a == b for a, b in zip(ours, theirs))
    official_metrics = dict(line.split(": ") for line in (folder / "results.txt").read_text().splitlines())
    for metric, value in scores.items():
        theirs_value = float(official_metrics[metric])
        diff = abs(value - theirs_value) / max(abs(theirs_value), 1e-12)
        print(f"{task + ':' + pooling + ':' + metric:<26}{len(theirs):>8}{same:>11}{'':>20}{classit_s:>11.1f}"
              f"{official_s:>12.1f}{value:>15.6g}{theirs_value:>15.6g}{diff:>12.1e}")


def parity_reading(official: Path, python: str, checkpoint: Path, data: Path, work: Path) -> None:
    """Reading: every row's surprisal and its previous word's, and both scores."""
    import math

    start = time.perf_counter()
    subprocess.run([python, "-m", "evaluation_pipeline.reading.run", "--model_path_or_name", str(checkpoint),
                    "--backend", "causal", "--data_path", str(data / "reading" / "reading_data.csv"),
                    "--output_dir", str(work / "official")], cwd=official, check=True, capture_output=True)
    official_s = time.perf_counter() - start
    classit_s, rows = run_classit(checkpoint, "reading", data, work / "classit")
    folder = lambda side: work / side / checkpoint.name / "main" / "zero_shot" / "causal" / "reading"  # noqa: E731
    ours, theirs = ({p["id"]: p for p in json.loads((folder(side) / "predictions.json").read_text())["reading"]
                     ["predictions"]} for side in ("classit", "official"))
    def row_diff(i: int, p: dict) -> float:
        known = [k for k in ("pred", "prev_pred") if p[k] is not None and not math.isnan(p[k])]
        return max(abs(ours[i][k] - p[k]) / max(abs(p[k]), 1e-12) for k in known)

    diffs = [row_diff(i, p) for i, p in theirs.items()]
    same = sum(d <= 1e-6 for d in diffs)  # surprisals equal to 1e-6 relative
    def gains(name: str) -> dict[str, float]:  # the official R^2 fits, as its score formula takes them
        fits = [json.loads(line) for line in (folder("official") / name).read_text().splitlines()]
        return {f["Predicted variable"]: 100 * f["Change in R2 from baseline"]
                / (1 - (f["R2"] - f["Change in R2 from baseline"])) for f in fits}

    eye = gains("predictive_power.jsonl")
    official_scores = {"eye_tracking": sum(v for k, v in eye.items() if k.startswith("RT")) / 4,
                       "self_paced_reading": gains("predictive_power_spillover.jsonl")["self_paced_reading_time"]}
    for row in (r for r in rows if r["subtask"] in official_scores):
        theirs_score = official_scores[row["subtask"]]
        diff = abs(row["value"] - theirs_score) / max(abs(theirs_score), 1e-12)
        print(f"{'reading:' + row['subtask'][:9]:<26}{len(theirs):>8}{same:>11}"
              f"{max(diffs):>20.2e}{classit_s:>11.1f}{official_s:>12.1f}{row['value']:>15.6g}{theirs_score:>15.6g}"
              f"{diff:>12.1e}")


def run_official(official: Path, python: str, checkpoint: Path, task: str, data: Path, out: Path) -> float:
    official_task, folder = TASKS[task]
    start = time.perf_counter()
    subprocess.run([python, "-m", "evaluation_pipeline.sentence_zero_shot.run", "--model_path_or_name",
                    str(checkpoint), "--backend", "causal", "--task", official_task, "--data_path", str(data / folder),
                    "--save_predictions", "--output_dir", str(out)], cwd=official, check=True, capture_output=True)
    return time.perf_counter() - start


def run_classit(checkpoint: Path, task: str, data: Path, out: Path) -> tuple[float, list[dict]]:
    from classit.evaluate.jobs import EvalJob, ModelCache, run_job

    start = time.perf_counter()
    rows = run_job(EvalJob(str(checkpoint), task, str(data), export_dir=str(out)), ModelCache("cpu"))
    if rows[0]["error"]:
        raise RuntimeError(f"classit {task}: {rows[0]['error']}")
    return time.perf_counter() - start, rows


def predictions(root: Path, checkpoint: Path, task: str) -> dict[str, dict]:
    from classit.evaluate.export import ZERO_SHOT_FOLDERS

    path = root / checkpoint.name / "main" / "zero_shot" / "causal" / ZERO_SHOT_FOLDERS[task] / TASKS[task][1]
    found = json.loads((path / "predictions.json").read_text())
    return {p["id"]: p for uid in found.values() for p in uid["predictions"]}


def compare(ours: dict[str, dict], theirs: dict[str, dict]) -> tuple[int, int, float]:
    """(items, identical choices, largest relative difference of WUG probabilities)."""
    same = sum(ours.get(i, {}).get("pred") == p["pred"] for i, p in theirs.items())
    prob = max((abs(ours[i]["prob"] - p["prob"]) / max(abs(p["prob"]), 1e-12)
                for i, p in theirs.items() if "prob" in p and i in ours), default=0.0)
    return len(theirs), same, prob


def official_score(task: str, out: Path, checkpoint: Path, data: Path) -> float:
    """The official side's task score: the average its own report prints (to 2 decimals), or for
    WUG Spearman's rho recomputed from its predicted probabilities (the report rounds it)."""
    from classit.evaluate.export import ZERO_SHOT_FOLDERS

    folder = out / checkpoint.name / "main" / "zero_shot" / "causal" / ZERO_SHOT_FOLDERS[task] / TASKS[task][1]
    if not task.startswith("wug"):
        report = (folder / "best_temperature_report.txt").read_text().split("### AVERAGE")[1]
        return float(report.split("\n")[1])
    from scipy.stats import spearmanr

    ratios = [json.loads(line)["ratio"] for path in sorted((data / TASKS[task][1]).glob("*.jsonl"))
              for line in path.read_text().splitlines() if line.strip()]
    theirs = predictions(out, checkpoint, task)
    return float(spearmanr([theirs[f"{task}_{i}"]["prob"] for i in range(len(ratios))], ratios)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="the official pipeline's source folder")
    parser.add_argument("--python", required=True, help="a Python with the official pipeline's requirements")
    parser.add_argument("--checkpoint", type=Path, required=True, help="an HF checkpoint folder")
    parser.add_argument("--blimp", type=Path, help="a BLiMP folder in the official layout (default: generated)")
    parser.add_argument("--run", type=Path, help="a run folder with BabyLM-mark checkpoints, for AoA")
    parser.add_argument("--work", type=Path, default=Path("runs/parity"))
    parser.add_argument("--tasks", help="comma-separated (default: every task; aoa where --run is given)")
    args = parser.parse_args()
    tasks = args.tasks.split(",") if args.tasks else [*TASKS, "reading", *FINETUNE_TASKS, *(["aoa"] if args.run else [])]
    if "aoa" in tasks and not args.run:
        parser.error("--tasks aoa needs --run")
    data = write_layouts(args.work / "data", args.blimp)
    checkpoint = args.checkpoint.resolve()
    import transformers

    from classit.evaluate.catalog import TIED_METRIC

    transformers.utils.logging.disable_progress_bar()
    finetune_flags = official_finetune_flags(args.official)  # the script read once, for every task
    print(f"{'task':<26}{'items':>8}{'identical':>11}{'max rel. prob diff':>20}{'classit s':>11}{'official s':>12}"
          f"{'classit score':>15}{'official':>15}{'rel. diff':>12}")
    for task in tasks:
        if task == "reading":
            parity_reading(args.official.resolve(), args.python, checkpoint, data.resolve(), args.work.resolve())
            continue
        if task in FINETUNE_TASKS:
            for pooling in ("official", "final"):
                parity_finetune(args.official.resolve(), args.python, checkpoint, data.resolve(), args.work.resolve(),
                                task, finetune_flags[task], pooling)
            continue
        if task == "aoa":
            parity_aoa(args.official.resolve(), args.python, args.run.resolve(), data.resolve(), args.work.resolve())
            continue
        official_s = run_official(args.official.resolve(), args.python, checkpoint, task, data.resolve(),
                                  (args.work / "official").resolve())
        classit_s, rows = run_classit(checkpoint, task, data, args.work / "classit")
        items, same, prob = compare(predictions(args.work / "classit", checkpoint, task),
                                    predictions(args.work / "official", checkpoint, task))
        score = next(r["value"] for r in rows if r["subtask"] == "average" and r["metric"] != TIED_METRIC)
        theirs = official_score(task, (args.work / "official").resolve(), checkpoint, data)
        shown = round(score, 2) if not task.startswith("wug") else score  # the official report's precision
        diff = abs(shown - theirs) / max(abs(theirs), 1e-12)
        print(f"{task:<26}{items:>8}{same:>11}{prob:>20.2e}{classit_s:>11.1f}{official_s:>12.1f}{score:>15.6g}"
              f"{theirs:>15.6g}{diff:>12.1e}")


if __name__ == "__main__":
    main()
