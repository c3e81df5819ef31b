"""Turning results into text for people: sizes, ages, tables, errors."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Sequence

import click

from cairn.errors import ConfigError
from cairn.i18n import N_, _, localize
from cairn.sanitize import untrusted


def say(said: object, err: bool = False, label: str = "") -> None:
    """Print ``said`` (a phrase, an error, text) in the user's language, on one line.

    A terminal whose encoding cannot show the translation gets the English
    text instead of mojibake or a crash (with what it still cannot show, a
    name or a path, escaped).
    """
    stream = sys.stderr if err else sys.stdout
    line = _line(_(label) if label else "", localize(said))
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        line.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        line = _line(label, str(said))
        with contextlib.suppress(LookupError):
            line = line.encode(encoding, "backslashreplace").decode(encoding)
    click.echo(line, err=err)


def _line(label: str, text: str) -> str:
    # Messages carry what registries and models said: no control character
    # reaches the terminal (an escape sequence is shown, not obeyed).
    text = untrusted(" ".join(text.split()))
    return f"{label}: {text}" if label else text


def say_error(exc: BaseException) -> None:
    """``Error: <message>`` on stderr, in the user's language."""
    say(exc if str(exc) else type(exc).__name__, err=True, label="Error")


def human_size(size: int) -> str:
    """Decimal units, as Ollama's ``format.HumanBytes``: ``253 MB``, ``4.7 GB``, ``1 GB``.

    Ten units and more are cut to whole ones (253.9 MB is ``253 MB``), fewer
    get one decimal unless they are whole.
    """
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            value = size / scale
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_age(then: float, now: float | None = None) -> str:
    """``2 hours ago``, ``About a minute ago``, ``3 days from now``: Ollama's ``format.HumanTime``.

    Its thresholds: seconds and minutes are cut to whole ones, hours are
    rounded; under 48 hours counts hours, then days up to two weeks, weeks up
    to 60 days, months (of 30 days) up to two years, then years. A time more
    than 20 years ahead is ``Forever``.
    """
    delta = (time.time() if now is None else now) - then
    if _toward_zero(int(delta / 3600), 24 * 365) < -20:
        return _("Forever")
    phrases = _FROM_NOW if delta < 0 else _AGO
    key, count = _duration(abs(delta))
    return _(phrases[key]).format(count=count)


def _toward_zero(a: int, b: int) -> int:
    """Go's integer division, which truncates toward zero (Python's floors)."""
    quotient = abs(a) // b
    return -quotient if a < 0 else quotient


def _duration(seconds: float) -> tuple[str, int]:
    """Ollama's ``humanDuration``: which phrase, and the count it takes."""
    whole = int(seconds)
    if whole < 1:
        return "now", 0
    if whole == 1:
        return "second", 1
    if whole < 60:
        return "seconds", whole
    minutes = int(seconds / 60)
    if minutes == 1:
        return "minute", 1
    if minutes < 60:
        return "minutes", minutes
    hours = math.floor(seconds / 3600 + 0.5)  # Go's math.Round: halves away from zero
    if hours == 1:
        return "hour", 1
    if hours < 48:
        return "hours", hours
    if hours < 24 * 7 * 2:
        return "days", hours // 24
    if hours < 24 * 30 * 2:
        return "weeks", hours // (24 * 7)
    if hours < 24 * 365 * 2:
        return "months", hours // (24 * 30)
    return "years", int(seconds / 3600) // (24 * 365)


_AGO = {
    "now": N_("Less than a second ago"),
    "second": N_("1 second ago"),
    "seconds": N_("{count} seconds ago"),
    "minute": N_("About a minute ago"),
    "minutes": N_("{count} minutes ago"),
    "hour": N_("About an hour ago"),
    "hours": N_("{count} hours ago"),
    "days": N_("{count} days ago"),
    "weeks": N_("{count} weeks ago"),
    "months": N_("{count} months ago"),
    "years": N_("{count} years ago"),
}
_FROM_NOW = {
    "now": N_("Less than a second from now"),
    "second": N_("1 second from now"),
    "seconds": N_("{count} seconds from now"),
    "minute": N_("About a minute from now"),
    "minutes": N_("{count} minutes from now"),
    "hour": N_("About an hour from now"),
    "hours": N_("{count} hours from now"),
    "days": N_("{count} days from now"),
    "weeks": N_("{count} weeks from now"),
    "months": N_("{count} months from now"),
    "years": N_("{count} years from now"),
}


def display_width(text: str) -> int:
    """Terminal columns: East Asian wide and full-width characters (Hangul, CJK) take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal columns (Hangul counts two)."""
    return text + " " * max(0, width - display_width(text))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned by display width, separated by at least four spaces."""
    widths = [display_width(h) for h in headers]
    for row in rows:
        widths = [max(w, display_width(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [pad(cell, w) for cell, w in zip(row, widths, strict=True)]
        lines.append("    ".join(cells).rstrip())
    return "\n".join(lines)


def parse_size(text: str) -> int:
    """``64M``, ``2G``, ``1048576``: bytes (K, M, G are powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    given = text
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        value = int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError("not a size: {given!r} (use bytes, or K, M, G suffixes)", given=given)
    return value


class WordWrapper:
    """Wraps streamed text at word boundaries by display width (Hangul and CJK count two).

    Text arrives in pieces; a word is held until it ends, then goes on the
    current line if it fits, else on a new one. A word wider than the line
    is broken where it must be.
    """

    def __init__(self, columns: int) -> None:
        self.columns = max(10, columns)
        self.column = 0
        self.word = ""

    def feed(self, text: str) -> str:
        out: list[str] = []
        for char in text:
            if char == "\n":
                out.append(self._flush_word() + "\n")
                self.column = 0
            elif char == " ":
                out.append(self._flush_word())
                if self.column < self.columns:
                    out.append(" ")
                    self.column += 1
            else:
                self.word += char
        return "".join(out)

    def finish(self) -> str:
        return self._flush_word()

    def _flush_word(self) -> str:
        word, self.word = self.word, ""
        if not word:
            return ""
        out = []
        width = display_width(word)
        if self.column and self.column + width > self.columns:
            out.append("\n")
            self.column = 0
        for char in word:  # a word wider than a line is cut where it must be
            char_width = display_width(char)
            if self.column + char_width > self.columns:
                out.append("\n")
                self.column = 0
            out.append(char)
            self.column += char_width
        return "".join(out)
