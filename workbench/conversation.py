"""Conversations: role/content turns, and the token ids a tokenizer's chat template makes of them."""

from __future__ import annotations

from collections.abc import Callable


class BadMessage(ValueError):
    """A conversation a model cannot be asked: a turn that is not text, or text that is not valid Unicode."""


def as_messages(messages: list[dict] | str) -> list[dict]:
    """A conversation as a list of role/content dicts; a string is one user message. Raises BadMessage for a turn
    whose content is not a string or holds a lone surrogate (undecodable bytes), which no tokenizer encodes."""
    messages = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    for n, message in enumerate(messages, 1):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise BadMessage(f"message {n} has no text (content is {type(content).__name__})")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadMessage(f"message {n} is not valid UTF-8 text (character {exc.start + 1} is an undecodable "
                             "byte)") from None
    return messages


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The role/content list a model sees: an optional system message, then the turns (extra keys dropped)."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt and system_prompt.strip():
        turns.insert(0, {"role": "system", "content": system_prompt.strip()})
    return turns


def trim_to_fit(messages: list[dict], count: Callable[[list[dict]], int], budget: int) -> tuple[list[dict], int]:
    """The latest turns of a conversation that fit ``budget`` tokens, and how many earlier turns were left out.

    A leading system message is kept; the oldest turns go first, and the kept part starts with a user turn.
    The last message is always kept, so the result may still be over budget when it alone is too long.

    Args:
        messages: role/content turns, optionally a system message first.
        count: the prompt tokens of a list of turns.
        budget: the most prompt tokens allowed.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    while len(turns) > 1 and count(system + turns) > budget:
        turns, dropped = turns[1:], dropped + 1
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns, dropped = turns[1:], dropped + 1
    return system + turns, dropped


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation, ending where the assistant's answer starts.

    Uses the tokenizer's chat template when it has one; base models without one get a plain transcript.
    """
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
        return enc["input_ids"][0].tolist()
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return tokenizer("\n".join(lines) + "\nAssistant:")["input_ids"]
