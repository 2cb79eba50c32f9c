"""`classit pretrain ...`: the command line. Bad input ends in one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from classit.config import ConfigError, RunConfig, held_by, load_config, output_folder


# The embedded default of every command that trains: the demo sweep's config (its sweep section
# is read by `classit sweep` alone), so `classit pretrain` trains the demo's base as the sweep does.
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "demo.yaml"
QA_DEMO = DEMO_CONFIG.with_name("qa_demo.yaml")  # `classit generate-qa`'s: the synthetic teacher


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: sweeps/configs/demo.yaml, the embedded demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set pretrain.learning_rate=1e-4 (repeatable)")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (distributed.num_workers)")
    parser.add_argument("--zero-stage", type=int, help="DeepSpeed ZeRO stage 0-3 (distributed.zero_stage)")
    parser.add_argument("--gpu", action="store_true", default=None, help="train on GPUs (distributed.use_gpu)")
    parser.add_argument("--address", default=None, help="Ray cluster address ('auto' on a ray up head)")


def _load(args) -> object:
    overrides = list(args.overrides)
    for flag, key in (("num_workers", "distributed.num_workers"), ("zero_stage", "distributed.zero_stage"),
                      ("gpu", "distributed.use_gpu")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    cfg = load_config(args.config or DEMO_CONFIG, overrides)
    output_folder("run.storage_path", cfg.run.storage_path)
    output_folder("run.cache_dir", cfg.run.cache_dir)
    _quiet_progress_bars()
    return cfg


def _quiet_progress_bars() -> None:
    """The driver's corpus and data preparation prints its own lines; library progress bars
    would bury them (and a one-line error) on stderr."""
    import datasets
    from huggingface_hub.utils import disable_progress_bars

    datasets.disable_progress_bars()
    disable_progress_bars()  # transformers reads this when it is imported (not here: it brings torch)
    if "transformers" in sys.modules:  # imported already: it keeps its own switch
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def cmd_pretrain(args) -> int:
    cfg = _load(args)
    from classit.ray_session import ray_session
    from classit.train.runner import prepare_pretraining, run_pretraining

    prepared = prepare_pretraining(cfg)  # corpus and budget, before Ray starts
    with ray_session(args.address, holds=[cfg.distributed.held()]), _resumable_on_ctrl_c("pretraining", prepared[0]):
        result = run_pretraining(cfg, prepared)
    return _finish(result)


def cmd_instruct(args) -> int:
    for flag, key in (("curriculum", "instruct.curriculum"), ("mix_ratio", "instruct.mix_ratio")):
        if getattr(args, flag) is not None:
            args.overrides.append(f"{key}={getattr(args, flag)}")
    cfg = _load(args)
    base = checkpoint_folder("--base", args.base)
    from classit.generate.job import ensure_generated
    from classit.train.instruct import prepare_instruct, train_instruct
    from classit.ray_session import ray_session

    ensure_generated(cfg, args.address)  # teacher-written sets the config names: reused, or made now
    job = prepare_instruct(cfg, base)  # data checks, plan and budget, before Ray starts
    with ray_session(args.address, holds=[job.cfg.distributed.held()]), \
            _resumable_on_ctrl_c("instruction tuning", job.cfg):
        result = train_instruct(job)
    return _finish(result)


def at_least(flag: str, value: float, least: float) -> None:
    """A numeric flag no config field validates, checked before Ray starts."""
    if value < least:
        raise ConfigError(f"{flag} {value:g}: must be at least {least:g}")


def checkpoint_folder(flag: str, path: str) -> Path:
    """A checkpoint argument, checked before Ray starts: a Hugging Face checkpoint folder."""
    if not (Path(path) / "config.json").is_file():
        from classit.hub import revisions

        try:  # a run's folder, likely meant for its final checkpoint: named, not guessed
            hint = f" (a run's folder: its final checkpoint is {revisions([Path(path)])['main']})"
        except (FileNotFoundError, ConfigError):
            hint = ""
        raise ConfigError(f"{flag} {path}: not a Hugging Face checkpoint folder (no config.json){hint}")
    return Path(path)


def evaluation_tasks(args) -> list[str]:
    """`classit evaluate`'s flags checked before Ray starts (each failure one line naming the flag): its tasks."""
    from classit.evaluate.catalog import task_names_problem
    from classit.evaluate.tasks.inputs import missing_input
    from classit.evaluate.tasks import zero_shot

    at_least("--actors", args.actors, 1)
    at_least("--gpus-per-actor", args.gpus_per_actor, 0)
    for model in args.model:
        checkpoint_folder("--model", model)
    output_folder("--output", args.output)
    output_folder("--export", args.export)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if problem := task_names_problem(tasks):
        raise ConfigError(f"--tasks: {problem}")
    if "aoa" in tasks:
        raise ConfigError("--tasks: aoa scores a run's series of BabyLM-mark checkpoints, not one checkpoint: "
                          "use classit aoa RUN_DIR ...")
    if args.data_dir is None:
        from classit.data.synthetic import cached_probe_data, unprobed_tasks

        if args.export:
            raise ConfigError("--export needs --data-dir: the leaderboard takes the official tasks' predictions, "
                              "not those of the synthetic grammar's probe sets")
        if problem := unprobed_tasks(tasks, "--data-dir"):
            raise ConfigError(f"--tasks: {problem}")
        args.data_dir = str(cached_probe_data(RunConfig().cache_dir))  # where the demo sweep has them
    if not Path(args.data_dir).is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: no such folder")
    for task in tasks:
        if missing := missing_input(task, args.data_dir, args.fast):
            raise ConfigError(f"--data-dir: {missing}")
    subsets = [t for t in tasks if t in zero_shot.TASKS and zero_shot.scores_seeded_subset(t, args.data_dir, args.fast)]
    if args.export and subsets:
        raise ConfigError(f"--export with --fast: --data-dir has no official fast set for {', '.join(subsets)}, whose "
                          f"seeded subset the leaderboard does not take (export without --fast, or from fast_eval)")
    return tasks


