import pytest

from workbench.response_cache.disk import ResponseCache


@pytest.fixture
def responses(tmp_path):
    c = ResponseCache(tmp_path / "responses")
    yield c
    c.close()
