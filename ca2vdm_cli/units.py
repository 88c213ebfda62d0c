"""How sizes and durations are written for people: one formatter each, used by every command."""

from __future__ import annotations

BINARY = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
DECIMAL = (("GB", 10**9), ("MB", 10**6), ("KB", 10**3))


def format_bytes(n: float | None, digits: int = 1, decimal: bool = False) -> str:
    """`1.5 GiB` (binary units: memory) or, with `decimal`, `3.04 GB` (download sizes); None → `—`."""
    if n is None:
        return "—"
    for unit, size in DECIMAL if decimal else BINARY:
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
    return f"{int(n)} B"


def format_seconds(s: float) -> str:
    """`h:mm:ss`."""
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
