"""Numbers as people read them, and conversations as a model sees them."""

from workbench.conversation import as_messages, encode_chat, with_system_prompt
from workbench.formats import duration, figure, human_bytes, human_count, sentence


def test_counts_bytes_durations_and_figures():
    assert human_count(134_515_008) == "134.5 M" and human_count(999) == "999"
    assert human_bytes(538_060_032) == "538.1 MB" and human_bytes(512) == "512 B"
    assert duration(45) == "45 s" and duration(185) == "3 min 05 s" and duration(3720) == "1 h 02 min"
    assert figure(None) == "n/a" and figure(12.345, unit="ms") == "12.3 ms" and figure(2.5, 0) == "2"
    assert sentence("built for memory") == "Built for memory."


def test_conversations():
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    turns = [{"role": "user", "content": "hi", "metrics": {}}]
    assert with_system_prompt(turns, "  Be brief. ") == [{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": "hi"}]
    assert with_system_prompt(turns, "  ") == [{"role": "user", "content": "hi"}]


def test_a_tokenizer_without_a_chat_template_gets_a_plain_transcript():
    class Plain:
        chat_template = None

        def __call__(self, text):
            return {"input_ids": [len(word) for word in text.split()], "text": text}

    ids = encode_chat(Plain(), [{"role": "user", "content": "Hello there"}])
    assert ids == [len(w) for w in "User: Hello there\nAssistant:".split()]
