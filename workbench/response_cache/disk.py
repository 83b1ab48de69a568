"""The response cache on disk: one diskcache under ``WORKBENCH_HOME/responses/``, shared by every process.

Keys are text and values JSON text or raw float32 bytes, never pickles: a row that holds a pickle, or names a file
outside the cache directory, is refused (a miss) and reported, never read or deleted. Counters (hits, misses, time
saved) live in a small second diskcache, ``responses/stats/``, that never evicts.

Answers can be kept apart per scope (``ScopedPolicy``): a browser session on a shared server finds only the answers
it stored itself. Callers without a scope (the CLI, a single user's app) share one space.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path, PurePath

import diskcache
import numpy as np

from .. import store
from ..recipe import GenerationSettings
from .embedder import CacheUnavailable, Embedder, embedder
from .guard import same_meaning_guard
from .keys import HIT_KINDS, CachePolicy, context_key, exact_key, last_question

RESPONSES = "responses"
DEFAULT_SIZE_LIMIT_MB = 256
MAX_QUESTIONS_PER_CONTEXT = 256  # bounds a semantic lookup: one matrix product over at most this many rows


@dataclass
class CacheHit:
    """A stored answer found for a request."""

    kind: str  # "exact" | "semantic"
    entry: dict  # the stored answer: text, token_ids, pieces, prompt_tokens, e2e_s, finish_reason, ...
    lookup_s: float  # time to find it (hashing, reading, embedding for a semantic match)
    similarity: float | None = None  # semantic: cosine similarity with the matched question
    matched_question: str | None = None  # semantic: the question whose answer this is

    @property
    def saved_s(self) -> float:
        """What the model took for the original answer minus the lookup."""
        return max(0.0, (self.entry.get("e2e_s") or 0.0) - self.lookup_s)

    def info(self) -> dict:
        """A JSON-friendly summary: kind, lookup_ms, saved_ms, similarity, matched_question, stored_at."""
        return {
            "kind": self.kind,
            "lookup_ms": round(self.lookup_s * 1000, 3),
            "saved_ms": round(self.saved_s * 1000, 1),
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "matched_question": self.matched_question,
            "stored_at": self.entry.get("stored_at"),
        }


def responses_dir() -> Path:
    return store.home() / RESPONSES


@dataclass(frozen=True)
class ScopedPolicy(CachePolicy):
    """A ``CachePolicy`` whose answers are kept apart: a lookup finds only answers stored under the same scope.

    Args:
        scope: whose answers these are (a browser session's id on a shared server); None shares them with every
            caller without a scope.
    """

    scope: str | None = None


def scope_of(policy: CachePolicy) -> str | None:
    """The policy's scope (a ``ScopedPolicy``'s, or a ``scope`` field of CachePolicy itself), None when shared."""
    return getattr(policy, "scope", None)


def scoped_key(recipe_key: str, scope: str | None) -> str:
    """The recipe key the cache's keys are made from: the same recipe under another scope is another context."""
    return recipe_key if scope is None else f"{recipe_key}@{scope}"


class DamagedEntry(OSError):
    """A cache row that holds a pickle or names a file outside the cache directory. An OSError, so that diskcache
    treats it as an entry whose file is gone: a miss."""


REFUSED_KEY = object()  # what iterating the cache yields for a key stored as a pickle, instead of unpickling it


class _NoPickleDisk(diskcache.Disk):
    """Stores and reads only text, bytes and numbers, inside its own directory: a cache directory can never make us
    unpickle anything, nor read or delete a file elsewhere.

    Every way diskcache turns a row back into a key (``get``) or a value (``fetch``), and every file it deletes
    (``remove``), passes here; ``refused`` keeps what was turned down, for the cache's ``problem`` line.
    """

    def __init__(self, directory, **kwargs):
        super().__init__(directory, **kwargs)
        self.refused: dict[str, None] = {}  # descriptions of the refused rows, in order, once each

    def put(self, key):
        db_key, raw = super().put(key)
        if not raw:
            raise TypeError(f"the response cache's keys are text, bytes or numbers, not {type(key).__name__}")
        return db_key, raw

    def get(self, key, raw):
        if not raw:
            self._refuse("a key stored as a pickle (never unpickled)")
            return REFUSED_KEY
        return super().get(key, raw)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not isinstance(value, (str, bytes, int, float)) and not read:
            raise TypeError(f"the response cache stores text, bytes or numbers, not {type(value).__name__}")
        return super().store(value, read, key)

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            self._refuse("a value stored as a pickle (never unpickled)")
            raise DamagedEntry("refusing to unpickle a value from the response cache")
        if filename is not None:
            self._inside(filename)
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path):
        try:
            self._inside(file_path)
        except DamagedEntry:
            return  # its row is gone; the file it names is not ours to delete
        super().remove(file_path)

    def _inside(self, filename) -> str:
        """The full path of an entry's file, which must lie inside the cache directory; DamagedEntry if it does not
        (an absolute name, a ``..`` part, or a link that resolves outside)."""
        root = os.path.realpath(self._directory)
        if not isinstance(filename, str) or os.path.isabs(filename) or ".." in PurePath(filename).parts:
            self._refuse(f"a file name outside the cache folder ({str(filename)[:80]!r})")
            raise DamagedEntry(f"refusing the file name {filename!r}: it is not inside {root}")
        full = os.path.realpath(os.path.join(root, filename))
        if os.path.commonpath([full, root]) != root:
            self._refuse(f"a file that resolves outside the cache folder ({filename[:80]!r})")
            raise DamagedEntry(f"refusing {filename!r}: it resolves to {full}, outside {root}")
        return full

    def _refuse(self, what: str) -> None:
        self.refused[what] = None