def cmd_evaluate(args) -> int:
    tasks = evaluation_tasks(args)
    from classit.evaluate import export
    from classit.evaluate.actors import EvaluationPool
    from classit.evaluate.catalog import HEADLINE_SUBTASKS, tie_warning
    from classit.evaluate.jobs import EvalJob
    from classit.ray_session import ray_session

    export_dir = str(Path(args.export).resolve()) if args.export else ""
    jobs = [EvalJob(str(Path(m).resolve()), t, str(Path(args.data_dir).resolve()), trial=Path(m).name,
                    fast=args.fast, export_dir=export_dir, pooling=args.pooling) for m in args.model for t in tasks]
    gpus = held_by(f"--actors {args.actors}, --gpus-per-actor {args.gpus_per_actor:g}", args.actors,
                   {"GPU": args.gpus_per_actor})
    with ray_session(args.address, holds=[gpus]):
        pool = EvaluationPool(num_actors=args.actors, num_gpus=args.gpus_per_actor)
        rows = pool.run(jobs, results_dir=args.output, show_progress=True)
    width = max(len("model"), *(len(job.trial) for job in jobs))  # whole names: marks differ at their end
    print(f"{'model':<{width}} {'task':<18} {'subtask':<18} {'metric':<11} {'value':>8} {'n':>7}")
    for row in rows:
        if row["subtask"] in HEADLINE_SUBTASKS or row["metric"] == "error":
            value = f"{row['value']:8.3f}" if row["metric"] != "error" else "   error"
            print(f"{row['trial']:<{width}} {row['task']:<18} {row['subtask'] or '-':<18} {row['metric']:<11} "
                  f"{value} {row['n_items']:>7}  {row['error']}")
    for job in {job.checkpoint: job for job in jobs}.values():
        if warning := tie_warning(rows, job.checkpoint):
            print(f"warning: {job.trial}: {warning}")
    print(f"{len(rows)} rows written to {args.output}")
    if export_dir:
        for model in args.model:
            print(f"leaderboard predictions: {export.collate(export_dir, Path(model).name)}")
    return 1 if any(r["metric"] == "error" for r in rows) else 0


