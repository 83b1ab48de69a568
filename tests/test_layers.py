"""The package's import rules: the real package keeps them, and the checker catches each kind of breach."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workbench.tools import layers


def test_the_package_has_no_cycle_and_every_import_points_down():
    assert layers.check() == []


def test_the_command_prints_the_layers_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "workbench.tools.layers"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "serving:" in proc.stdout and "no cycle" in proc.stdout


def write(root: Path, files: dict[str, str]) -> Path:
    package = root / "workbench"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_a_cycle_hidden_inside_a_function_is_found(tmp_path):
    package = write(tmp_path, {
        "store.py": "def home():\n    from .loading import load\n    return load\n",
        "loading.py": "from . import store\n\ndef load():\n    return store\n",
    })
    problems = layers.check(package)
    assert any(p.startswith("import cycle: workbench.loading -> workbench.store") for p in problems)
    assert any("workbench.store (store) imports workbench.loading (loading), a layer above it" in p for p in problems)


def test_streamlit_outside_the_ui_and_torch_above_the_seam_are_breaches(tmp_path):
    package = write(tmp_path, {
        "recipe.py": "import streamlit as st\n",
        "serving/__init__.py": "",
        "serving/engine.py": "def run():\n    import torch\n    return torch\n",
        "ui/__init__.py": "",
        "ui/page.py": "import streamlit\nfrom ..serving import engine\n",
    })
    problems = layers.check(package)
    assert any("workbench.recipe imports streamlit" in p for p in problems)
    assert any("workbench.serving.engine imports torch" in p for p in problems)
    assert not any("workbench.ui.page" in p for p in problems)  # the UI may use both, and import downwards


def test_a_module_in_no_layer_is_reported(tmp_path):
    problems = layers.check(write(tmp_path, {"gadgets.py": ""}))
    assert problems == ["workbench.gadgets: in no layer; add it to LAYERS in workbench/tools/layers.py"]
