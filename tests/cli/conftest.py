import pytest


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The recipe flags that pick the tiny model."""
    return ["--model", str(tiny_model_dir)]
