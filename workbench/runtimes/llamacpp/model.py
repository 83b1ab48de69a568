"""A GGUF file served by llama.cpp through its C API: every row of a batch is a sequence of one decode call.

Prompt tokens come from the transformers tokenizer of the model's source (the same ids as under the
transformers runtime: same prompts, same perplexity text); llama.cpp computes. A batch of rows is prefilled
together, then each decode step evaluates one token of every active row in a single ``llama_decode`` (several
sequences of one KV cache): a real batch, whose matrix products read each weight once for all rows. Each token is
timed right after llama.cpp has computed it and the row's sampler has chosen it.
"""

from __future__ import annotations

import ctypes
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...optimize.stats import ModelStats
from ...recipe import GenerationSettings, Recipe
from ..base import LoadedModel, OnToken, Row, TokenizerText

MAX_CONTEXT = 8192  # KV cache tokens of one context, shared out among its sequences
MIN_SEQUENCE_CONTEXT = 256
BATCH_TOKENS = 512  # prompt tokens per llama_decode call while prefilling
_init_lock = threading.Lock()
_initialised = False


def library():
    """The llama.cpp bindings, initialised once with their log output silenced (errors still raise here)."""
    global _initialised
    import llama_cpp

    with _init_lock:
        if not _initialised:
            llama_cpp.llama_backend_init()
            llama_cpp.llama_log_set(_SILENT, ctypes.c_void_p())
            _initialised = True
    return llama_cpp


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _SILENT(level, text, user_data):  # noqa: N802 (a C callback)
    pass


