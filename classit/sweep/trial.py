"""One sweep trial, as a Ray Tune function: base model, curriculum run, evaluation, one result row.

The trial's training is a Ray Train run (`TorchTrainer`, DeepSpeed workers) whose reports reach
Tune through `TuneReportCallback`; its run name is derived from the trial's parameters, so a
retried or resumed trial continues that run from its newest checkpoint. When training is done
and its workers are gone, the checkpoints go to the sweep's evaluation service and the trial
waits for the scores. A trial whose parameters already have a finished row (a sweep resumed
after its driver died, or a search drawing the same parameters again) reports that row again
instead of training twice; if their first trial is still running, it waits for that row.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from classit.config import ClassitConfig, config_hash, config_json
from classit.evaluate.aggregates import aggregates
from classit.evaluate.catalog import objective_key, score_columns, tie_warning

TRIALS, TRAIN_METRICS, EVAL_SCORES = "trials", "train_metrics", "eval_scores"
# In a trial's last report to Tune when it ends with its row (trained and scored, or found done):
# a trial Tune ended without it was stopped early (ASHA) or failed.
FINAL_REPORT = "final"
# ... with `tie_warning`'s line about its final checkpoint's scores ("" when they are sound).
TIE_WARNING = "tie_warning"


def scores_of(rows: list[dict], checkpoint: str, columns: list[str]) -> dict[str, float]:
    """One checkpoint's scores among `columns` (`score_columns`), keyed task:subtask:metric."""
    scores = {f"{r['task']}:{r['subtask']}:{r['metric']}": float(r["value"]) for r in rows
              if r["checkpoint"] == checkpoint and not r["error"]}
    return {k: v for k, v in scores.items() if k in columns}


def trial_params(config: dict, seeds: list[int]) -> dict[str, Any]:
    """A Tune trial's parameters, its seed included (grid: in the config; search: by repeat index)."""
    params = dict(config.get("params", config))
    repeat = params.pop("__trial_index__", None)  # Tune's Repeater: the same draw once per seed
    params.setdefault("seed", seeds[repeat or 0])
    return params


def unfinished_row(sweep_name: str, params: dict[str, Any], error: BaseException | None) -> dict:
    """The `trials` row of a trial that ended without finishing: stopped early, or failed."""
    return {"sweep": sweep_name, "trial": trial_key(params), "run": f"{sweep_name}-{trial_key(params)}",
            "status": "error" if error else "stopped",
            "error": str(error).strip().splitlines()[-1][:500] if error else "", **param_columns(params)}


