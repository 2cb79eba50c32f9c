"""Counts, sizes and errors as a person reads them (1.2M words, 3.5 GB, one line per error), for
consoles, plans, plots and error rows."""

from __future__ import annotations

import math


def format_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.{0 if n % size == 0 else 1}f}{unit}"
    return f"{n:g}" if not math.isnan(n) else "-"


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g} B"


def text_table(rows: list[list[str]]) -> str:
    """Rows of cells (the first the header) as left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (which may be empty)."""
    return f"{type(err).__name__}: {err}".splitlines()[0]
