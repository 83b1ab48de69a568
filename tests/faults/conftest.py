"""The fault-injection suite: real child processes (``child.py``) killed with SIGKILL in the middle of a write, two
processes building the same thing, a read-only WORKBENCH_HOME, a full disk; then the next run is checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("child.py")


class Child:
    """One ``child.py`` process: a scenario run with WORKBENCH_HOME=``home``, paused at ``at`` if given.

    Args:
        home: its WORKBENCH_HOME.
        scenario: a name in child.SCENARIOS; ``args`` are its keyword arguments.
        at: the fault point to pause at (see child.py).
        go: pause until ``go()`` rather than until killed.
        exchange: False makes folder swaps use two renames.
        fsize: writes past this many bytes fail with EFBIG (RLIMIT_FSIZE).
    """

    def __init__(self, home: Path, scenario: str, at: str | None = None, go: bool = False, exchange: bool = True,
                 fsize: int | None = None, **args):
        run = home.parent / f"child-{uuid.uuid4().hex[:8]}"
        run.mkdir()
        self.reached, self.go_file = run / "reached", run / "go"
        self.out, self.err = run / "stdout", run / "stderr"
        env = {**os.environ, "WORKBENCH_HOME": str(home), "FAULT_REACHED": str(self.reached),
               "FAULT_AT": at or "", "FAULT_GO": str(self.go_file) if go else "",
               "FAULT_NO_EXCHANGE": "" if exchange else "1", "FAULT_FSIZE": str(fsize or "")}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, str(CHILD), scenario, json.dumps(args)], env=env,
                                            stdout=out, stderr=err)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_reached(self, timeout: float = 120) -> None:
        """Until the child is paused at its point (it fails the test if the child ends first)."""
        self._until(self.reached.exists, timeout, "reach its fault point")

    def wait_lines(self, n: int, timeout: float = 120) -> int:
        """Until the child printed ``n`` finished writes; returns the number of the last one printed."""
        self._until(lambda: len(self._lines()) >= n, timeout, f"print {n} lines")
        return int(self._lines()[-1])

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, no flush."""
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(30)

    def go(self) -> None:
        self.go_file.touch()

    def result(self, timeout: float = 120) -> dict:
        """The scenario's result, once the child ended well."""
        code = self.process.wait(timeout)
        assert code == 0, f"child exited {code}: {self.err.read_text()[-3000:]}"
        return json.loads(self._lines()[-1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()

    def _lines(self) -> list[str]:
        return [line for line in self.out.read_text().splitlines() if line.strip()]

    def _until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.process.poll() is not None:
                pytest.fail(f"the child ended (status {self.process.returncode}) before it could {what}: "
                            f"{self.err.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the child did not {what} within {timeout:g} s")
            time.sleep(0.02)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A WORKBENCH_HOME of this test's own, for its children and for the run after them in this process."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("WORKBENCH_HOME", str(path))
    return path


@pytest.fixture
def child(home):
    """Start a child: ``child(scenario, at=..., go=..., exchange=..., **args)``; every one is killed at the end."""
    started: list[Child] = []

    def start(scenario: str, **kwargs) -> Child:
        started.append(Child(home, scenario, **kwargs))
        return started[-1]

    yield start
    for c in started:
        c.stop()


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    """The tiny model as an F32 GGUF file: a source converted once to safetensors, like the embedded model."""
    from tiny import make_model, make_tokenizer

    from workbench.runtimes.llamacpp import export

    tokenizer = make_tokenizer()
    path = tmp_path / "tiny.gguf"
    export.write_gguf(make_model(tokenizer), tokenizer, path, name="tiny", pre="gpt2")
    return path


@pytest.fixture(scope="session")
def teacher(tmp_path_factory) -> str:
    """A tiny 4-layer teacher directory to distill."""
    from tiny import make_model, make_tokenizer

    path = tmp_path_factory.mktemp("teacher")
    tokenizer = make_tokenizer()
    make_model(tokenizer, layers=4, init_range=0.02).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def spec() -> dict:
    """A tiny student of the tiny teacher (``StudentSpec`` fields): a few steps take a second."""
    return {"layers_ratio": 0.5, "lr": 1e-3, "batch_size": 2, "seq_len": 48, "corpus_new_tokens": 8,
            "samples_per_prompt": 1}


class Mount:
    """A tmpfs mounted by the test (it runs as root): a small disk to fill, or one to make read-only."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                              text=True)
        self.error = None if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def mount(tmp_path):
    """``mount(size)``: a tmpfs at tmp_path/mnt<n>; its ``error`` says why not where mounting is refused."""
    mounted: list[Mount] = []

    def make(size: str) -> Mount:
        mounted.append(Mount(tmp_path / f"mnt{len(mounted)}", size))
        return mounted[-1]

    yield make
    for m in mounted:
        if m.error is None:
            m.unmount()
