"""Every way a ``workbench`` command can fail ends in one line on stderr and a non-zero exit, never a traceback:
undecodable bytes, a prompt over the model's context, a full disk, damaged files under WORKBENCH_HOME, a bug."""

from __future__ import annotations

import errno
import json
import logging
import resource
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from commands import run_cli
from records import T0, record

from workbench.cli import commands
from workbench.cli.main import main
from workbench.observe.history import HistoryStore
from workbench.observe.prometheus import HistoryFollower, PrometheusExporter
from workbench.optimize.variants import find_student
from workbench.store import StoreError

STUDENT = ["--steps", 1, "--no-eval", "--seq-len", 16, "--corpus-new-tokens", 4, "--samples-per-prompt", 1,
           "--train-batch-size", 2, "--seed", 5]


def error_line(err: str) -> str:
    """The one error line a failed command ends with; no traceback anywhere."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("workbench: error: ")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err
    return errors[0].removeprefix("workbench: error: ")


def fake_command(monkeypatch, exc: BaseException) -> None:
    """``workbench cache stats`` raises ``exc``."""
    def raise_it(args):
        raise exc

    monkeypatch.setitem(commands.COMMANDS, "cache", raise_it)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A WORKBENCH_HOME of this test's own."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("WORKBENCH_HOME", str(path))
    return path


# ----------------------------------------------------------------------------------------- undecodable input


def test_undecodable_prompt_bytes_exit_2_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "workbench", "generate", "--prompt", b"\xff\xfe"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert error_line(proc.stderr) == "--prompt is not valid UTF-8; give it as UTF-8 text"


def test_any_undecodable_flag_is_named(capsys, tiny):
    code, _, err = run_cli(capsys, "generate", "--prompt", "hi", "--backend", "\udcff", *tiny)  # as argv gives it
    assert code == 2 and error_line(err).startswith("--backend is not valid UTF-8")


# ------------------------------------------------------------------------------------------ context window


def test_a_120_kb_prompt_ends_at_once_naming_the_prompt(capsys, tiny):
    prompt = "hello world " * 10_000  # 120 kB; the tiny model's context is 512 tokens
    code, out, err = run_cli(capsys, "generate", *tiny, "--prompt", prompt, "--no-cache")
    assert code == 2 and out == ""
    line = error_line(err)
    assert line.startswith("--prompt: the prompt is ") and "the model's context of 512 tokens" in line
    assert "--max-new-tokens is 256" in line and "shorten the prompt to 256 tokens or fewer" in line


def test_too_many_new_tokens_name_max_new_tokens(capsys, tiny):
    code, _, err = run_cli(capsys, "generate", *tiny, "--prompt", "Hi", "--max-new-tokens", 600, "--no-cache")
    assert code == 2
    line = error_line(err)
    assert line.startswith("--max-new-tokens: the prompt is ") and "context of 512 tokens" in line
    prompt_tokens = int(line.split("the prompt is ")[1].split()[0])
    assert line.endswith(f"set --max-new-tokens to {512 - prompt_tokens} or less")
    code, _, err = run_cli(capsys, "bench", *tiny, "--max-new-tokens", 600, "--runs", 1, "--warmup", 0)
    assert code == 2 and error_line(err).startswith("--max-new-tokens: ")


# ------------------------------------------------------------------------------------ disk and system errors


def test_a_full_disk_during_distill_is_one_line_naming_the_folder(tiny, home):
    def small_files():  # writes past 100 kB fail with EFBIG, as on a full disk; the student's weights need more
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run([sys.executable, "-m", "workbench", "distill", *tiny, *map(str, STUDENT)],
                          capture_output=True, text=True, timeout=600, preexec_fn=small_files)
    assert proc.returncode == 1
    line = error_line(proc.stderr)
    assert line.startswith(f"cannot write to {home / 'artifacts'}") and "(File too large); free some disk space" in line


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.safetensors"),
     "the disk is full (/data/x.safetensors): free some space, or set WORKBENCH_HOME to a folder on another disk, "
     "and run the command again"),
    (RuntimeError("write failed: No space left on device (os error 28)"),
     "the disk is full: free some space, or set WORKBENCH_HOME to a folder on another disk, and run the command "
     "again"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/metrics.sqlite"),
     "Permission denied (/data/metrics.sqlite)"),
    (StoreError("student x of y is being built by another process (pid 7); wait for it"),
     "student x of y is being built by another process (pid 7); wait for it"),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), "the output was closed before the command finished"),
])
def test_system_errors_exit_1_in_one_line(capsys, monkeypatch, exc, expected):
    fake_command(monkeypatch, exc)
    code, _, err = run_cli(capsys, "cache", "stats")
    assert code == 1 and error_line(err) == expected


def test_an_unforeseen_error_is_one_line_unless_debugging(capsys, monkeypatch):
    fake_command(monkeypatch, ZeroDivisionError("division by zero\nsecond line"))
    monkeypatch.delenv("WORKBENCH_DEBUG", raising=False)
    code, _, err = run_cli(capsys, "cache", "stats")
    assert code == 1
    assert error_line(err) == ("ZeroDivisionError: division by zero second line (set WORKBENCH_DEBUG=1 to print "
                               "the traceback)")
    monkeypatch.setenv("WORKBENCH_DEBUG", "1")
    code, _, err = run_cli(capsys, "cache", "stats")
    assert code == 1 and "Traceback" in err and "in raise_it" in err
    assert err.rstrip().splitlines()[-1] == "workbench: error: ZeroDivisionError: division by zero second line"


def test_an_error_message_is_cut_to_one_short_line(capsys, monkeypatch):
    fake_command(monkeypatch, ValueError("x" * 10_000))
    code, _, err = run_cli(capsys, "cache", "stats")
    line = error_line(err)
    assert code == 1 and len(line) < 500 and line.startswith("ValueError: xxx") and "..." in line


def test_ctrl_c_still_exits_130(capsys, monkeypatch):
    fake_command(monkeypatch, KeyboardInterrupt())
    code, _, err = run_cli(capsys, "cache", "stats")
    assert code == 130 and err == "workbench: interrupted\n"


def test_library_warnings_are_one_line_each_and_said_once(capsys, monkeypatch):
    def warns(args):
        log = logging.getLogger("workbench.observe.history")
        try:
            raise OSError("disk on fire")
        except OSError:
            log.exception("the history cannot be written")
        log.warning("the history cannot be written")
        return 0

    monkeypatch.setitem(commands.COMMANDS, "cache", warns)
    monkeypatch.delenv("WORKBENCH_DEBUG", raising=False)
    code, _, err = run_cli(capsys, "cache", "stats")
    assert code == 0 and err == "workbench: warning: the history cannot be written\n"
    monkeypatch.setenv("WORKBENCH_DEBUG", "1")
    code, _, err = run_cli(capsys, "cache", "stats")
    assert err.startswith("workbench: warning: the history cannot be written\nTraceback") and "disk on fire" in err


# -------------------------------------------------------------------------------- damaged files in the home


@pytest.fixture(scope="module")
def student_home(tmp_path_factory, tiny_model_dir):
    """A WORKBENCH_HOME holding one student of the tiny model (and its training text): copied by each test."""
    path = tmp_path_factory.mktemp("student-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_HOME", str(path))
        code = main(["distill", "--model", str(tiny_model_dir), *map(str, STUDENT), "--json"])
        assert code == 0
        name = next(p.name for p in (path / "artifacts").iterdir() if p.is_dir() and not p.name.startswith("."))
        student = json.loads((path / "artifacts" / name / "recipe.json").read_text())["recipe"]["variant"]
        assert find_student(str(tiny_model_dir), student) is not None
    return path, name, student


def copy_home(student_home, home):
    source, key, student = student_home
    shutil.copytree(source, home, dirs_exist_ok=True)
    return home / "artifacts" / key, student


def test_a_damaged_student_is_one_line_naming_its_folder(capsys, tiny, student_home, home):
    folder, student = copy_home(student_home, home)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    code, _, err = run_cli(capsys, "generate", *tiny, "--variant", student, "--prompt", "Hi", "--no-cache")
    assert code == 2
    line = error_line(err)
    assert line.startswith(f"--variant: the student in {folder} is damaged") and "build it again" in line


def test_a_damaged_local_model_is_one_line_naming_it(capsys, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut short
    code, _, err = run_cli(capsys, "generate", "--model", model, "--prompt", "Hi", "--no-cache")
    assert code == 2
    assert error_line(err).startswith(f"--model: cannot load {model}: a weights file is damaged")


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2, 3]", '[["x"]]', "[[]]"])
def test_a_damaged_training_text_is_a_warning_naming_the_file_and_is_written_again(capsys, tiny, student_home, home,
                                                                                    text):
    folder, _ = copy_home(student_home, home)
    damaged = [folder / "corpus.json", folder.parent / f".{folder.name}-work" / "corpus.json"]
    for path in damaged:
        if path.parent.is_dir():
            path.write_text(text)
    argv = [*STUDENT]
    argv[1] = 2  # one more step: the student resumes, reading its training text
    code, _, err = run_cli(capsys, "distill", *tiny, *argv)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "does not hold token sequences" in line]
    assert warnings and any(str(p) in warnings[0] for p in damaged) and "Traceback" not in err
    written = [json.loads(p.read_text()) for p in damaged if p.is_file()]
    assert written and all(isinstance(seqs, list) and seqs and all(seqs) for seqs in written)


# ------------------------------------------------------------------------------------------------ history


def test_a_damaged_history_is_a_warning_and_the_answer_comes(capsys, tiny, home):
    (home / "metrics.sqlite").write_bytes(b"not a database " * 100)
    code, out, err = run_cli(capsys, "generate", *tiny, "--prompt", "Hi", "--max-new-tokens", 3, "--no-cache")
    assert code == 0 and "TTFT" in out
    warnings = [line for line in err.splitlines() if line.startswith("workbench: warning: ")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"workbench: warning: The request history {home / 'metrics.sqlite'} could not be "
                                  "read")
    assert HistoryStore().count() == 1  # the new history recorded the answer


def test_metrics_server_goes_on_following_after_a_failed_read(capsys, tmp_path, monkeypatch):
    store = HistoryStore(tmp_path / "metrics.sqlite")
    store.add(record("aaaa1111", T0, 0.25, 0.05))
    exporter = PrometheusExporter(process_metrics=False)
    follower = HistoryFollower(store, exporter)
    stop = threading.Event()
    reads = []
    real_after = store.after

    def after(last_id=0, limit=10_000):
        reads.append(last_id)
        if len(reads) == 1:
            raise RuntimeError("the disk hiccupped")  # not a database error
        if len(reads) == 2:
            store.add(record("aaaa1111", T0 + 1, 0.35, 0.05))  # written while the reader was failing
        rows = real_after(last_id, limit)
        if not rows:
            stop.set()  # caught up: end the loop
        return rows

    monkeypatch.setattr(store, "after", after)
    commands.follow(follower, stop, 0.001)
    assert follower.last_id == 2
    assert 'workbench_ttft_seconds_count{label="recipe aaaa1111",recipe="aaaa1111"} 2.0' in exporter.text()
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "RuntimeError: the disk hiccupped" in err and "Traceback" not in err
    assert "reading the request history works again" in err
