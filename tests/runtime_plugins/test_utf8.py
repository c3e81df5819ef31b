"""Streaming never breaks a character: every split point in Hangul, emoji and CJK text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cairn.runtime_plugins.utf8 import TextStream

SAMPLES = ["하늘은 왜 파란가요?", "🦙🦙 가나다 漢字 ok", "é→ü…", "👩‍👩‍👧 family", "한"]


def run(pieces: list[bytes], stops: list[str] | None = None) -> tuple[list[str], str]:
    stream = TextStream(stops or [])
    out = [stream.feed(piece) for piece in pieces]
    out.append(stream.finish())
    return out, "".join(out)


def test_every_split_point() -> None:
    for text in SAMPLES:
        data = text.encode()
        for cut in range(len(data) + 1):
            chunks, joined = run([data[:cut], data[cut:]])
            assert joined == text
            assert all("\ufffd" not in chunk for chunk in chunks)


def test_byte_by_byte() -> None:
    for text in SAMPLES:
        _, joined = run([bytes([b]) for b in text.encode()])
        assert joined == text and "\ufffd" not in joined


@given(st.text(min_size=1, max_size=40), st.lists(st.integers(0, 200), max_size=12))
def test_any_text_any_splits(text: str, cuts: list[int]) -> None:
    data = text.encode()
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    chunks, joined = run(pieces)
    assert joined == text
    assert all("\ufffd" not in chunk for chunk in chunks) or "\ufffd" in text


def test_a_character_that_never_completes_is_dropped_not_garbled() -> None:
    stream = TextStream()
    assert stream.feed("가한".encode()[:5]) == "가"
    assert stream.pending
    assert stream.finish() == ""


def test_stop_sequences() -> None:
    _, joined = run([b"Hello <end", b"_of_turn> more"], ["<end_of_turn>"])
    assert joined == "Hello "
    # a stop inside a multibyte character matches only once the character is whole
    data = "가나다라".encode()
    _, joined = run([data[:4], data[4:8], data[8:]], ["다"])
    assert joined == "가나"
    # text that only looks like the start of a stop is released at the end
    _, joined = run([b"abc <end"], ["<end_of_turn>"])
    assert joined == "abc <end"


def test_held_text_is_not_shown_early() -> None:
    stream = TextStream(["STOP"])
    assert stream.feed(b"go ST") == "go "
    assert stream.feed(b"ILL") == "STILL"
    assert stream.finish() == ""
