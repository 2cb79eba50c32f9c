"""How far each evaluation job is: a counter the scoring code advances inside an actor, and the
bars `classit evaluate` draws from it on the driver.

The counter is read from another thread of the same actor (the pool polls it while the job runs),
so it is two plain integers, written by the job alone.
"""

from __future__ import annotations


class Progress:
    def __init__(self):
        self.done, self.total, self.unit = 0, 0, ""

    def start(self, total: int, unit: str) -> None:
        self.done, self.total, self.unit = 0, int(total), unit

    def advance(self, n: int = 1) -> None:
        self.done += int(n)

    def snapshot(self) -> tuple[int, int, str]:
        return self.done, self.total, self.unit


class JobBars:
    """One `rich` bar per job, redrawn in place on a terminal; elsewhere (a log, a pipe) rich prints
    the finished bars once, at the end."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bars = Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[unit]:<10}"), TimeElapsedColumn(),
                             console=Console(stderr=True), refresh_per_second=4)
        self.ids: dict[str, int] = {}

    def __enter__(self) -> JobBars:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def update(self, key: str, label: str, done: int, total: int, unit: str) -> None:
        """No `unit` yet: the job is still loading its model or data (an open-ended bar); a started
        job may have nothing to count (a share of a split job with no batch of its own)."""
        if key not in self.ids:
            self.ids[key] = self.bars.add_task(label, total=None, unit="")
        self.bars.update(self.ids[key], completed=done, total=total if unit else None, unit=unit)
