"""The guard against near-duplicates that mean something else.

Sentence embeddings score "Is coffee good for you?" and "Is coffee bad for you?" about as close as two wordings
of one question, and likewise a changed number, unit, entity or word order. The guard aligns the content words of
the two questions, each with the same word (any inflection) or a WordNet synonym in the other, and refuses the
pair when anything is left that changes the answer:

- a negation, a number or ordinal ("3", "three", "third", "II"), or "less"/"fewer" on one side only;
- two words of opposite meaning (WordNet antonyms, direct or through the adjective's head sense; ``un-``/``dis-``
  forms): good / bad, bigger / smaller, buy / sell, up / down;
- a content word replaced by one that is not a synonym: Austria / Australia, ounce / pound, cat / dog;
- one word in two degrees: big / biggest;
- another tense, or another kind of question (who / when / where / why / how);
- two nouns that trade places outside a coordination: Celsius to Fahrenheit / Fahrenheit to Celsius.

A word added on one side only ("Where is the Eiffel Tower located?") is allowed. Without the WordNet data the
guard refuses every pair that is not the same words: the cache then serves exact matches only.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import combinations, pairwise

from .wordnet import WordNet, WordNetMissing, wordnet

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[.,]\d+)*(?:['’][a-z]+)?")
_NEGATIONS = {"not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "without", "cannot"}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_ORDINALS = {w: str(i) for i, w in enumerate(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()) if i}
_ORDINAL_DIGITS = re.compile(r"(\d+)(?:st|nd|rd|th)")
_ROMAN = {r: str(i) for i, r in enumerate("i ii iii iv v vi vii viii ix x xi xii".split(), 1)}
_LESS = {"less", "least", "fewer", "fewest"}  # the comparison turned downwards ("less healthy")
_MORE = {"more", "most"}  # degree words: "more expensive" is a comparative
_PAST = {"was", "were", "did", "had"}
_PRESENT = {"is", "are", "am", "does", "do", "has", "have"}
_ASKS = {"who": "person", "whom": "person", "whose": "person", "when": "time", "where": "place", "why": "reason"}
_QUANTITY = {"much", "many", "tall", "long", "far", "big", "old", "high", "large", "often", "fast", "heavy"}
_COORDINATORS = {"and", "or", "vs", "versus", "nor"}
_QUANTIFIERS = {"all": "every", "every": "every", "each": "every", "always": "every",
                "some": "some", "any": "some", "several": "some", "few": "some", "sometimes": "some"}
# The prepositions of direction: "to Paris" is not "from Paris" (others, such as "bad for" / "harmful to", vary).
_ROLES = {"to": "to", "into": "to", "onto": "to", "toward": "to", "towards": "to", "from": "from"}
# Words that carry no content of their own: articles, pronouns, prepositions, auxiliaries and modals.
_FUNCTION = set("""
a an the this that these those some any each every all both either such own other another
i me my mine myself you your yours yourself we us our ours they them their theirs he him his she her hers it its
there here someone somebody something anything anyone everything everyone
is are am was were be been being do does did done have has had having 's
can could should would will shall may might must
to of in on at for from by with into onto about as than so if then also just really very please
and or but vs versus nor what which how who whom whose when where why much many
""".split())
_COUNTING = {"many", "much", "few", "several"}
_DETERMINERS = set("a an the my your his her its our their this that these those some any each every".split())
# WordNet pointers to a sense that says the same: similar to, derived form, attribute, adverb's adjective.
_RELATED = {"&", "+", "=", "\\"}


@dataclass
class _Word:
    """A content word of a question: where it stands, its base forms, its senses, what kind of word it is."""

    text: str
    at: int  # position among the question's tokens
    lemmas: frozenset[str]
    senses: frozenset[tuple[str, int]]
    nominal: bool  # a noun (or a name) here: the words whose order carries roles
    modifier: bool  # possessive, or a noun right before another: it modifies what follows ("Python list")
    degree: str  # "", "comparative" or "superlative"


@dataclass
class _Question:
    tokens: list[str]  # lowercase
    words: list[_Word]  # content words only


def negations(text: str) -> Counter:
    """The negation words of a text, normalised ("isn't", "cannot", "not" all count as "not")."""
    found: Counter = Counter()
    for word in _tokens(text):
        if word.endswith("n't") or word in ("cannot", "not"):
            found["not"] += 1
        elif word in _NEGATIONS:
            found[word] += 1
    return found


def numbers(text: str) -> list[str]:
    """The numbers of a text, sorted: digits, small numbers and ordinals written as words ("three" = "3" =
    "third"), and Roman numerals after a name ("World War II")."""
    return sorted(_numbers_at(_TOKEN.findall(text.replace("’", "'"))).values())


def _numbers_at(raw: list[str]) -> dict[int, str]:
    """The numbers among a text's tokens, by position (see ``numbers``)."""
    found = {}
    for i, token in enumerate(raw):
        word = token.lower()
        ordinal = _ORDINAL_DIGITS.fullmatch(word)
        if _NUMBER.fullmatch(word):
            found[i] = word
        elif ordinal:
            found[i] = ordinal.group(1)
        elif word in _NUMBER_WORDS or word in _ORDINALS:
            found[i] = _NUMBER_WORDS.get(word) or _ORDINALS[word]
        elif token.isupper() and word in _ROMAN and i > 1 and raw[i - 1][:1].isupper():
            found[i] = _ROMAN[word]
    return found


