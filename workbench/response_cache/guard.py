"""The guard against near-duplicates that mean something else: a negation or a number changes the answer."""

from __future__ import annotations

import re
from collections import Counter

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