def cmd_sweep(args) -> int:
    if args.name is not None:
        args.overrides.append(f"sweep.name={args.name}")
    from classit.analysis.trials import failed_evaluations
    from classit.sweep.plan import describe_plan, validate
    from classit.sweep.runner import run_sweep

    cfg = validate(_load(args))
    if args.dry_run:
        print(describe_plan(cfg))
        return 0
    board = run_sweep(cfg, address=args.address, resume=args.resume, verbose=args.verbose)
    failed = failed_evaluations(board)
    if failed:
        print(f"classit: error: evaluation failed for trial(s) {', '.join(failed)} (status eval_failed; "
              f"their error rows are in eval_scores)", file=sys.stderr)
        return 1
    return 0 if not board.empty else 1


def cmd_generate_qa(args) -> int:
    args.config = args.config or str(QA_DEMO)
    cfg = _load(args)
    from classit.generate.job import ensure_generated

    # Articles, teacher and template checked before Ray starts, and Ray started only for a set not made yet.
    jobs = ensure_generated(cfg, args.address, verbose=args.verbose, only=args.dataset)
    if not jobs:
        raise ConfigError(f"{args.config}: no instruction dataset with a generate section (instruct.datasets.NAME."
                          f"generate)")
    for job in jobs:
        print(f"records: {job.folder / 'records.parquet'}")
    return 0


def cmd_report(args) -> int:
    from classit.analysis.report import main as analysis_main

    return analysis_main("report", [args.results_dir, *(["--out", args.out] if args.out else [])],
                         prog="classit report")