def same_meaning_guard(question: str, candidate: str) -> str | None:
    """Why two similar questions must not share an answer, or None when nothing tells them apart.

    The reason names the kind of difference and the words: "opposite words (good / bad)".
    """
    for check in (_negation, _numbers, _less, _quantifiers, _tense, _asks):
        reason = check(question, candidate)
        if reason:
            return reason
    if _tokens(question) == _tokens(candidate):
        return None
    try:
        lexicon = wordnet()
    except WordNetMissing:
        return "WordNet data missing: only the same words match"
    a, b = _parse(question, lexicon), _parse(candidate, lexicon)
    return _opposites(a, b, lexicon) or _aligned_differences(a, b, lexicon)


# -- checks on the words alone

def _tokens(text: str) -> list[str]:
    return [t.lower().replace("’", "'") for t in _TOKEN.findall(text)]


def _negation(a: str, b: str) -> str | None:
    return "different negation" if negations(a) != negations(b) else None


def _numbers(a: str, b: str) -> str | None:
    return "different numbers" if numbers(a) != numbers(b) else None


def _less(a: str, b: str) -> str | None:
    def count(text):
        return sum(t in _LESS for t in _tokens(text))
    return "different direction of comparison (less / more)" if count(a) != count(b) else None


def _quantifiers(a: str, b: str) -> str | None:
    """"all" against "some" ("Do all birds fly?" / "Do some birds fly?"); one side without any says nothing."""
    qa, qb = ({_QUANTIFIERS[t] for t in _tokens(text) if t in _QUANTIFIERS} for text in (a, b))
    return "different quantifier" if qa and qb and qa != qb else None


def _tense(a: str, b: str) -> str | None:
    """Present against past in the auxiliaries ("Who is ..." / "Who was ..."); a main verb alone says nothing."""
    def tenses(text):
        words = set(_tokens(text))
        return {"past"} if words & _PAST and not words & _PRESENT else {"present"} if words & _PRESENT and not (
            words & _PAST) else set()
    ta, tb = tenses(a), tenses(b)
    return "different tense" if ta and tb and ta != tb else None


def _asks(a: str, b: str) -> str | None:
    """A question for a person, time, place or reason against one for another of these, or for a manner ("How
    ..."); "what" and "which" can ask for anything."""
    def kinds(text):
        tokens = _tokens(text)
        found = {_ASKS[t] for t in tokens if t in _ASKS}
        found |= {"manner" for i, t in enumerate(tokens) if t == "how" and (
            i + 1 == len(tokens) or tokens[i + 1] not in _QUANTITY)}
        return found
    ka, kb = kinds(a), kinds(b)
    if ka and kb and ka.isdisjoint(kb) and (ka | kb) - {"manner"}:
        return f"asks for another thing ({'/'.join(sorted(ka))} / {'/'.join(sorted(kb))})"
    return None


# -- the content words, with WordNet

