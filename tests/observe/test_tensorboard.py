"""TensorBoard scalars (the optional extra): written per request, and switched on by an environment variable."""

from __future__ import annotations

import pytest
from records import T0, record

from workbench.observe import listeners, tensorboard
from workbench.observe.history import HistoryStore


def test_tensorboard_writer_writes_the_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install .[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = tensorboard.TensorBoardWriter(tmp_path / "tb")
    writer.record(record("gggg7777", T0, 0.2, 0.05))
    writer.record(record("gggg7777", T0 + 1, 0.4, 0.05))
    writer.record(record("gggg7777", T0 + 2, 0.001, 0.0001, cache="exact"))
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    ttft = events.Scalars("ttft_ms/recipe_gggg7777")
    assert [(e.step, round(e.value, 3)) for e in ttft] == [(1, 200.0), (2, 400.0)]
    assert [e.value for e in events.Scalars("cache_hit/recipe_gggg7777")] == [0.0, 0.0, 1.0]
    assert len(events.Scalars("cache_hit_e2e_ms/recipe_gggg7777")) == 1
    assert ttft[0].wall_time == pytest.approx(T0)


def test_tensorboard_env_var_turns_it_on(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install .[tensorboard])")
    logdir = tmp_path / "tb"
    monkeypatch.setenv(tensorboard.TENSORBOARD_ENV, str(logdir))
    monkeypatch.setattr(listeners, "_env_listeners_added", False)
    before = list(listeners._listeners)
    try:
        store = HistoryStore(tmp_path / "m.sqlite")
        store.add(record("hhhh8888", T0, 0.2, 0.05))
        store.flush()  # the writer thread adds the listener and writes the scalars
        added = [fn for fn in listeners._listeners if fn not in before]
        assert len(added) == 1
        assert list(logdir.glob("events.out.tfevents.*"))
    finally:
        for fn in list(listeners._listeners):
            if fn not in before:
                listeners.remove_listener(fn)
                fn.__self__.close()
    monkeypatch.setenv(tensorboard.TENSORBOARD_ENV, "0")
    assert tensorboard.tensorboard_dir_from_env() is None
