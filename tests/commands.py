"""Running the ``workbench`` command as a user would: in this process, or as ``python -m workbench``."""

from __future__ import annotations

import os
import subprocess
import sys

from workbench.cli.main import main


def run_cli(capsys, *argv):
    """``workbench ARGV`` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_module(*argv, env=None, timeout=600):
    """``python -m workbench ARGV`` in a child process."""
    return subprocess.run([sys.executable, "-m", "workbench", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env or os.environ.copy())


def assert_usage_error(code: int, out: str, err: str, flag: str, allowed: str = "") -> None:
    """Exit status 2, nothing on stdout, and one line on stderr that names ``flag`` and says ``allowed``."""
    assert code == 2 and out == "", (code, out)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("workbench: error: ") and flag in lines[0] and allowed in lines[0], err
    assert "Traceback" not in err
