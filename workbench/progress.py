"""The two kinds of progress callback, named once.

A build reports stages (``OnStage``): what it is doing and how far along it is. A long job that counts steps
(distillation, a benchmark, an evaluation) reports steps (``OnStep``) with the figures measured so far.
Neither is ever a Streamlit object: the app and the command line each turn them into their own display.
"""

from __future__ import annotations

from collections.abc import Callable

OnStage = Callable[[str, float], None]  # (stage description, fraction done 0..1)
OnStep = Callable[[int, int, dict], None]  # (steps done, steps in total, metrics so far)


def no_stage(stage: str, fraction: float) -> None:
    """An ``OnStage`` that shows nothing."""


def no_step(step: int, total: int, metrics: dict) -> None:
    """An ``OnStep`` that shows nothing."""
