"""Counts and sizes as a person reads them (1.2M words, 3.5 GB), for consoles, plans and plots."""

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
