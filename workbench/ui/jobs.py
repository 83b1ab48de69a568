"""Long work on background threads (building a student, measuring a recipe), shared by every browser session.

A Streamlit rerun ends the script that started it, so work that takes minutes runs on its own thread, owned
by a ``JobRegistry`` that ``shared.job_registry`` keeps for the whole server; pages poll a ``Job`` to draw its
progress. Nothing here touches Streamlit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import student_card
from ..optimize import distill, variants
from ..recipe import RecipeError
from ..store import StoreError

log = logging.getLogger(__name__)

MAX_FINISHED = 16  # finished jobs kept so that pages can still show their results


class JobStopped(Exception):
    """Raised from a job's progress callback once Stop was asked for, by work that has no stop hook of its own."""


class JobRefused(Exception):
    """Raised by work that cannot run now (its model was unloaded, say); the message says why and what to do."""


class Job:
    """One piece of work on a background thread, with its progress, a stop flag, then a result or an error.

    Args:
        key: what the job is, e.g. ``distill:<model>:<student>``; one running job per key.
        work: ``work(job) -> result``; reports through ``job.on_step`` and should end soon after
            ``job.stopping`` turns True (by itself, or by letting ``job.check_stop`` raise).
        title: a short description for the user.
    """

    def __init__(self, key: str, work: Callable[[Job], Any], title: str = ""):
        self.key = key
        self.title = title or key
        self.step = 0
        self.total = 0
        self.metrics: dict = {}
        self.phases: dict[str, tuple[int, int, dict]] = {}  # latest (step, total, metrics) per metrics["phase"]
        self.history: list[tuple[int, dict]] = []  # every (step, metrics) reported, in order
        self.result: Any = None
        self.error: str | None = None
        self.stopped = False  # ended early because Stop was asked for
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.finished: float | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._work = work
        threading.Thread(target=self._run, name=f"job-{key}", daemon=True).start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def fraction(self) -> float:
        return min(max(self.step / self.total, 0.0), 1.0) if self.total else 0.0

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    def stop(self) -> None:
        """Ask the work to end early; it ends at its next check (a checkpoint is the work's business)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends or the timeout passes; True if it ended."""
        return self._done.wait(timeout)

    def on_step(self, step: int, total: int, metrics: dict | None = None) -> None:
        """The progress callback handed to library code: ``(step, total, metrics)``."""
        metrics = dict(metrics or {})
        self.step, self.total, self.metrics = step, total, metrics
        self.phases[metrics.get("phase", "")] = (step, total, metrics)
        self.history.append((step, metrics))

    def check_stop(self) -> None:
        """Raise JobStopped if Stop was asked for: for work whose library call has no stop hook."""
        if self._stop.is_set():
            raise JobStopped()

    def _run(self) -> None:
        try:
            self.result = self._work(self)
            self.stopped = self._stop.is_set()
        except JobStopped:
            self.stopped = True
        except (RecipeError, StoreError, JobRefused) as exc:  # the input or the disk: the message says what to do
            self.error = str(exc)
        except Exception as exc:  # shown as one line; the log keeps the traceback
            log.exception("job %s failed", self.key)
            self.error = f"{self.title} failed: {type(exc).__name__}: {exc}"
        self.finished = time.perf_counter()
        self._done.set()


class JobRegistry:
    """The jobs of this server by key: at most one running job per key, a few finished ones kept."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Job | None:
        return self._jobs.get(key)

    def start(self, key: str, work: Callable[[Job], Any], title: str = "") -> Job:
        """Start ``work`` under ``key``, or return the job already running under it."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.running:
                return job
            job = Job(key, work, title)
            self._jobs.pop(key, None)
            self._jobs[key] = job  # newest last
            self._forget_old()
            return job

    def jobs(self, prefix: str = "") -> list[Job]:
        """Jobs whose key starts with ``prefix``, oldest first."""
        return [j for k, j in list(self._jobs.items()) if k.startswith(prefix)]

    def running(self, prefix: str = "") -> list[Job]:
        return [j for j in self.jobs(prefix) if j.running]

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.done]
        for key in finished[: max(0, len(finished) - MAX_FINISHED)]:
            del self._jobs[key]


# Building a student ----------------------------------------------------------------------------------------


def distill_key(model: str, name: str) -> str:
    return f"distill:{model}:{name}"


def start_distill(registry: JobRegistry, model: str, spec, minutes: float | None = None, *,
                  steps: int | None = None, card: dict | None = None) -> Job:
    """Build (or resume) the student of ``model`` that ``spec`` describes, then measure its card, on a background
    thread.

    Stop on the returned job ends the run after its current step; the run checkpoints (no card is measured), and
    starting the same student again resumes it.

    Args:
        registry: where the job lives.
        model: the teacher (a recipe's model field).
        spec: ``distill.StudentSpec``.
        minutes: minutes of training wanted in all (or ``steps``: total optimisation steps).
        card: options of ``student_card.measure_card`` (None: measure no card).
    """
    name = variants.student_name(model, spec)

    def work(job: Job) -> dict:
        result = distill.distill(model, spec, steps, minutes=minutes, on_step=job.on_step,
                                 stop=lambda: job.stopping)
        if card is not None and not job.stopping:
            result["card"] = student_card.measure_card(model, name, **card, on_step=job.on_step)
        return result

    return registry.start(distill_key(model, name), work, title=f"Building student {name}")
