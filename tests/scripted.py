"""A scripted runtime with no model: token ids from arithmetic on the prompt (see Scripted)."""

from __future__ import annotations

import threading
import time

from workbench.optimize.stats import ModelStats
from workbench.recipe import Recipe
from workbench.runtimes.base import LoadedModel

EOS = 0


class Scripted(LoadedModel):
    """Token ids from arithmetic on the prompt: row ids are ``prompt[-1] + 1, + 2, ...`` modulo 50, 0 being EOS.

    Args:
        step_s: time each decode step takes.
        gate: when set, every step waits for it (to hold a batch open while a test acts).
    """

    def __init__(self, step_s: float = 0.002, gate: threading.Event | None = None):
        self.recipe = Recipe(model="scripted", device="cpu")
        self.stats = ModelStats(params=10, nonzero_params=10, weight_bytes=40, build_s=0.0, backend="scripted")
        self.notes = []
        self.step_s, self.gate = step_s, gate
        self.calls: list[int] = []  # rows per generate call
        self.fail = False

    def encode_chat(self, messages):
        return [1 + ord(c) % 40 for c in messages[-1]["content"]]

    def tokenize(self, text):
        return [1 + ord(c) % 40 for c in text]

    def decode(self, token_ids):
        return "".join(chr(ord("a") + t % 26) for t in token_ids if t != EOS)

    @property
    def eos_ids(self):
        return frozenset({EOS})

    def generate(self, rows, settings, on_token):
        self.calls.append(len(rows))
        if self.fail:
            raise RuntimeError("scripted failure")
        running = list(range(len(rows)))
        for step in range(1, settings.max_new_tokens + 1):
            if self.gate is not None:
                self.gate.wait(10)
            time.sleep(self.step_s)
            now = time.perf_counter()
            for i in running:
                if rows[i].open:
                    token = 0 if settings.ignore_eos is False and rows[i].prompt_ids[0] == 1 + ord("!") % 40 else \
                        (rows[i].prompt_ids[-1] + step) % 50 or 1
                    on_token(i, token, now)
            running = [i for i in running if rows[i].active]
            if not running:
                return

    def nll(self, token_ids, first_target):
        return float(len(token_ids) - first_target)  # one nat per scored token: perplexity e
