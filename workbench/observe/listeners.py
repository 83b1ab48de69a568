"""Listeners: every record any HistoryStore of this process writes also goes to them (exporters).

They are called on the history's background writer thread, in the order the records were written, so a slow
listener delays only later history rows, never a request. Listeners switched on by environment variables
(TensorBoard) are added on the first record of the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .records import RequestRecord
from .tensorboard import TENSORBOARD_ENV, TensorBoardWriter, tensorboard_dir_from_env

log = logging.getLogger(__name__)
_listeners: list[Callable[[RequestRecord], None]] = []
_listeners_lock = threading.Lock()
_env_listeners_added = False


def add_listener(listener: Callable[[RequestRecord], None]) -> None:
    """Call ``listener(record)`` after every record written by any HistoryStore of this process (once per
    listener, however often it is added), on the writer thread. A listener that raises is logged and never loses
    the record nor stops the next ones. ``HistoryStore.flush()`` waits until it has seen the rows queued so far."""
    with _listeners_lock:
        if listener not in _listeners:
            _listeners.append(listener)


def remove_listener(listener: Callable[[RequestRecord], None]) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def notify(rec: RequestRecord) -> None:
    _add_env_listeners()
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(rec)
        except Exception:
            log.exception("a request-record listener failed")


def _add_env_listeners() -> None:
    """Listeners switched on by environment variables (TensorBoard), added on the first record of the process."""
    global _env_listeners_added
    if _env_listeners_added:
        return
    _env_listeners_added = True
    logdir = tensorboard_dir_from_env()
    if logdir is None:
        return
    try:
        add_listener(TensorBoardWriter(logdir).record)
    except ImportError as exc:
        log.warning("%s is set but TensorBoard is not installed (pip install .[tensorboard]): %s",
                    TENSORBOARD_ENV, exc)

