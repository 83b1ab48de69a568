"""Numbers and notes as people read them."""

from __future__ import annotations


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


def sentence(text: str) -> str:
    """A backend's one-line ``why`` as a sentence: 'built for memory …' -> 'Built for memory ….'"""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
