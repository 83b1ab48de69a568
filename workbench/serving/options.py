"""How a worker may serve a model: its schedulers and how long it waits to fill a batch."""

from __future__ import annotations

from ..recipe import RecipeError

SCHEDULERS = ("static", "continuous")  # a batch runs to its end / requests join a running batch at every step
DEFAULT_BATCH_WINDOW_S = 0.02  # how long the worker waits for more requests to fill a batch


def check_scheduler(scheduler: str, flag: str = "scheduler") -> str:
    """Raise RecipeError (naming ``flag``) unless ``scheduler`` is one of SCHEDULERS."""
    if scheduler not in SCHEDULERS:
        raise RecipeError(flag, f"unknown scheduler {scheduler!r}; allowed: {', '.join(SCHEDULERS)}")
    return scheduler