class ResponseCache:
    """Answers already given, on disk under ``WORKBENCH_HOME/responses/`` (shared by every process).

    A directory that cannot be opened (corrupt database, a file in its place, no permission) is renamed aside
    (``responses.corrupt-<time>``) and a fresh cache started; ``problem`` then says what happened. If even that
    fails the cache is off (``available`` False) and every lookup is a miss: the cache never stops an answer.

    Args:
        directory: where the cache lives (default ``WORKBENCH_HOME/responses``).
        size_limit_mb: the least recently used answers are evicted past this size.
    """

    def __init__(self, directory: str | Path | None = None, size_limit_mb: float = DEFAULT_SIZE_LIMIT_MB):
        self.directory = Path(directory) if directory else responses_dir()
        self.size_limit_mb = float(size_limit_mb)
        self.problem: str | None = None
        self._cache: diskcache.Cache | None = None
        self._stats: diskcache.Cache | None = None
        self._open()

    # -- opening, and setting a broken directory aside

    def _open(self, damage: str | None = None) -> None:
        """Open the caches; if they cannot be opened (or ``damage`` says they are broken), set the directory aside
        and open fresh ones."""
        reason = damage
        if reason is None:
            try:
                self._cache, self._stats = self._open_caches()
                return
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
        self._close_quietly()
        aside = self._set_aside()
        if aside is None:
            self.problem = (f"The response cache in {self.directory} cannot be opened ({reason}) nor moved aside; "
                            "answers are not cached until it is fixed or removed.")
            return
        try:
            self._cache, self._stats = self._open_caches()
            self.problem = (f"The response cache in {self.directory} could not be opened ({reason}); it was moved "
                            f"to {aside} and a new, empty cache started.")
        except Exception as exc:
            self._close_quietly()
            self.problem = (f"The response cache in {self.directory} cannot be opened ({type(exc).__name__}: "
                            f"{exc}); answers are not cached.")

    def _open_caches(self) -> tuple[diskcache.Cache, diskcache.Cache]:
        # A file that is not a database fails here; damage deeper inside fails at a lookup (see _failed).
        main = diskcache.Cache(self.directory, disk=_NoPickleDisk, size_limit=self._limit_bytes(),
                               eviction_policy="least-recently-used", cull_limit=1)
        try:
            main.volume()
            stats = diskcache.Cache(self.directory / "stats", disk=_NoPickleDisk, eviction_policy="none")
        except BaseException:
            main.close()
            raise
        return main, stats

    def _set_aside(self) -> Path | None:
        if not os.path.lexists(self.directory):
            return None
        aside = self.directory.with_name(f"{self.directory.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while os.path.lexists(aside):
            aside = aside.with_name(f"{aside.name.split('~')[0]}~{n}")
            n += 1
        try:
            os.replace(self.directory, aside)
        except OSError:
            return None
        return aside

    def _close_quietly(self) -> None:
        for c in (self._cache, self._stats):
            try:
                if c is not None:
                    c.close()
            except Exception:
                pass
        self._cache = self._stats = None

    def _limit_bytes(self) -> int:
        return int(self.size_limit_mb * 2**20)

    @property
    def available(self) -> bool:
        return self._cache is not None

    def close(self) -> None:
        self._close_quietly()

    def set_size_limit(self, size_limit_mb: float) -> None:
        """Change the size limit; answers past it are evicted at once, least recently used first."""
        self.size_limit_mb = float(size_limit_mb)
        if self._cache is None:
            return
        try:
            self._cache.reset("size_limit", self._limit_bytes())
            self._cache.cull()
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if type(exc) is sqlite3.DatabaseError:  # a damaged database (not a busy one): set it aside, start afresh
            self._close_quietly()
            self._open(f"{type(exc).__name__}: {exc}")
            return
        self.problem = f"The response cache failed ({type(exc).__name__}: {exc}); this answer was not cached."

    # -- lookup

    def lookup(self, recipe_key: str, messages: list[dict], settings: GenerationSettings,
               policy: CachePolicy = CachePolicy(),
               embed: Embedder | None = None) -> CacheHit | None:
        """The stored answer to this conversation, or None (a miss, counted in the stats).

        An exact match needs the same recipe key, every turn and the same settings. With ``policy.semantic``, a
        last user turn worded differently matches when the earlier turns, recipe and settings are the same, the
        cosine similarity reaches ``policy.threshold`` and no guard (negation, numbers) tells them apart. Both kinds
        match only answers stored under the policy's scope (see ``ScopedPolicy``).
        Raises CacheUnavailable only when semantic matching is on and the embedding model is missing.
        """
        if self._cache is None or not policy.applies_to(settings):
            return None
        start = time.perf_counter()
        keyed = scoped_key(recipe_key, scope_of(policy))
        try:
            hit = self._exact(keyed, messages, settings, start)
            if hit is None and policy.semantic:
                hit = self._semantic(keyed, messages, settings, policy.threshold, embed or embedder(), start)
            self._count(hit)
        except CacheUnavailable:
            raise
        except Exception as exc:
            self._failed(exc)
            return None
        return hit

    def _exact(self, recipe_key, messages, settings, start) -> CacheHit | None:
        entry = self._read(exact_key(recipe_key, messages, settings))
        return None if entry is None else CacheHit("exact", entry, time.perf_counter() - start)

    def _read(self, key: str) -> dict | None:
        raw = self._cache.get(key)
        return None if raw is None else json.loads(raw)

    def _semantic(self, recipe_key, messages, settings, threshold, embed, start) -> CacheHit | None:
        question = last_question(messages)
        if question is None:
            return None
        context = context_key(recipe_key, messages, settings)
        asked = self._questions(context)
        if not asked:
            return None
        matrix = self._embeddings(context, asked, embed)  # (N, 384)
        query = embed.encode([question])[0]  # (384,)
        scores = matrix @ query  # (N,) cosine: rows and query are unit length
        for i in np.argsort(-scores):
            if scores[i] < threshold:
                break
            key, candidate = asked[i]
            if same_meaning_guard(question, candidate):
                continue
            entry = self._read(key)
            if entry is not None:  # None: evicted or expired since it was indexed
                return CacheHit("semantic", entry, time.perf_counter() - start, float(scores[i]), candidate)
        return None

    def _questions(self, context: str) -> list[list[str]]:
        raw = self._cache.get("q:" + context)
        return json.loads(raw) if raw else []

    def _matrix(self, context: str, rows: int) -> np.ndarray:
        """The stored embeddings of a context's questions, (rows, 384); NaN rows for those not embedded yet."""
        raw = self._cache.get("e:" + context)
        matrix = np.frombuffer(raw, dtype=np.float32).reshape(-1, 384)[:rows] if raw else np.empty((0, 384), "f4")
        missing = np.full((rows - len(matrix), 384), np.nan, dtype=np.float32)
        return np.vstack([matrix, missing])

    def _embeddings(self, context: str, asked: list[list[str]], embed: Embedder) -> np.ndarray:
        """The questions' embeddings; those not embedded yet (stored while semantic matching was off) are
        embedded now and written back."""
        matrix = self._matrix(context, len(asked))
        missing = np.flatnonzero(np.isnan(matrix[:, 0]))
        if missing.size:
            matrix[missing] = embed.encode([asked[i][1] for i in missing])
            with self._cache.transact():
                if self._questions(context) == asked:  # unchanged meanwhile
                    self._cache.set("e:" + context, matrix.tobytes())
        return matrix

    def _count(self, hit: CacheHit | None) -> None:
        if hit is None:
            self._stats.incr("misses")
        else:
            self._stats.incr(f"hits_{hit.kind}")
            self._stats.incr("saved_ms", int(round(hit.saved_s * 1000)))

    # -- store

    def store(self, recipe_key: str, messages: list[dict], settings: GenerationSettings, result,
              policy: CachePolicy = CachePolicy(),
              pieces: list[str] | None = None, model: dict | None = None, embed: Embedder | None = None) -> bool:
        """Keep a finished answer (EOS or max tokens; never a stopped, failed or empty one). True if stored.

        Args:
            recipe_key: the recipe that answered.
            messages: the conversation it answered (system prompt and every turn).
            settings: its generation settings.
            result: the ``GenerationResult``.
            policy: TTL, whether sampled answers may be kept, and the scope they are kept under.
            pieces: the answer's text, one piece per token, as it streamed (a hit replays them).
            model: the model's stats (``ModelStats.to_dict()``), reported again with a hit.
            embed: an embedder to index the question with now (else it is embedded at its first semantic lookup).
        """
        if self._cache is None or not policy.applies_to(settings):
            return False
        if result.error or result.finish_reason not in ("eos", "length") or not result.token_ids:
            return False
        entry = {
            "text": result.text, "token_ids": list(result.token_ids),
            "pieces": pieces if pieces is not None and "".join(pieces) == result.text else None,
            "prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens, "e2e_s": result.e2e_s,
            "ttft_s": result.ttft_s, "finish_reason": result.finish_reason, "recipe_key": recipe_key,
            "question": last_question(messages), "stored_at": time.time(), "model": model,
        }
        keyed = scoped_key(recipe_key, scope_of(policy))
        key = exact_key(keyed, messages, settings)
        try:
            self._cache.set(key, json.dumps(entry), expire=policy.ttl_s)
            if entry["question"] is not None:
                self._index(key, keyed, messages, settings, embed)
        except Exception as exc:
            self._failed(exc)
            return False
        return True

    def _index(self, key: str, recipe_key: str, messages: list[dict], settings, embed: Embedder | None) -> None:
        context = context_key(recipe_key, messages, settings)
        question = messages[-1]["content"]
        row = embed.encode([question])[0] if embed is not None else np.full(384, np.nan, dtype=np.float32)
        with self._cache.transact():
            asked = self._questions(context)
            matrix = self._matrix(context, len(asked))
            keep = [i for i, item in enumerate(asked) if item[0] != key]
            asked = ([asked[i] for i in keep] + [[key, question]])[-MAX_QUESTIONS_PER_CONTEXT:]
            matrix = np.vstack([matrix[keep], row[None].astype(np.float32)])[-MAX_QUESTIONS_PER_CONTEXT:]
            self._cache.set("q:" + context, json.dumps(asked))
            self._cache.set("e:" + context, matrix.tobytes())

    # -- stats and clearing

    def stats(self) -> dict:
        """entries (answers stored, every scope's), size_bytes, size_limit_bytes, hits (exact, semantic), misses,
        hit_rate, saved_s (model time the hits saved), directory, problem (which includes the refused rows)."""
        out = {"directory": str(self.directory), "available": self.available, "problem": self.problem,
               "size_limit_bytes": self._limit_bytes()}
        if self._cache is None:
            return {**out, "entries": 0, "size_bytes": 0, "hits": {k: 0 for k in HIT_KINDS}, "misses": 0,
                    "lookups": 0, "hit_rate": None, "saved_s": 0.0}
        try:
            self._cache.expire()
            entries = sum(1 for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith("a:"))
            hits = {k: int(self._stats.get(f"hits_{k}", 0)) for k in HIT_KINDS}
            misses = int(self._stats.get("misses", 0))
            saved_s = int(self._stats.get("saved_ms", 0)) / 1000
            size = self._cache.volume()
        except Exception as exc:
            self._failed(exc)
            return {**out, "problem": self.problem, "entries": 0, "size_bytes": 0,
                    "hits": {k: 0 for k in HIT_KINDS}, "misses": 0, "lookups": 0, "hit_rate": None, "saved_s": 0.0}
        lookups = sum(hits.values()) + misses
        out["problem"] = " ".join(p for p in (self.problem, self.refused()) if p) or None
        return {**out, "entries": entries, "size_bytes": size, "hits": hits, "misses": misses, "lookups": lookups,
                "hit_rate": sum(hits.values()) / lookups if lookups else None, "saved_s": saved_s}

    def refused(self) -> str | None:
        """What this process refused to read from the cache directory (rows holding a pickle, or naming a file
        outside it), as one sentence; None when nothing was."""
        found = [what for c in (self._cache, self._stats) if c is not None for what in c.disk.refused]
        if not found:
            return None
        return (f"The response cache in {self.directory} holds entries it refuses to read: "
                f"{'; '.join(dict.fromkeys(found))}. They count as misses and nothing outside the cache folder is "
                "read or deleted; Clear cache removes them.")

    def clear(self) -> int:
        """Remove every stored answer and reset the counters; returns how many answers there were."""
        if self._cache is None:
            return 0
        entries = self.stats()["entries"]
        try:
            self._cache.clear()
            self._stats.clear()
        except Exception as exc:
            self._failed(exc)
        return entries

