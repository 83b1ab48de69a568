import pytest
from records import seed, seeded_records

from workbench.observe.history import HistoryStore


@pytest.fixture
def seeded(tmp_path) -> tuple[HistoryStore, list[dict]]:
    """A history of this test's own, holding ``seeded_records()``: (store, its rows)."""
    store = HistoryStore(tmp_path / "metrics.sqlite")
    return store, seed(store, seeded_records())