def _parse(text: str, lexicon: WordNet) -> _Question:
    raw = [t.replace("’", "'") for t in _TOKEN.findall(text)]
    tokens = [t.lower() for t in raw]
    skip = _numbers_at(raw)  # compared on their own
    words = []
    for i, (token, word) in enumerate(zip(raw, tokens)):
        if i in skip or _is_function(word):
            continue
        word, possessive = word.split("'")[0], word.endswith("'s")
        degree = "comparative" if i and tokens[i - 1] in ("more", "less") else \
            "superlative" if i and tokens[i - 1] in ("most", "least") else _degree(word, lexicon)
        lemmas = {(pos, lemma) for pos in "nvar" for lemma in lexicon.lemmas(word, pos)}
        senses = frozenset(s for pos, lemma in lemmas for s in lexicon.senses(lemma, pos))
        # After an article, a number or "many", a word that can be a noun is one ("50 pounds", "a human").
        introduced = i > 0 and (i - 1 in skip or tokens[i - 1] in _DETERMINERS | _COUNTING)
        after_determiner = introduced and any(pos == "n" for pos, _ in lemmas)
        nominal = (i > 0 and token[:1].isupper()) or possessive or after_determiner or _is_noun(lemmas, lexicon)
        words.append(_Word(word, i, frozenset(lemma for _, lemma in lemmas) | {word}, senses, nominal, possessive,
                           degree))
    for word, after in pairwise(words):  # a noun right before another modifies it ("Python list")
        word.modifier |= word.nominal and after.nominal and after.at == word.at + 1
    return _Question(tokens, words)


def _is_function(token: str) -> bool:
    return token in _FUNCTION or token in _NEGATIONS or token in _LESS or token in _MORE or token.endswith("n't")


def _degree(word: str, lexicon: WordNet) -> str:
    """Whether an adjective or adverb is inflected for degree ("bigger", "best"); a word that is a noun or verb
    of its own ("number", "lower") is not read as one."""
    for ending, degree in (("er", "comparative"), ("est", "superlative")):
        if not word.endswith(ending):
            continue
        if lexicon.irregular(word, "a") or lexicon.irregular(word, "r"):
            return degree
        bases = {b for pos in "ar" for b in lexicon.lemmas(word, pos)} - {word}
        if bases and not any(lexicon.tagged_count(word, pos) for pos in "nv"):
            return degree
    return ""


def _is_noun(lemmas: set[tuple[str, str]], lexicon: WordNet) -> bool:
    """Whether a word is most often a noun, by WordNet's tagged sense counts (unknown words count as names)."""
    if not lemmas:
        return True
    counts = Counter()
    for pos, lemma in lemmas:
        counts[pos] = max(counts[pos], lexicon.tagged_count(lemma, pos))
    return "n" in counts and counts["n"] >= max(counts.values())


def _opposite(x: _Word, y: _Word, lexicon: WordNet) -> bool:
    """Whether two words have opposite meanings in some sense: WordNet antonyms, or a negative prefix."""
    for first, second in ((x, y), (y, x)):
        for lemma in first.lemmas:
            for prefix in ("un", "in", "im", "il", "ir", "dis", "non"):
                if prefix + lemma in second.lemmas and len(lemma) > 2:
                    return True
        for sense in first.senses:
            words = lexicon.synset(sense).words
            for lemma in first.lemmas & set(words):
                if lexicon.antonyms(sense, lemma) & second.senses:
                    return True
    return False


def _opposites(a: _Question, b: _Question, lexicon: WordNet) -> str | None:
    """The first pair of words of opposite meaning, one in each question, whose base form the other lacks."""
    in_a = {lemma for x in a.words for lemma in x.lemmas}
    in_b = {lemma for y in b.words for lemma in y.lemmas}
    for x in (x for x in a.words if not x.lemmas & in_b):
        for y in (y for y in b.words if not y.lemmas & in_a):
            if _opposite(x, y, lexicon):
                return f"opposite words ({x.text} / {y.text})"
    return None


