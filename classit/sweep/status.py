"""`classit status [SWEEP_DIR]`: how a running or finished sweep stands, from its files alone.

Reads what the driver leaves in the sweep's folder: `sweep.json` (its config and its process),
Tune's newest `experiment_state-*.json` (every trial Tune made, its state and last report) and the
`trials` table (each trial that ended). No connection to the driver or to Ray.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from classit.artefacts import commit_file, parse_json_as, process_alive
from classit.config import ClassitConfig, ConfigError
from classit.results import SWEEP_FILE, SweepRecord, read_sweep_record
from classit.units import one_line

# `twin`: the same parameters drawn again (a search without a parameter to vary, or a repeated draw);
# it trained nothing and shares the earlier trial's row.
STATES = ("finished", "eval_failed", "running", "interrupted", "pending", "stopped", "error", "twin")
TUNE_STATES = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "pending", "ERROR": "error",
               "TERMINATED": "stopped"}


def write_sweep_file(experiment: Path, cfg: ClassitConfig) -> None:
    """At the driver's start: the sweep's config and who runs it."""
    experiment.mkdir(parents=True, exist_ok=True)
    record = SweepRecord(config=cfg.model_dump(mode="json"), pid=os.getpid(), host=socket.gethostname(),
                         started=time.time())
    commit_file(lambda tmp: Path(tmp).write_text(json.dumps(asdict(record))), experiment / SWEEP_FILE)


def started_config(experiment: Path) -> ClassitConfig | None:
    """The config the sweep in this folder was started with (None: no sweep started here)."""
    path = experiment / SWEEP_FILE
    return record_config(read_sweep_record(path), path) if path.is_file() else None


def record_config(record: SweepRecord, path: Path) -> ClassitConfig:
    """The config a sweep's record (its `sweep.json`, at `path`) holds."""
    try:
        return ClassitConfig.model_validate(record.config)
    except ValueError as err:
        raise ConfigError(f"{path}: not a config classit reads ({one_line(err)[:200]})") from None


def driver_alive(record: SweepRecord) -> bool | None:
    """Whether the driver process still runs (None: it ran on another host)."""
    return process_alive(record.pid) if record.host == socket.gethostname() else None


# The parts of Tune's `experiment_state-*.json` that status reads; Tune's other keys are ignored.
@dataclass
class TuneExperimentState:
    trial_data: list[tuple[str, str]]  # per trial: its JSON (a TuneTrial) and its runtime's (a TuneRuntime)
    stats: dict = field(default_factory=dict)


@dataclass
class TuneTrial:
    config: dict
    status: str
    relative_logdir: str


@dataclass
class TuneRuntime:
    start_time: float | None = None
    last_result: dict | None = None


def tune_trials(experiment: Path) -> tuple[list[dict], float | None, float | None]:
    """Every trial in Tune's newest experiment state (config, state, last result, start time, its
    folder in the experiment's), the experiment's start, and when that state was written."""
    # Named by the start of the Tune session that writes it (a resumed sweep adds one). Not by
    # modification time: Tune's final sync rewrites every state file of the folder at once.
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return [], None, None
    data = parse_json_as(TuneExperimentState, states[-1].read_text(), states[-1])
    trials = []
    for i, (trial_json, runtime_json) in enumerate(data.trial_data):
        trial = parse_json_as(TuneTrial, trial_json, f"{states[-1]}: trial_data.{i}.0")
        runtime = parse_json_as(TuneRuntime, runtime_json, f"{states[-1]}: trial_data.{i}.1")
        trials.append({"config": trial.config, "state": trial.status, "start": runtime.start_time,
                       "last_result": runtime.last_result or {}, "folder": trial.relative_logdir})
    return trials, data.stats.get("start_time"), states[-1].stat().st_mtime


def ended_trials(experiment: Path) -> list[dict]:
    """The trials Tune ended (finished, stopped early, failed past their retries), from its newest
    saved state; a trial running or pending when the sweep was interrupted is not among them."""
    return [t for t in tune_trials(experiment)[0] if t["state"] in ("TERMINATED", "ERROR")]


