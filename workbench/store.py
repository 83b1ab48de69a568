"""Where the workbench keeps things on disk, and how anything that a later run depends on is written: complete or
not at all, across a kill -9, a full disk or a power cut.

Layout under ``WORKBENCH_HOME`` (default ``~/.cache/llm-latency-workbench``): ``artifacts/<recipe_key>/``
(safetensors + ``recipe.json``), ``responses/`` (the response cache), ``metrics.sqlite`` (the request
history), ``benchmarks/`` (saved batch-size sweeps).

The rules every writer follows:

- a file is written to a temp file in its own folder, fsynced, then renamed over the old one (``write_file``);
- an artifact is filled in a temp folder, every file fsynced, its ``recipe.json`` written last (the marker: a
  folder without it is not an artifact, whatever else it holds), then renamed into place (``write_artifact``);
  an older artifact is swapped out in one atomic exchange (``swap_in``), so a reader sees the old or the new;
- one builder per artifact: a file lock ``artifacts/.<key>.lock`` (``building``); a second builder waits for
  the first and then uses its artifact, or is told who is building it;
- a damaged artifact is moved aside as ``<key>.damaged-<time>`` (``set_aside_artifact``) and made again;
- what killed builds left (temp folders, half-deleted ones) is removed once no live builder holds its lock
  (``clean_leftovers``).

Artifacts from older versions (a ``recipe.json``, no other marker) are complete by the same rule: their
``recipe.json`` was also written last, inside the temp folder, before the rename.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import filelock

MARKER = "recipe.json"  # written last into an artifact's folder: its presence means the artifact is complete
BUILD_WAIT_S = 900.0  # how long a second builder waits for the first (converting a model takes a minute or two)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_TEMP = re.compile(r"^\.(?P<key>[^.]+)(?:\.tmp-.*|-[a-z0-9_]{8})$")  # ours, and tempfile.mkdtemp's of older versions
_TRASH = re.compile(r"^\..*\.trash-[0-9a-f]+$")
_OLD = re.compile(r"^(?P<key>[^.]+)\.old$")


class StoreError(RuntimeError):
    """Something under WORKBENCH_HOME cannot be written or is in use; the one-line message says what to do."""


class BuildBusy(StoreError):
    """Another process is building the same artifact."""


def home() -> Path:
    """``WORKBENCH_HOME``, made if it can be (where it cannot, each writer says so when it writes)."""
    root = Path(os.environ.get("WORKBENCH_HOME") or Path.home() / ".cache" / "llm-latency-workbench")
    with suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
    return root


def artifacts_dir() -> Path:
    """``WORKBENCH_HOME/artifacts``, made if it can be (a read-only home still serves what it holds)."""
    path = home() / "artifacts"
    with suppress(OSError):
        path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_path(key: str) -> Path:
    return artifacts_dir() / key


def artifact_ready(key: str) -> bool:
    """An artifact exists only once its folder is in place with its marker (``recipe.json``)."""
    return (artifact_path(key) / MARKER).is_file()


def artifacts() -> list[Path]:
    """Every complete artifact folder; temp, superseded (``.old``) and damaged folders are left out."""
    try:
        entries = list(artifacts_dir().iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if "." not in p.name and (p / MARKER).is_file())


def unwritable(where: Path, exc: OSError) -> str:
    """One line: ``where`` cannot be written, why, and what to do."""
    hint = "free some disk space" if exc.errno in _FULL else "make it writable"
    return f"cannot write to {where} ({exc.strerror or exc}); {hint}, or set WORKBENCH_HOME to another folder"


# Durable writes -------------------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: str | bytes) -> None:
    """Replace the file at ``path`` with ``data``: a temp file in the same folder, fsynced, renamed over it, the
    folder fsynced. A kill at any moment leaves the old file or the new one, never part of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def finish_dir(folder: Path, marker: str, text: str) -> None:
    """Make a filled temp folder complete: every file in it fsynced, then ``marker`` written last."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))
    write_file(folder / marker, text)


def swap_in(new: Path, final: Path) -> None:
    """Put the complete folder ``new`` at ``final``; the folder that was there is removed.

    On Linux one atomic exchange (``renameat2``): a reader finds the old folder or the new one, never none.
    Elsewhere two renames through ``<final>.old``, which ``recover`` puts back after a kill between them.
    """
    if final.exists() and _exchange(new, final):
        fsync_dir(final.parent)
        discard(new)  # it now holds the folder that was replaced
        return
    old = final.with_name(final.name + ".old")
    if final.exists():
        discard(old)
        os.rename(final, old)
    os.rename(new, final)
    fsync_dir(final.parent)
    discard(old)


def recover(final: Path, marker: str) -> None:
    """After a kill between ``swap_in``'s two renames: put ``<final>.old`` back when ``final`` is missing or
    incomplete, else drop it. The caller holds the folder's build lock."""
    old = final.with_name(final.name + ".old")
    if not old.exists():
        return
    if (final / marker).is_file() or not (old / marker).is_file():
        discard(old)
        return
    discard(final)
    os.rename(old, final)
    fsync_dir(final.parent)


