"""How well semantic matching tells paraphrases from near misses, on question pairs written for the project.

``assets/question_pairs.jsonl`` holds pairs of questions, each ``{"a", "b", "label", "kind"}``: ``label`` is
"paraphrase" (the same question: the cache should serve one's answer for the other) or "near_miss" (a similar
question with another answer: it must not), ``kind`` says how a near miss differs (antonym, comparative, swapped
roles, changed entity, unit, number, negation, ...). Two held-out sets show how the guard does on pairs it was not
developed on: ``question_pairs_heldout.jsonl``, written when the guard was first done (its one false hit, "Korea" /
"North Korea", led to the added-modifier check, so it is no longer unseen), and ``question_pairs_heldout2.jsonl``,
written after that last change and never used to change the guard.

A pair is decided exactly as the cache decides a semantic lookup (``ResponseCache._semantic``): a hit when the
embeddings' cosine similarity reaches the threshold and ``same_meaning_guard`` finds no difference. Each pair is
looked up both ways (either question stored, the other asked): a paraphrase counts as a hit only when both ways
hit, a near miss as a false hit when either way does.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .embedder import Embedder, embedder
from .guard import same_meaning_guard
from .keys import DEFAULT_THRESHOLD

ASSETS = Path(__file__).resolve().parents[2] / "assets"
PAIRS = ASSETS / "question_pairs.jsonl"
HELDOUT = tuple(ASSETS / f"question_pairs_heldout{n}.jsonl" for n in ("", "2", "3"))
LABELS = ("paraphrase", "near_miss")


@dataclass(frozen=True)
class QuestionPair:
    a: str
    b: str
    label: str  # "paraphrase" | "near_miss"
    kind: str  # "paraphrase", or how a near miss differs


@dataclass(frozen=True)
class Scored:
    """One pair with what the cache's decision needs: the similarity, and the guard's reason each way."""

    pair: QuestionPair
    similarity: float
    reasons: tuple[str | None, str | None]  # guard(b asked, a stored), guard(a asked, b stored)

    def hits(self, threshold: float) -> bool:
        """Whether a lookup hits both ways at this threshold."""
        return self.similarity >= threshold and self.reasons == (None, None)

    def hits_either_way(self, threshold: float) -> bool:
        return self.similarity >= threshold and None in self.reasons


def load_pairs(path: Path = PAIRS) -> list[QuestionPair]:
    """The pairs of a JSONL file; a malformed line raises ValueError naming the file and line."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pair = QuestionPair(str(row["a"]), str(row["b"]), row["label"], str(row["kind"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a question pair ({exc})") from None
            if pair.label not in LABELS:
                raise ValueError(f"{path}:{n}: label must be one of {', '.join(LABELS)}, got {pair.label!r}")
            pairs.append(pair)
    return pairs


def score(pairs: list[QuestionPair], embed: Embedder) -> list[Scored]:
    """Similarity and guard reasons of every pair (the part that does not depend on the threshold)."""
    texts = sorted({q for p in pairs for q in (p.a, p.b)})
    vectors = dict(zip(texts, embed.encode(texts)))
    return [Scored(p, float(np.dot(vectors[p.a], vectors[p.b])),
                   (same_meaning_guard(p.b, p.a), same_meaning_guard(p.a, p.b))) for p in pairs]


def measure(threshold: float = DEFAULT_THRESHOLD, path: Path = PAIRS, embed: Embedder | None = None) -> dict:
    """Hit rate on the paraphrases and false-hit rate on the near misses of a pair file, at one threshold.

    Returns hit_rate, false_hit_rate, hits, false_hits, n_paraphrases, n_near_misses, misses_by_kind (for each
    kind of near miss: pairs and false hits), paraphrase_misses (why paraphrases missed: below the threshold, or
    the guard's reason) and false_hit_pairs (the near misses served, as "a | b").
    """
    scored = _scored(Path(path), embed)
    paraphrases = [s for s in scored if s.pair.label == "paraphrase"]
    near = [s for s in scored if s.pair.label == "near_miss"]
    hits = sum(s.hits(threshold) for s in paraphrases)
    false = [s for s in near if s.hits_either_way(threshold)]
    by_kind: dict[str, dict] = {}
    for s in near:
        entry = by_kind.setdefault(s.pair.kind, {"pairs": 0, "false_hits": 0})
        entry["pairs"] += 1
        entry["false_hits"] += s in false
    why = Counter(_miss_reason(s, threshold) for s in paraphrases if not s.hits(threshold))
    return {
        "threshold": threshold,
        "hit_rate": hits / len(paraphrases) if paraphrases else None,
        "false_hit_rate": len(false) / len(near) if near else None,
        "hits": hits, "false_hits": len(false),
        "n_paraphrases": len(paraphrases), "n_near_misses": len(near),
        "misses_by_kind": by_kind,
        "paraphrase_misses": dict(why.most_common()),
        "false_hit_pairs": [f"{s.pair.a} | {s.pair.b}" for s in false],
    }


def _miss_reason(s: Scored, threshold: float) -> str:
    if s.similarity < threshold:
        return "below the threshold"
    reason = next(r for r in s.reasons if r)
    return "guard: " + reason.split(" (")[0]


_scores: dict[Path, list[Scored]] = {}
_scores_lock = threading.Lock()


def _scored(path: Path, embed: Embedder | None) -> list[Scored]:
    """The scored pairs of a file, computed once per process (about 250 embeddings, a few seconds)."""
    with _scores_lock:
        if path not in _scores:
            _scores[path] = score(load_pairs(path), embed or embedder())
        return _scores[path]


@lru_cache(maxsize=64)
def panel_summary(threshold: float = DEFAULT_THRESHOLD, path: Path = PAIRS) -> str:
    """One line for the cache panel: how the project's question pairs fare at this threshold.

    The first call embeds the pairs (a few seconds); later calls, at any threshold, take microseconds.
    When the embedding model or the pair file is missing, the line says so instead.
    """
    try:
        m = measure(threshold, path)
    except Exception as exc:  # the panel shows the line whatever happened
        return f"Not measured on the project's question pairs ({type(exc).__name__}: {exc})."
    false = "no false hits" if m["false_hits"] == 0 else f"{m['false_hits']} false hits"
    return (f"On the project's {m['n_paraphrases'] + m['n_near_misses']} question pairs at similarity "
            f"{threshold:g}: {m['hit_rate']:.0%} of the {m['n_paraphrases']} paraphrases hit, {false} on the "
            f"{m['n_near_misses']} near misses.")
