"""Output kept for status messages: bounded, and the end (which says what failed) kept."""

from __future__ import annotations

from services.agent.runtimes.base import MAX_MESSAGE, truncate
from services.agent.runtimes.processes import OutputTail


def test_truncate_keeps_short_text_and_the_end_of_long_text() -> None:
    assert truncate("short") == "short"
    exact = "x" * MAX_MESSAGE
    assert truncate(exact) == exact
    long = "a" * 10_000 + "the error"
    cut = truncate(long)
    assert len(cut) == MAX_MESSAGE
    assert cut.startswith("…") and cut.endswith("the error")
    assert truncate("abcdef", 4) == "…def"


def test_output_tail_keeps_the_last_characters_of_a_long_stream() -> None:
    tail = OutputTail(limit=10)
    for i in range(10_000):
        tail.add(f"line {i}\n".encode())
    assert tail.text() == "…ine 9999\n"
    assert sum(len(chunk) for chunk in tail._chunks) < 100  # noqa: SLF001 (bounded memory)


def test_output_tail_survives_split_utf8() -> None:
    tail = OutputTail(limit=100)
    data = "héllo ✓".encode()
    tail.add(data[:2])
    tail.add(data[2:])
    assert tail.text() == "héllo ✓"