def sweep_status(experiment: Path) -> dict:
    """Trials by state, each trial's stage, words and scores, the best so far per objective, the
    elapsed time and an estimate of the time left."""
    from classit.evaluate.catalog import objective_key
    from classit.sweep.space import planned_trial_count

    path = experiment / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{experiment}: no {SWEEP_FILE} here: not a sweep's folder (<storage>/<sweep>) "
                          "nor a storage folder holding one")
    record = read_sweep_record(path)
    cfg = record_config(record, path)
    sweep = cfg.sweep
    objectives = [objective_key(m) for m in sweep.metrics]
    alive = driver_alive(record)
    tune, started, updated = tune_trials(experiment)
    rows = trial_rows(experiment, tune, sweep.seeds, objectives, alive)
    planned = planned_trial_count(cfg)
    counts = {state: sum(r["state"] == state for r in rows) for state in STATES}
    counts["pending"] += max(planned - len(rows), 0)  # a search draws its trials as slots free up
    now = time.time() if alive else max(updated or 0.0, record.started)
    return {"name": sweep.name, "planned": planned, "counts": counts, "trials": rows,
            "best": best_so_far(rows, objectives, sweep.modes), "objectives": objectives,
            "elapsed_s": now - (started or record.started),
            "left_s": time_left(rows, counts["pending"], now, sweep.max_concurrent_trials),
            "driver_alive": alive, "driver": f"pid {record.pid} on {record.host}"}


def trial_rows(experiment: Path, tune: list[dict], seeds: list[int], objectives: list[str], alive) -> list[dict]:
    """One row per trial Tune knows: its state (the trials table's status once it ended), stage,
    words seen and objectives (from its row, else its last report); a draw of parameters an earlier
    trial has is its twin."""
    from classit.results import read_table
    from classit.sweep.trial import TRIALS, trial_key, trial_params

    ended = read_table(str(experiment / "results" / TRIALS))
    ended = {} if ended.empty else {r["trial"]: r for r in ended.to_dict("records")}
    rows = []
    for trial in tune:
        params = trial_params(trial["config"], seeds)
        key, last = trial_key(params), trial["last_result"]
        state = TUNE_STATES.get(trial["state"], trial["state"].lower())
        if any(r["trial"] == key and r["state"] != "error" for r in rows):
            rows.append({"trial": key, "state": "twin", "params": params, "stage": None, "words_seen": None,
                         "start": trial["start"], "seconds": None, **{o: None for o in objectives}})
            continue
        if key in ended:
            state = ended[key]["status"]
        elif state == "running" and alive is False:
            state = "interrupted"  # the driver died while the trial ran; --resume continues it
        source = ended.get(key, last)
        rows.append({"trial": key, "state": state, "params": params, "stage": last.get("stage"),
                     "words_seen": last.get("words_seen"), "start": trial["start"],
                     "seconds": _number(ended[key]["seconds"]) if key in ended else None,
                     **{o: _number(source.get(o)) for o in objectives}})
    return rows


def best_so_far(rows: list[dict], objectives: list[str], modes: list[str]) -> dict[str, tuple[float, str]]:
    best = {}
    for objective, mode in zip(objectives, modes):
        scored = [r for r in rows if r["state"] in ("finished", "eval_failed") and r[objective] is not None]
        if scored:
            pick = (max if mode == "max" else min)(scored, key=lambda r: r[objective])
            best[objective] = (pick[objective], pick["trial"])
    return best


def time_left(rows: list[dict], pending: int, now: float, concurrency: int) -> float | None:
    """The mean trial so far, for what has not started and what is still running, over the concurrency."""
    durations = [r["seconds"] for r in rows if r["seconds"]]
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    running = [max(mean - (now - r["start"]), 0.0) for r in rows if r["state"] in ("running", "interrupted")]
    return (pending * mean + sum(running)) / concurrency


def format_status(status: dict) -> str:
    from classit.sweep.space import format_params
    from classit.units import format_count, text_table

    counts = ", ".join(f"{n} {state}" for state, n in status["counts"].items() if n)
    unfinished = sum(status["counts"][s] for s in ("running", "interrupted", "pending"))
    driver = {True: "running", None: "on another host",
              False: "not running (resume with --resume)" if unfinished else "ended"}
    lines = [f"sweep {status['name']}: {status['planned']} trials planned: {counts}",
             f"driver {status['driver']}: {driver[status['driver_alive']]}; elapsed {_duration(status['elapsed_s'])}"
             + ("" if status["left_s"] is None or status["left_s"] == 0 else
                f", about {_duration(status['left_s'])} left")]
    objectives = status["objectives"]
    header = ["trial", "state", "parameters", "stage", "words seen", *objectives]
    table = [header]
    for r in status["trials"]:
        table.append([r["trial"], r["state"], format_params(r["params"]), str(r["stage"] or "-"),
                      "-" if r["words_seen"] is None else format_count(r["words_seen"]),
                      *["-" if r[o] is None else f"{r[o]:.4g}" for o in objectives]])
    lines.append(text_table(table))
    for objective, (value, trial) in status["best"].items():
        lines.append(f"best {objective}: {value:.4g} (trial {trial})")
    return "\n".join(lines)


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