def _root_cause(error: BaseException) -> str:
    """One line out of Ray's error (which carries each worker's traceback): the worker's own exception."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return raised[-1] if raised else (lines[0] if lines else type(error).__name__)


def cmd_export_hub(args) -> int:
    from classit.hub import export_hub

    output_folder("--out", args.out)
    for revision, checkpoint in export_hub([Path(r) for r in args.runs], Path(args.out)).items():
        print(f"{revision:<10} {checkpoint}")
    print(f"repository: {args.out} (git lfs install; git remote add origin <hub url>; git push --all origin)")
    return 0


def cmd_aoa(args) -> int:
    from classit.evaluate.actors import EvaluationPool
    from classit.evaluate.jobs import aoa_jobs
    from classit.evaluate.tasks.inputs import missing_input
    from classit.ray_session import ray_session

    at_least("--actors", args.actors, 1)
    output_folder("--output", args.output)
    output_folder("--export", args.export)
    runs = [Path(r).resolve() for r in args.runs]
    if missing := missing_input("aoa", args.data_dir):
        raise ConfigError(f"--data-dir: {missing}")
    jobs = aoa_jobs(runs, str(Path(args.data_dir).resolve()), trial=runs[-1].name,
                    export_dir=str(Path(args.export).resolve()) if args.export else "")
    with ray_session(args.address):
        rows = EvaluationPool(num_actors=args.actors).run(jobs, results_dir=args.output, show_progress=True)
    [score] = [r for r in rows if r["task"] == "aoa" and r["revision"] == "main"]
    if score["error"]:
        print(f"classit: error: aoa: {score['error']}", file=sys.stderr)
        return 1
    print(f"aoa: Pearson r {score['value']:.4f} over {score['n_items']} words, {len(jobs)} checkpoints "
          f"({', '.join(j.revision for j in jobs)}); rows in {args.output}")
    return 0


@contextmanager
def _resumable_on_ctrl_c(what: str, cfg):
    """Ctrl-C during a Ray Train run: Ray Train's own handler stops the workers, then ends the
    driver's wait with a bare `SystemExit(1)` (Ray's note on it: "sys.exit is called"). Made the
    interruption it is, naming the checkpoint the same command resumes from: Ray Train resumes a run
    of the same name and storage from the newest checkpoint it registered (ones the workers wrote
    while the run was stopping are not, and are written again)."""
    try:
        yield
    except SystemExit as stop:
        if "sys.exit is called" not in getattr(stop, "ray_terminate_msg", ""):
            raise
        from ray.train import Result

        from classit.results import run_dir, storage_uri

        folder = run_dir(storage_uri(str(cfg.run.storage_path)), cfg.run.name)
        try:
            checkpoint = Result.from_path(folder).checkpoint
        except RuntimeError:  # no checkpoint registered yet
            checkpoint = None
        then = (f"the same command resumes it from {checkpoint.path}" if checkpoint else
                f"no checkpoint was saved yet: the same command starts {folder} over")
        raise KeyboardInterrupt(f"{what} stopped; {then}") from None


def _finish(result) -> int:
    if result.error:
        print(f"classit: error: training failed: {_root_cause(result.error)}", file=sys.stderr)
        return 1
    metrics = result.metrics or {}
    print(f"final checkpoint: {result.checkpoint.path if result.checkpoint else '-'}")
    print(f"stage {metrics.get('stage')}  step {metrics.get('step')}  words seen {metrics.get('words_seen', 0):,}  "
          f"val_loss {metrics.get('val_loss', float('nan')):.4f}  input words {metrics.get('input_words', 0):,}  "
          f"exposure words {metrics.get('exposure_words', 0):,}")
    return 0


def cmd_status(args) -> int:
    from classit.results import sweep_folder
    from classit.sweep.status import format_status, sweep_status

    print(format_status(sweep_status(sweep_folder(Path(args.sweep_dir)))))
    return 0


def _training_commands(sub) -> None:
    """pretrain, instruct, generate-qa: the commands that make models and data."""
    pretrain = sub.add_parser("pretrain", help="pretrain a base model with Ray Train + DeepSpeed")
    _common(pretrain)
    pretrain.set_defaults(func=cmd_pretrain)
    instruct = sub.add_parser("instruct", help="instruction-tune a base checkpoint through a curriculum")
    _common(instruct)
    instruct.add_argument("--base", required=True, help="base model: an HF checkpoint folder")
    instruct.add_argument("--curriculum", help="pt, switch, wiki, merged, switch_wiki or wiki_switch")
    instruct.add_argument("--mix-ratio", type=float, help="merged only: share of conversational items")
    instruct.set_defaults(func=cmd_instruct)
    qa = sub.add_parser("generate-qa", help="teacher-written Q&A for the config's generated instruction datasets "
                                            "(Ray Data, cached, resumable)")
    qa.add_argument("--config", help="YAML config (default: sweeps/configs/qa_demo.yaml, the synthetic teacher)")
    qa.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (repeatable)")
    qa.add_argument("--dataset", help="only this dataset of instruct.datasets")
    qa.add_argument("--address", default=None, help="Ray cluster address")
    qa.add_argument("--verbose", action="store_true", help="also show Ray Data's progress and its workers' output")
    qa.set_defaults(func=cmd_generate_qa, num_workers=None, zero_stage=None, gpu=None)


def _evaluation_commands(sub) -> None:
    """evaluate, aoa, export-hub: scoring checkpoints and publishing them."""
    evaluate = sub.add_parser("evaluate", help="score checkpoints on the BabyLM tasks with a pool of Ray actors")
    evaluate.add_argument("--model", action="append", required=True, help="HF checkpoint folder (repeatable)")
    from classit.evaluate.catalog import SERIES, TASKS

    one_checkpoint = ", ".join(task for task in TASKS if task not in SERIES)  # a series: classit aoa
    evaluate.add_argument("--tasks", default="blimp", help=f"comma-separated: {one_checkpoint}")
    evaluate.add_argument("--data-dir", help="folder holding one sub-folder per task (default: the probe sets "
                                              "generated from the synthetic grammar, for blimp and ewok, as the "
                                              "demo sweep scores)")
    evaluate.add_argument("--fast", action="store_true", help="a fixed, seeded subset of each subtask")
    evaluate.add_argument("--pooling", choices=("final", "official"), default="final",
                          help="(Super)GLUE head input: final = the last real token; official = right padding and "
                               "the first position, as the official pipeline (for leaderboard-comparable numbers)")
    evaluate.add_argument("--actors", type=int, default=2, help="evaluation actors (the machine's cores shared "
                                                                "out among them)")
    evaluate.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPU fraction per actor")
    evaluate.add_argument("--output", default="runs/eval/results/eval_scores", help="Parquet folder for the rows")
    evaluate.add_argument("--export", help="also write predictions in the BabyLM leaderboard layout here")
    evaluate.add_argument("--address", default=None, help="Ray cluster address")
    evaluate.set_defaults(func=cmd_evaluate)
    aoa = sub.add_parser("aoa", help="age of acquisition from a run's own BabyLM-mark checkpoints")
    aoa.add_argument("runs", nargs="+", help="run folders (a base's and its instruction-tuning run)")
    aoa.add_argument("--data-dir", required=True, help="holds aoa/cdi_childes.json and aoa/cdi_human.csv")
    aoa.add_argument("--export", help="also write AoA_word/surprisal.json in the leaderboard layout here")
    aoa.add_argument("--actors", type=int, default=2, help="evaluation actors (the marks spread over them)")
    aoa.add_argument("--output", default="runs/eval/results/eval_scores",
                     help="Parquet folder for the score rows (the surprisals go to aoa_surprisal beside it)")
    aoa.add_argument("--address", default=None, help="Ray cluster address")
    aoa.set_defaults(func=cmd_aoa)
    hub = sub.add_parser("export-hub", help="a run's checkpoints as a Hub repository: main and one chck_<N>M "
                                            "branch per BabyLM mark")
    hub.add_argument("runs", nargs="+", help="run folders (a base's and its instruction-tuning run: marks "
                                             "count total exposure)")
    hub.add_argument("--out", required=True, help="the repository to create (an empty or new folder)")
    hub.set_defaults(func=cmd_export_hub)


def _sweep_commands(sub) -> None:
    """sweep, status, report: a sweep run, followed and read."""
    sweep = sub.add_parser("sweep", help="Ray Tune + Optuna sweep over curricula, mix ratios and learning rates")
    _common(sweep)
    sweep.add_argument("--name", help="sweep name (sweep.name); results go to <storage>/<name>")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this name")
    sweep.add_argument("--dry-run", action="store_true", help="print the expanded plan and cost estimate, then exit")
    sweep.add_argument("--verbose", action="store_true",
                       help="also show the output of Ray's workers (Train, DeepSpeed, datasets)")
    sweep.set_defaults(func=cmd_sweep)
    status = sub.add_parser("status", help="how a running or finished sweep stands, from its folder's files")
    status.add_argument("sweep_dir", nargs="?", default="runs",
                        help="<storage>/<sweep>, or <storage> for its newest sweep (default: ./runs)")
    status.set_defaults(func=cmd_status)
    report = sub.add_parser("report", help="tables, figures and an HTML report from a sweep's results")
    report.add_argument("results_dir", nargs="?", default="runs",
                        help="a sweep's folder, <storage>/<sweep>, or its results/; or <storage> for its newest "
                             "sweep (default: ./runs)")
    report.add_argument("--out", help="report folder (default: <storage>/<sweep>/report)")
    report.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand, its flags, and the `cmd_*` function that runs it."""
    parser = argparse.ArgumentParser(prog="classit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_commands in (_training_commands, _evaluation_commands, _sweep_commands):
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f"classit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: one line, and the shell's status for it
        print(f"classit: interrupted{f': {err}' if str(err) else ''}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - Ray's failure carries every worker's traceback: one line instead
        from ray.train import TrainingFailedError

        if not isinstance(err, TrainingFailedError):
            raise
        print(f"classit: error: training failed: {_root_cause(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
