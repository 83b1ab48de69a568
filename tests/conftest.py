import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every test run writes artifacts, caches and history under its own WORKBENCH_HOME, shared by the whole
# session so that the embedded model is converted once. Set before any workbench import reads it.
os.environ.setdefault("WORKBENCH_HOME", tempfile.mkdtemp(prefix="workbench-test-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WORKBENCH_METRICS_PORT", "0")  # the app's Prometheus exporter on any free port, never 9464

ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots; git-ignored


@pytest.fixture(scope="session")
def workbench_home() -> Path:
    return Path(os.environ["WORKBENCH_HOME"])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A local model directory holding a tiny random Llama: usable anywhere a model source is."""
    from tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The tiny model, fp32 on CPU, loaded by the transformers runtime."""
    from workbench import runtimes
    from workbench.recipe import Recipe

    return runtimes.build(Recipe(model=str(tiny_model_dir), device="cpu"))


@pytest.fixture(scope="session")
def embedded_model():
    """The real embedded model, fp32 on CPU (converted once per session)."""
    from workbench import runtimes
    from workbench.recipe import Recipe

    return runtimes.build(Recipe(device="cpu"))


@pytest.fixture
def history(tmp_path):
    """A request history of this test's own."""
    from workbench.observe.history import HistoryStore

    return HistoryStore(tmp_path / "metrics.sqlite")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