def discard(path: Path) -> None:
    """Remove a file or folder so that no one ever sees part of it: a folder is first renamed to a hidden
    ``.<name>.trash-<id>`` (which ``clean_leftovers`` finishes removing after a kill), then deleted."""
    if path.is_dir() and not path.is_symlink():
        trash = path.with_name(f".{path.name}.trash-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def set_aside(path: Path) -> Path:
    """Move a damaged file or folder out of the way as ``<name>.damaged-<time>`` and return where it went.

    One damaged copy per name is kept, to look at: an older one is removed.
    """
    for older in path.parent.glob(f"{glob.escape(path.name)}.damaged-*"):
        discard(older)
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.rename(path, aside)
    fsync_dir(path.parent)
    return aside


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the OS cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


# One builder per artifact ------------------------------------------------------------------------------------

_locks: dict[Path, filelock.FileLock] = {}
_held: Counter[Path] = Counter()  # lock files a thread of this process holds (a lock is reentrant per thread)
_guard = threading.Lock()


def _lock_file(key: str) -> Path:
    return artifacts_dir() / f".{key}.lock"


def _lock(key: str) -> filelock.FileLock:
    """The process-wide lock object of ``key``: reentrant in one thread, exclusive between threads and processes."""
    path = _lock_file(key)
    with _guard:
        if path not in _locks:
            _locks[path] = filelock.FileLock(path)
        return _locks[path]


@contextmanager
def building(key: str, what: str, *, wait_s: float | None = None,
             on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the build lock of artifact ``key`` while building it.

    A builder that finds the lock taken calls ``on_wait(message)`` and waits up to ``wait_s`` seconds (0: not at
    all) for the other one; the caller then finds that builder's artifact ready. Past the wait, BuildBusy says
    what is being built and by which process. A killed builder's lock is free at once (the OS drops it).

    Args:
        key: the artifact's key.
        what: what is built, for the messages ("the conversion of model.gguf").
        wait_s: seconds to wait for another builder (default ``BUILD_WAIT_S``).
        on_wait: told once when this builder has to wait.
    """
    wait_s = BUILD_WAIT_S if wait_s is None else wait_s
    lock = _lock(key)
    try:
        if not _try(lock, 0):
            busy = f"{what} is being built by {_owner(key)}"
            if on_wait is not None and wait_s > 0:
                on_wait(f"Waiting: {busy}")
            if not _try(lock, wait_s):
                waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
                raise BuildBusy(f"{busy}{waited}; wait for it to finish, or try again")
    except OSError as exc:
        raise StoreError(unwritable(artifacts_dir(), exc)) from None
    path = _lock_file(key)
    try:
        with _guard:
            _held[path] += 1
            first = _held[path] == 1
        if first:
            with suppress(OSError):
                write_file(artifacts_dir() / f".{key}.owner", str(os.getpid()))
            clean_leftovers(owned=key)
        yield
    finally:
        with _guard:
            _held[path] -= 1
        lock.release()


def _try(lock: filelock.FileLock, wait_s: float) -> bool:
    try:
        lock.acquire(timeout=wait_s)
        return True
    except filelock.Timeout:
        return False


def _owner(key: str) -> str:
    """Who holds the lock of ``key``: 'another process (pid N)' (when it said so), or another thread of this one."""
    try:
        pid = int((artifacts_dir() / f".{key}.owner").read_text())
    except (OSError, ValueError):
        return "another process"
    return "another thread of this process" if pid == os.getpid() else f"another process (pid {pid})"


# Artifacts --------------------------------------------------------------------------------------------------


def write_artifact(key: str, write: Callable[[Path], None], meta: dict, *, replace: bool = False,
                   what: str | None = None) -> Path:
    """Write an artifact: ``write(tmp_dir)`` fills a temp folder, ``meta`` becomes its ``recipe.json`` (written
    last), then the folder is renamed into place, all under the artifact's build lock.

    A complete artifact already there (another process made it meanwhile) is kept and ``write`` does not run,
    unless ``replace`` (a resumed student superseding a shorter one, the conversion of a changed file). A kill at
    any moment leaves the old artifact or the new one, and at most a temp folder that ``clean_leftovers`` removes.
    StoreError when the disk is full or the folder read-only (nothing is left behind).
    """
    final = artifact_path(key)
    with building(key, what or f"artifact {key}"):
        if artifact_ready(key) and not replace:
            return final
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=artifacts_dir()))
        except OSError as exc:
            raise StoreError(unwritable(artifacts_dir(), exc)) from None
        try:
            write(tmp)
            finish_dir(tmp, MARKER, json.dumps(meta, indent=2, sort_keys=True))
            swap_in(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            unable = write_failure(exc, artifacts_dir())
            if unable is not None:
                raise unable from None
            raise
    return final


def write_failure(exc: BaseException, where: Path) -> StoreError | None:
    """A StoreError saying that ``where`` cannot be written, when ``exc`` comes from a full disk or a read-only
    folder; None for any other failure."""
    failed = os_error(exc)
    if failed is not None and failed.errno in (*_FULL, errno.EROFS, errno.EACCES):
        return StoreError(unwritable(where, failed))
    return None


def os_error(exc: BaseException) -> OSError | None:
    """The operating system's error behind ``exc``: itself, its cause, or the ``(os error N)`` that libraries
    written in Rust (safetensors, tokenizers) put in their messages."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno:
            return exc
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if found:
            number = int(found[1])
            return OSError(number, os.strerror(number))
        exc = exc.__cause__ or exc.__context__
    return None


def artifact_id(key: str) -> int | None:
    """Which folder is at ``artifacts/<key>`` now (its inode): a replaced artifact has another id."""
    try:
        return artifact_path(key).stat().st_ino
    except OSError:
        return None


def set_aside_artifact(key: str, seen: int | None) -> Path | None:
    """Move the damaged artifact ``key`` aside (``<key>.damaged-<time>``) so that it is made again, and return
    where it went. ``seen`` is the ``artifact_id`` of the folder found damaged: a folder another process has
    meanwhile put in its place is left alone (None is returned)."""
    path = artifact_path(key)
    with building(key, f"artifact {key}"):
        if seen is None or artifact_id(key) != seen:
            return None
        try:
            return set_aside(path)
        except OSError as exc:
            raise StoreError(f"{path} is damaged and cannot be moved aside: {unwritable(path.parent, exc)}") from None


def recover_artifact(key: str) -> None:
    """Put back the ``<key>.old`` that a kill between ``swap_in``'s two renames left (where the OS cannot swap
    in one step, or from an older version), unless a live builder is at it; quietly, for readers."""
    if artifact_ready(key) or not artifact_path(key).with_name(f"{key}.old").exists():
        return
    with suppress(StoreError, OSError), building(key, f"artifact {key}", wait_s=0):
        recover(artifact_path(key), MARKER)


def clean_leftovers(owned: str | None = None) -> list[Path]:
    """Remove what killed builds left under ``artifacts/``: temp folders (full model copies) whose build lock no
    live process holds, folders a kill caught while they were being deleted, and a superseded ``<key>.old``
    (put back by ``recover`` when it is the only complete copy). Returns the paths dealt with.

    Args:
        owned: a key whose lock the caller has just taken (so none of its temp folders has a live builder).
    """
    try:
        entries = [p for p in artifacts_dir().iterdir() if p.is_dir()]
    except OSError:
        return []
    done = []
    for path in entries:
        if _TRASH.match(path.name):
            shutil.rmtree(path, ignore_errors=True)
            done.append(path)
            continue
        match = _TEMP.match(path.name) or _OLD.match(path.name)
        if match is None or match["key"] != owned and _held[_lock_file(match["key"])]:
            continue
        lock = _lock(match["key"])
        try:
            if not _try(lock, 0):
                continue  # a live builder
        except OSError:
            return done  # a read-only folder: nothing can be cleaned
        try:
            if path.name.endswith(".old"):
                recover(artifact_path(match["key"]), MARKER)
            else:
                discard(path)
            done.append(path)
        except OSError:
            pass
        finally:
            lock.release()
    return done
