"""What every browser session shares: one ModelSlot per recipe, built in the background, the job registry and the
response cache.

A cached function may not write into Streamlit containers created outside it, so ``model_slot`` returns at
once with a ``ModelSlot`` whose build runs on its own thread; pages poll the slot to draw progress.
``ModelSlot`` itself never touches Streamlit. Its engine serves a ``leases.SharedModel``: a measurement leases
the model from it and has it to itself (see ``leases``).
"""

from __future__ import annotations

import logging
import threading
import time

import streamlit as st

from .. import runtimes
from ..loading import ModelSourceError
from ..observe.history import HistoryStore
from ..recipe import Recipe, RecipeError
from ..response_cache.disk import ResponseCache
from ..runtimes.base import LoadedModel
from ..serving.engine import Engine
from ..store import StoreError
from .jobs import JobRegistry
from .leases import SharedModel

log = logging.getLogger(__name__)


class ModelSlot:
    """A model being built on a background thread, then served by an Engine; the slot owns both.

    Args:
        recipe: what to build (device already resolved, so that the cache key is honest).
        trust_remote_code: allow hub model code (opt-in).
        history: where the engine records finished requests; defaults to the workbench's history store.
    """

    def __init__(self, recipe: Recipe, trust_remote_code: bool = False, history: HistoryStore | None = None):
        self.recipe = recipe
        self.trust_remote_code = trust_remote_code
        self.stage = "Waiting to start"
        self.fraction = 0.0
        self.started = time.perf_counter()
        self.finished: float | None = None
        self.error: str | None = None
        self.engine: Engine | None = None
        self._shared: SharedModel | None = None
        self._history = history
        self._done = threading.Event()
        self._lock = threading.Lock()  # orders a release against the end of the build
        self._released = False
        threading.Thread(target=self._build, name=f"build-{recipe.key()}", daemon=True).start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def failed(self) -> bool:
        return self._done.is_set() and self.error is not None

    @property
    def ready(self) -> bool:
        return self._done.is_set() and self.engine is not None

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def model(self) -> LoadedModel | None:
        """The model as the pages get it: shared with the chat, measured only under a lease."""
        return self._shared if self.engine is not None else None

    @property
    def busy(self) -> str | None:
        """Who has the model to itself now (a measurement), or None: chat requests are refused meanwhile."""
        return self._shared.busy if self._shared is not None else None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the build ends (ready or failed) or the timeout passes; True if it ended."""
        return self._done.wait(timeout)

    def release(self) -> None:
        """Close the engine, then the model once no measurement holds it (now, or when a running build ends)."""
        with self._lock:
            self._released = True
            engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()
            self._shared.close()

    def _on_stage(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, min(max(float(fraction), 0.0), 1.0)

    def _build(self) -> None:
        engine = model = None
        try:
            model = runtimes.build(self.recipe, trust_remote_code=self.trust_remote_code, on_stage=self._on_stage)
            self._shared = SharedModel(model)
            engine = Engine(self._shared, self._history or HistoryStore())
        except (ModelSourceError, RecipeError, StoreError) as exc:  # the input or the disk: the message says what to do
            self.error = str(exc)
        except Exception as exc:  # anything else is still shown as one line; the log keeps the traceback
            log.exception("building %s failed", self.recipe.label())
            self.error = f"Building {self.recipe.label()} failed: {type(exc).__name__}: {exc}"
        with self._lock:
            if self._released and engine is not None:
                engine.close()  # evicted while building: nobody will use it
                model.close()
            elif engine is not None:
                self.engine = engine
        self.finished = time.perf_counter()
        self._done.set()


def _release_in_background(slot: ModelSlot) -> None:
    # Closing an engine waits for its queued requests; the session that caused the eviction should not.
    threading.Thread(target=slot.release, name="release-model", daemon=True).start()


@st.cache_resource(
    max_entries=2,  # the recipe in use and one other (e.g. fp32 and bf16); a third evicts the oldest
    on_release=_release_in_background,
    validate=lambda slot: not slot.failed,  # a failed build is retried on the next run (e.g. after a fix)
    hash_funcs={Recipe: Recipe.key},
    show_spinner=False,
)
def model_slot(recipe: Recipe, trust_remote_code: bool) -> ModelSlot:
    """The shared slot of a recipe; starts its build on first use and returns at once.

    Args:
        recipe: the recipe, with its device resolved.
        trust_remote_code: allow hub model code; part of the key, so ticking it rebuilds.
    """
    return ModelSlot(recipe, trust_remote_code)


@st.cache_resource(show_spinner=False)
def job_registry() -> JobRegistry:
    """The background jobs of this server (students being built, recipes being measured)."""
    return JobRegistry()


@st.cache_resource(show_spinner=False, validate=lambda responses: responses.available)
def response_cache(directory: str) -> ResponseCache:
    """The response cache every session shares (one per directory); a cache that could not open is retried."""
    return ResponseCache(directory)
