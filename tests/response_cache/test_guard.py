"""The guard: similar questions that differ in a negation or a number never share an answer."""

import pytest

from workbench.response_cache.guard import same_meaning_guard


@pytest.mark.parametrize("a, b, why", [
    ("Is coffee good for you?", "Is coffee not good for you?", "different negation"),
    ("Is it safe?", "Isn't it safe?", "different negation"),
    ("Can I go?", "I cannot go?", "different negation"),
    ("Should I never do it?", "Should I always do it?", "different negation"),
    ("What is 2 + 2?", "What is 2 + 3?", "different numbers"),
    ("Give me three tips.", "Give me 4 tips.", "different numbers"),
    ("Give me three tips.", "Give me 3 tips.", None),
    ("Is coffee good for you?", "Is coffee good for me?", None),
    ("Is it not safe?", "Is it really not safe?", None),
    ("Isn't it safe?", "Is it not safe?", None),  # the same negation, written two ways
])
def test_same_meaning_guard(a, b, why):
    assert same_meaning_guard(a, b) == why