def _synonyms(x: _Word, y: _Word, lexicon: WordNet) -> bool:
    """Whether two words share a sense, or one's sense points to the other's as similar (an adjective's head
    sense: healthy / good), as its derived form (invent / inventor) or as the attribute it measures (tall /
    height). Broader relations (two kinds of one thing: ounce / pound) are differences."""
    if x.senses & y.senses:
        return True
    def related(word):
        return {t for s in word.senses for t in lexicon.synset(s).targets_of(_RELATED)}
    return bool(related(x) & y.senses or related(y) & x.senses)


def _align(a: _Question, b: _Question, lexicon: WordNet) -> list[tuple[_Word, _Word]]:
    """Pairs of matching content words: the same base form first, then synonyms; each word used once."""
    pairs, free = [], list(b.words)
    for same in (lambda x, y: bool(x.lemmas & y.lemmas), lambda x, y: _synonyms(x, y, lexicon)):
        for x in a.words:
            if any(x is p for p, _ in pairs):
                continue
            y = next((y for y in free if same(x, y)), None)
            if y is not None:
                pairs.append((x, y))
                free.remove(y)
    return pairs


def _aligned_differences(a: _Question, b: _Question, lexicon: WordNet) -> str | None:
    pairs = _align(a, b, lexicon)
    left = [x.text for x in a.words if not any(x is p for p, _ in pairs)]
    right = [y.text for y in b.words if not any(y is q for _, q in pairs)]
    if left and right:
        return f"different words ({' '.join(left)} / {' '.join(right)})"
    added = _added_modifier(a, pairs, 0) or _added_modifier(b, pairs, 1)
    if added:
        return f"added modifier ({added})"
    for x, y in pairs:
        if x.degree != y.degree:
            return f"different degree ({x.text} / {y.text})"
        role_x, role_y = _role(a, x), _role(b, y)
        if role_x and role_y and role_x != role_y:
            return f"different role ({role_x} {x.text} / {role_y} {y.text})"
    return _swapped(a, b, pairs)


def _added_modifier(q: _Question, pairs: list[tuple[_Word, _Word]], side: int) -> str | None:
    """A word of one question only, right before a noun both share, that narrows it: "sticky rice" is not
    any "rice", "North Korea" not "Korea". Verbs and adverbs there ("cook rice") do not count."""
    aligned = {id(pair[side]) for pair in pairs}
    for word, after in pairwise(q.words):
        if id(word) not in aligned and id(after) in aligned and after.at == word.at + 1 and after.nominal and (
                word.nominal or _is_adjective(word)):
            return f"{word.text} {after.text}"
    return None


def _is_adjective(word: _Word) -> bool:
    return any(sense[0] == "a" for sense in word.senses) and not any(sense[0] == "v" for sense in word.senses)


def _role(q: _Question, word: _Word) -> str | None:
    """The role preposition before a word, across articles ("to the Moon": to), or None."""
    i = word.at - 1
    while i >= 0 and q.tokens[i] in _DETERMINERS:
        i -= 1
    return _ROLES.get(q.tokens[i]) if i >= 0 else None


def _swapped(a: _Question, b: _Question, pairs: list[tuple[_Word, _Word]]) -> str | None:
    """Two nouns in the opposite order ("Celsius to Fahrenheit"), unless they are coordinated ("the Sun or the
    Moon") or one became the other's modifier ("a list in Python" / "a Python list")."""
    nouns = sorted(((x, y) for x, y in pairs if x.nominal and y.nominal), key=lambda p: p[0].at)
    for (x1, y1), (x2, y2) in combinations(nouns, 2):
        if y1.at < y2.at:
            continue
        if _coordinated(a.tokens, x1.at, x2.at) or _coordinated(b.tokens, y2.at, y1.at):
            continue
        if (x1.modifier != y1.modifier) != (x2.modifier != y2.modifier):  # one of them became a modifier
            continue
        return f"swapped roles ({x1.text} ... {x2.text} / {y2.text} ... {y1.text})"
    return None


def _coordinated(tokens: list[str], i: int, j: int) -> bool:
    """Whether the words at i < j are joined by "and"/"or" with nothing but articles between."""
    between = tokens[i + 1:j]
    return bool(between) and between[0] in _COORDINATORS | {","} and all(
        t in _COORDINATORS | {"the", "a", "an"} for t in between)