class LlamaCppModel(TokenizerText, LoadedModel):
    """A GGUF file loaded by llama.cpp.

    Args:
        recipe: the resolved recipe (threads concrete).
        path: the GGUF file.
        tokenizer: the transformers tokenizer of the model's source (prompt ids, decoding).
        stats: what the file stores and how it was built.
        notes: what the user should know about this build.
        eos_ids: tokens that end an answer (the source's generation config, and llama.cpp's end-of-generation
            tokens).
    """

    def __init__(self, recipe: Recipe, path: Path, tokenizer, stats: ModelStats, notes: list[str],
                 eos_ids: frozenset[int]):
        self.recipe, self.path, self.tokenizer = recipe, Path(path), tokenizer
        self.stats, self.notes = stats, notes
        self._lib = library()
        params = self._lib.llama_model_default_params()
        params.n_gpu_layers = 0  # this runtime computes on the CPU
        self._model = self._lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp cannot load {self.path}")
        self._vocab = self._lib.llama_model_get_vocab(self._model)
        self._n_vocab = self._lib.llama_vocab_n_tokens(self._vocab)
        self._eog = frozenset(t for t in range(self._n_vocab) if self._lib.llama_vocab_is_eog(self._vocab, t))
        self._eos = frozenset(eos_ids) | self._eog
        self._context_length = int(self._lib.llama_model_n_ctx_train(self._model))
        self._lock = threading.Lock()  # one context: one generate (or scoring pass) at a time
        self._ctx, self._ctx_seqs, self._seq_ctx = None, 0, 0
        self._scorer, self._scorer_tokens = None, 0
        self._batch = None
        self._batch_size = 0

    # -- tokens

    @property
    def eos_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def context_length(self) -> int | None:
        return self._context_length

    # -- generation

    @property
    def max_batch_size(self) -> int:
        return 256

    def generate(self, rows: Sequence[Row], settings: GenerationSettings, on_token: OnToken) -> None:
        with self._lock:
            self._live()
            ctx = self._context(len(rows))
            self._lib.llama_memory_clear(self._lib.llama_get_memory(ctx), True)
            for row in rows:
                need = len(row.prompt_ids) + settings.max_new_tokens
                if need > self._seq_ctx:
                    raise ValueError(f"{len(row.prompt_ids)} prompt tokens + {settings.max_new_tokens} new tokens "
                                     f"exceed the {self._seq_ctx} tokens of context each of {len(rows)} sequences "
                                     "gets here; ask for fewer new tokens or a smaller batch")
            samplers = [self._sampler(settings) for _ in rows]
            try:
                self._run(ctx, rows, settings, samplers, on_token)
            finally:
                for sampler in samplers:
                    self._lib.llama_sampler_free(sampler)

    def _run(self, ctx, rows, settings, samplers, on_token) -> None:
        last = [0] * len(rows)  # each row's latest token
        for i, token, now in self._prefill(ctx, rows, samplers):
            last[i] = token
            if rows[i].open:
                on_token(i, token, now)
        running = [i for i, row in enumerate(rows) if row.active]
        for step in range(1, settings.max_new_tokens):
            if not running:
                return
            batch = self._batch_for(len(running))
            for k, i in enumerate(running):
                self._put(batch, k, last[i], len(rows[i].prompt_ids) + step - 1, i, True)
            batch.n_tokens = len(running)
            self._decode(ctx, batch)
            for k, i in enumerate(running):
                last[i] = self._lib.llama_sampler_sample(samplers[i], ctx, k)
                if rows[i].open:
                    on_token(i, last[i], time.perf_counter())
            running = [i for i in running if rows[i].active]

    def _prefill(self, ctx, rows, samplers):
        """Every row's prompt, BATCH_TOKENS at a time; yields (row, first token, time) as each prompt ends."""
        tokens = [(i, pos, token) for i, row in enumerate(rows) for pos, token in enumerate(row.prompt_ids)]
        for start in range(0, len(tokens), BATCH_TOKENS):
            chunk = tokens[start:start + BATCH_TOKENS]
            batch = self._batch_for(len(chunk))
            ends = []
            for k, (i, pos, token) in enumerate(chunk):
                is_last = pos == len(rows[i].prompt_ids) - 1
                self._put(batch, k, token, pos, i, is_last)
                if is_last:
                    ends.append((k, i))
            batch.n_tokens = len(chunk)
            self._decode(ctx, batch)
            for k, i in ends:
                yield i, self._lib.llama_sampler_sample(samplers[i], ctx, k), time.perf_counter()

    def _decode(self, ctx, batch) -> None:
        status = self._lib.llama_decode(ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama.cpp could not evaluate the batch (llama_decode returned {status})")

    @staticmethod
    def _put(batch, k: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[k] = token
        batch.pos[k] = pos
        batch.n_seq_id[k] = 1
        batch.seq_id[k][0] = seq
        batch.logits[k] = logits

    def _batch_for(self, n: int):
        if self._batch is None or self._batch_size < n:
            if self._batch is not None:
                self._lib.llama_batch_free(self._batch)
            self._batch_size = max(n, BATCH_TOKENS)
            self._batch = self._lib.llama_batch_init(self._batch_size, 0, 1)
        return self._batch

    def _context(self, n_seq: int):
        """A context with room for ``n_seq`` sequences (made anew when a wider batch comes)."""
        if self._ctx is not None and self._ctx_seqs >= n_seq:
            return self._ctx
        if self._ctx is not None:
            self._lib.llama_free(self._ctx)
            self._ctx = None
        seq_ctx = max(MIN_SEQUENCE_CONTEXT, min(self._context_length or MAX_CONTEXT, MAX_CONTEXT) // n_seq)
        self._ctx = self._new_context(seq_ctx * n_seq, BATCH_TOKENS, n_seq)
        self._ctx_seqs, self._seq_ctx = n_seq, seq_ctx
        return self._ctx

    def _new_context(self, n_ctx: int, n_batch: int, n_seq: int):
        params = self._lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_batch, n_batch, n_seq
        params.n_threads = params.n_threads_batch = self.recipe.threads
        params.kv_unified = False  # each sequence attends to its own cache only
        params.no_perf = True
        ctx = self._lib.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp cannot make a context of {n_ctx} tokens for {n_seq} sequences")
        return ctx

    def _sampler(self, settings: GenerationSettings):
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if settings.ignore_eos:  # a benchmark's exactly max_new_tokens: end-of-generation tokens are never chosen
            biases = (lib.llama_logit_bias * len(self._eog))(*[lib.llama_logit_bias(t, float("-inf"))
                                                               for t in sorted(self._eog)])
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_logit_bias(self._n_vocab, len(self._eog), biases))
        if settings.greedy:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:  # as transformers applies them: temperature, then nucleus, then a draw
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(float(settings.temperature)))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(float(settings.top_p), 1))
            seed = settings.seed if settings.seed is not None else random.getrandbits(32)
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    # -- scoring

    def nll(self, token_ids: list[int], first_target: int) -> float:
        with self._lock:
            self._live()
            ctx = self._scoring_context(len(token_ids))
            self._lib.llama_memory_clear(self._lib.llama_get_memory(ctx), True)
            batch = self._batch_for(len(token_ids))
            for k, token in enumerate(token_ids):
                self._put(batch, k, token, k, 0, k >= first_target - 1)
            batch.n_tokens = len(token_ids)
            self._decode(ctx, batch)
            scored = len(token_ids) - first_target + 1  # logits of positions first_target-1 .. end
            logits = np.ctypeslib.as_array(self._lib.llama_get_logits(ctx), shape=(scored, self._n_vocab))
            logits = logits[:-1].astype(np.float64)  # the last position predicts past the text
            targets = np.asarray(token_ids[first_target:])
            top = logits.max(axis=1, keepdims=True)
            log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
            return float((log_z - logits[np.arange(len(targets)), targets]).sum())

    def _scoring_context(self, n_tokens: int):
        """A context of its own whose every position returns logits (perplexity), sized for ``n_tokens``."""
        if self._scorer is not None and self._scorer_tokens >= n_tokens:
            return self._scorer
        if self._scorer is not None:
            self._lib.llama_free(self._scorer)
            self._scorer = None
        size = max(BATCH_TOKENS, -(-n_tokens // 256) * 256)
        self._scorer = self._new_context(size, size, 1)
        self._scorer_tokens = size
        return self._scorer

    # -- freeing

    def _live(self) -> None:
        if self._model is None:
            raise RuntimeError("this llama.cpp model is closed")

    def close(self) -> None:
        """Free the contexts, the batch and the model (a request already running finishes first)."""
        with self._lock:
            for ctx in (self._ctx, self._scorer):
                if ctx is not None:
                    self._lib.llama_free(ctx)
            if self._batch is not None:
                self._lib.llama_batch_free(self._batch)
            if self._model is not None:
                self._lib.llama_model_free(self._model)
            self._ctx = self._scorer = self._batch = self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
