"""Where the workbench keeps things on disk, and how an artifact is written so that no reader sees half of it.

Layout under ``WORKBENCH_HOME`` (default ``~/.cache/llm-latency-workbench``): ``artifacts/<recipe_key>/``
(safetensors + ``recipe.json``), ``responses/`` (the response cache), ``metrics.sqlite`` (the request
history), ``benchmarks/`` (saved batch-size sweeps).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def home() -> Path:
    root = Path(os.environ.get("WORKBENCH_HOME") or Path.home() / ".cache" / "llm-latency-workbench")
    root.mkdir(parents=True, exist_ok=True)
    return root


def artifacts_dir() -> Path:
    path = home() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_path(key: str) -> Path:
    return artifacts_dir() / key


def artifact_ready(key: str) -> bool:
    """An artifact exists only once its directory was renamed into place with its recipe.json."""
    return (artifact_path(key) / "recipe.json").is_file()


def write_artifact(key: str, write: Callable[[Path], None], meta: dict) -> Path:
    """Write an artifact atomically: ``write(tmp_dir)`` fills a temp dir, which is then renamed into place.

    A crash half-way leaves only a temp dir behind, never a half-written artifact.
    """
    final = artifact_path(key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=artifacts_dir()))
    try:
        write(tmp)
        (tmp / "recipe.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if final.exists():  # another process finished first; theirs is as good as ours
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