def param_columns(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as JSON (`params`) and one `param.<name>` column each (lists as JSON)."""
    return {"params": json.dumps(params, sort_keys=True),
            **{f"param.{name}": (json.dumps(value) if isinstance(value, list) else value)
               for name, value in params.items()}}


def trial_key(params: dict[str, Any]) -> str:
    return config_hash(json.dumps(params, sort_keys=True))[:10]


def base_val_loss(cfg: ClassitConfig) -> float | None:
    """The base model's pretraining validation loss, as its cache record keeps it."""
    from classit.sweep.services import base_record

    record = base_record(cfg)
    return record.get("val_loss") if record is not None else None


def finished_row(results_root: str, key: str) -> dict | None:
    from classit.results import read_table

    table = read_table(f"{results_root}/{TRIALS}")
    if table.empty:
        return None
    done = table[(table["trial"] == key) & (table["status"] == "finished")]
    return done.iloc[0].to_dict() if len(done) else None


def evaluation_jobs(cfg: ClassitConfig, result, base: Path, data_dir: str, key: str):
    """The trial's checkpoints to score (the final one, and every stage end under `checkpoints: all`)
    with their metrics, and one job per checkpoint and task; AoA scores the base's marks and this
    run's, one job each, fitted on the final checkpoint."""
    from classit.evaluate.catalog import SERIES
    from classit.evaluate.jobs import EvalJob, aoa_jobs

    ecfg = cfg.evaluation
    final = result.checkpoint
    checkpoints = [(final, result.metrics)]
    if ecfg.checkpoints == "all":
        checkpoints = [(c, m) for c, m in result.best_checkpoints if c.path != final.path] + checkpoints
    common = {"trial": key, "fast": ecfg.fast, "config": config_json(cfg)}
    jobs = [EvalJob(c.path, task, data_dir, words_seen=int(m.get("exposure_words", -1)),
                    pooling=ecfg.finetune_pooling, **common)
            for c, m in checkpoints for task in ecfg.tasks if task not in SERIES]
    if "aoa" in ecfg.tasks:
        jobs += aoa_jobs([base.parent, Path(final.path).parent], data_dir, series=final.path, **common)
    return checkpoints, jobs


def final_scores(rows: list[dict], final: str, columns: list[str]) -> dict[str, float]:
    """The final checkpoint's scores and the BabyLM aggregates of them."""
    scores = scores_of(rows, final, columns)
    return scores | {name: aggregate.value for name, aggregate in aggregates(scores).items()}


def trained_on(result, base: Path) -> str:
    """The processor that trained the trial's final checkpoint; for `pt`, which trains nothing, the base's."""
    from classit.train.checkpoints import load_trainer_state, read_trainer_state

    try:
        return read_trainer_state(result.checkpoint.filesystem, result.checkpoint.path).hardware
    except FileNotFoundError:  # `pt`'s checkpoint: the base's weights saved again, no trainer state
        return load_trainer_state(base).hardware


def trial_row(sweep_name: str, cfg: ClassitConfig, params: dict, result, rows: list[dict], scores: dict,
              start: float, base: Path) -> dict:
    """The trial's `trials` row: its parameters, losses, word counts, final scores and the base it was
    tuned from, status (`eval_failed` with the errors, if any), time, what trained it and the whole config."""
    from classit.results import config_columns, provenance

    final, metrics = result.checkpoint.path, result.metrics
    errors = sorted({r["error"] for r in rows if r["error"]})
    end = time.time()
    return {"sweep": sweep_name, "trial": trial_key(params), "run": cfg.run.name,
            "status": "eval_failed" if errors else "finished", "error": "; ".join(errors), **param_columns(params),
            **{k: v for k, v in metrics.items() if k.startswith("val_loss")},
            "validation_records": metrics.get("validation_records"), "base_val_loss": base_val_loss(cfg),
            "input_words": metrics.get("input_words"), "exposure_words": metrics.get("exposure_words"),
            "checkpoint": final, "base_checkpoint": str(base), **scores, "start": start, "end": end,
            "seconds": end - start,
            "gpu_hours": (end - start) * cfg.distributed.num_workers * cfg.distributed.use_gpu / 3600,
            **provenance(), "hardware": trained_on(result, base), **config_columns(cfg), "config": config_json(cfg)}


def run_trial(config: dict, sweep_config: dict, results_root: str, data_dir: str, service_name: str) -> None:
    import ray
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from classit.results import trials_schema, write_rows
    from classit.sweep.claims import claims_name
    from classit.sweep.services import ensure_base
    from classit.sweep.space import apply_params
    from classit.train.instruct import prepare_instruct, train_instruct
    from classit.train.runner import TRACKED_STEPS

    import datasets

    datasets.disable_progress_bars()
    sweep_cfg = ClassitConfig.model_validate(sweep_config)
    sweep = sweep_cfg.sweep
    params = trial_params(config, sweep.seeds)
    key = trial_key(params)
    objectives = [objective_key(m) for m in sweep.metrics]

    claims = ray.get_actor(claims_name(sweep.name))
    ray.get(claims.claim.remote(key, ray.tune.get_context().get_trial_id()))  # held until Tune sees it end
    done = finished_row(results_root, key)
    if done is not None:
        reported = {k: done[k] for k in ["val_loss", *objectives] if k in done}
        ray.tune.report(reported | {"resumed": True, FINAL_REPORT: True})
        return

    start = time.time()
    cfg = apply_params(sweep_cfg, params)
    # The tokenizer's code (~2 s of imports) is loaded while the base may still be pretraining, not
    # after it, when this trial's instruction data is encoded on the way to its training.
    from transformers import AutoTokenizer  # noqa: F401
    base = ensure_base(cfg)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": f"{sweep.name}-{key}"})})
    result = train_instruct(prepare_instruct(cfg, base), log=lambda _: None,
                            metrics_dir=f"{results_root}/{TRAIN_METRICS}", callbacks=[TuneReportCallback()])

    checkpoints, jobs = evaluation_jobs(cfg, result, base, data_dir, key)
    rows = ray.get(ray.get_actor(service_name).evaluate.remote(jobs))
    columns = score_columns(cfg.evaluation.tasks, sweep.metrics)
    scores = final_scores(rows, result.checkpoint.path, columns)
    row = trial_row(sweep.name, cfg, params, result, rows, scores, start, base)
    write_rows(f"{results_root}/{TRIALS}", [row], trials_schema(sweep_cfg), key=key)
    # Each evaluated checkpoint's scores, for experiment trackers (logged at its words).
    evaluated = [{"exposure_words": int(m.get("exposure_words", -1)), "eval": scores_of(rows, c.path, columns)}
                 for c, m in checkpoints]
    ray.tune.report({**{k: v for k, v in row.items() if k.startswith("val_loss")}, **scores,  # each dataset's too
                     "stage": result.metrics.get("stage"), "words_seen": row["exposure_words"],
                     "exposure_words": row["exposure_words"], "done": True, FINAL_REPORT: True,
                     TIE_WARNING: tie_warning(rows, result.checkpoint.path), TRACKED_STEPS: json.dumps(evaluated)})
