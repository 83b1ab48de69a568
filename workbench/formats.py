"""Numbers as people read them, the same in the command line's output and in the app."""

from __future__ import annotations

MISSING = "n/a"


def human_count(n: int) -> str:
    """134515008 -> '134.5 M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """538060032 -> '538.1 MB' (decimal units, as disk and download sizes are given)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def duration(seconds: float) -> str:
    """45 -> '45 s', 185 -> '3 min 05 s', 3720 -> '1 h 02 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def figure(value: float | None, digits: int = 1, unit: str = "", missing: str = MISSING) -> str:
    """A measured value with a fixed number of decimals and an optional unit; ``missing`` when there is none."""
    if value is None:
        return missing
    text = f"{value:.{digits}f}"
    return f"{text} {unit}" if unit else text


def sentence(text: str) -> str:
    """A backend's one-line ``why`` as a sentence: 'built for memory …' -> 'Built for memory ….'"""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
