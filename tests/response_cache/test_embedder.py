"""The semantic embedder leaves the process's torch settings alone: engines generating at the same time keep
their thread count (and so their measured latency)."""

import numpy as np
import pytest
import torch

from workbench.response_cache import embedder as embedding


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_embedding_leaves_the_process_thread_count_unchanged(threads, monkeypatch):
    if embedding.embedding_model_dir() is None:
        pytest.skip(f"the embedding model is not installed ({embedding.EMBEDDING_INSTALL})")
    embed = embedding.Embedder()
    wanted = 2 if threads != 2 else 3  # a count the old code's set_num_threads(1) would have passed through
    torch.set_num_threads(wanted)
    seen = []

    def record(n):
        seen.append(n)

    monkeypatch.setattr(torch, "set_num_threads", record)  # a change made and undone inside counts too
    vectors = embed.encode(["Is coffee good for you?", "What is the capital of France?"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert seen == [] and torch.get_num_threads() == wanted
