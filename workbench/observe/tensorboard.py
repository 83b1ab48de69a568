"""TensorBoard (optional: ``pip install .[tensorboard]``): the exporter's figures as scalars, one step per request."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .. import store
from ..latency import to_ms
from .records import RequestRecord

TENSORBOARD_ENV = "WORKBENCH_TENSORBOARD"  # "1" -> WORKBENCH_HOME/tensorboard, or a directory


def tensorboard_dir_from_env() -> Path | None:
    """Where TensorBoard scalars go when ``WORKBENCH_TENSORBOARD`` is set (None when unset or "0"/"off")."""
    value = (os.environ.get(TENSORBOARD_ENV) or "").strip()
    if value.lower() in ("", "0", "off", "false", "no"):
        return None
    if value.lower() in ("1", "on", "true", "yes"):
        return store.home() / "tensorboard"
    return Path(value).expanduser()


class TensorBoardWriter:
    """The exporter's figures as TensorBoard scalars, one step per request of a recipe.

    Tags: ``ttft_ms/<recipe>``, ``tpot_ms/…``, ``e2e_ms/…``, ``queue_ms/…``, ``decode_tok_s/…``,
    ``new_tokens/…`` for cache misses; ``cache_hit_e2e_ms/…`` for cache hits; ``cache_hit/…`` (1 or 0) for both.

    Args:
        logdir: the TensorBoard log directory.
    """

    def __init__(self, logdir: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.logdir = Path(logdir)
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.steps: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, rec: RequestRecord) -> None:
        name = _tag(rec.recipe_label or rec.recipe_key)
        hit = (rec.cache or "miss") != "miss"
        if hit:
            scalars = {"cache_hit_e2e_ms": to_ms(rec.e2e_s)}
        else:
            scalars = {"ttft_ms": to_ms(rec.ttft_s), "tpot_ms": to_ms(rec.tpot_s), "e2e_ms": to_ms(rec.e2e_s),
                       "queue_ms": to_ms(rec.queue_s), "decode_tok_s": rec.decode_tok_s,
                       "new_tokens": float(rec.new_tokens or 0)}
        scalars["cache_hit"] = float(hit)
        with self._lock:
            step = self.steps[name] = self.steps.get(name, 0) + 1
            for tag, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(f"{tag}/{name}", value, step, walltime=rec.started_at)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _tag(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)
