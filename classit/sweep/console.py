"""The sweep's console: one line per event that matters, and on a terminal a trials table redrawn
in place (rich); plain lines only when the output is not a terminal (a log file, CI).

Events: a base reused or built, a trial started, a stage finished, a trial scored and finished
(with its objectives) or stopped early by ASHA (with its last validation loss), a trial failed
(with its error's last line).
"""

from __future__ import annotations

import math
import sys

from ray import tune

from classit.sweep.space import format_params
from classit.sweep.trial import FINAL_REPORT, TIE_WARNING, trial_key, trial_params
from classit.units import format_count


def echo(line: str) -> None:
    """The console's default sink. Tune pickles its callbacks, and Ray may swap `builtins.print` in
    the driver (its tqdm patch), after which the original builtin no longer pickles: a module
    function always does, and it looks `print` up when called."""
    print(line, flush=True)


def _value(result: dict, key: str) -> str:
    value = result.get(key)
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


class SweepConsole(tune.Callback):
    def __init__(self, objectives: list[str], seeds: list[int], pending_bases: dict, planned: int, log=echo,
                 live: bool | None = None):
        self.objectives, self.seeds, self.planned, self.log = objectives, seeds, planned, log
        self.pending_bases = dict(pending_bases)  # preset -> config whose base was not cached at the start
        self.live_table = sys.stdout.isatty() if live is None else live
        self.latest: dict[str, dict] = {}
        self.started: set[str] = set()  # Tune trial ids, to tell a twin draw (the same parameters again)
        self.live = None

    def key(self, trial) -> str:
        return trial_key(trial_params(trial.config, self.seeds))

    def say(self, line: str) -> None:
        if self.live is not None:
            self.live.console.print(line, highlight=False, markup=False)
        else:
            self.log(line)

    def setup(self, **info):
        if self.live_table:
            from rich.live import Live

            self.live = Live(self.table([]), auto_refresh=False, transient=False)
            self.live.start()

    def on_trial_start(self, iteration, trials, trial, **info):
        key = self.key(trial)
        # A twin: parameters an earlier trial has (started here, or finished before a resume) that did
        # not fail (a failed trial's twin trains in its place), as `classit status` tells them.
        twin = any(t is not trial and (t.trial_id in self.started or t.is_finished()) and t.status != t.ERROR
                   and self.key(t) == key for t in trials)
        self.started.add(trial.trial_id)
        self.say(f"trial {key} started: {format_params(trial_params(trial.config, self.seeds))}"
                 + (" (drawn again: trained once, one row with the earlier trial)" if twin else ""))
        self.redraw(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from classit.sweep.services import cached_base

        for preset, cfg in list(self.pending_bases.items()):
            found = cached_base(cfg)
            if found is not None:
                self.say(f"base {preset} built: {found}")
                del self.pending_bases[preset]
        before = self.latest.get(trial.trial_id)
        if before is not None and before.get("stage") != result.get("stage"):
            self.say(f"trial {self.key(trial)}: stage {before.get('stage')} finished, "
                     f"val_loss {_value(before, 'val_loss')}")
        self.latest[trial.trial_id] = result
        self.redraw(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = self.latest.get(trial.trial_id, {})
        done = 1 + sum(t.is_finished() for t in trials if t is not trial)  # a resumed sweep's earlier ones too
        if result.get(FINAL_REPORT):
            scores = ", ".join(f"{o} {_value(result, o)}" for o in self.objectives)
            self.say(f"trial {self.key(trial)} scored and finished: {scores} ({done} of {self.planned} done)")
            if result.get(TIE_WARNING):
                self.say(f"warning: trial {self.key(trial)}: {result[TIE_WARNING]}")
        else:  # ended by Tune before its final report: ASHA stopped it
            self.say(f"trial {self.key(trial)} stopped early by ASHA: stage {result.get('stage', '-')}, "
                     f"{format_count(result.get('words_seen', float('nan')))} words seen, val_loss "
                     f"{_value(result, 'val_loss')}, not scored ({done} of {self.planned} done)")
        self.redraw(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = str(getattr(trial, "error_msg", "") or "").strip().splitlines()
        self.say(f"trial {self.key(trial)} failed: {error[-1] if error else 'see its error file'}")
        self.redraw(trials)

    def on_experiment_end(self, trials, **info):
        if self.live is not None:
            self.redraw(trials)
            self.live.stop()
            self.live = None

    def table(self, trials):
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        scores = [o for o in self.objectives if o != "val_loss"]
        for column in ("trial", "state", "parameters", "stage", "words seen", "val_loss", *scores):
            table.add_column(column, no_wrap=True)
        for t in trials:
            r = self.latest.get(t.trial_id, {})
            table.add_row(self.key(t), t.status, format_params(trial_params(t.config, self.seeds))[:44],
                          str(r.get("stage", "-")), format_count(r.get("words_seen", float("nan"))),
                          _value(r, "val_loss"), *[_value(r, o) for o in scores])
        return table

    def redraw(self, trials) -> None:
        if self.live is not None:
            self.live.update(self.table(trials), refresh=True)
