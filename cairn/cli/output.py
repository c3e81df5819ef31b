"""Turning results into text for people: sizes, ages, tables, errors."""

from __future__ import annotations

import contextlib
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
    """Decimal units, as ``ollama list`` prints them: ``253 MB``, ``4.7 GB``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_age(then: float, now: float | None = None) -> str:
    """``2 hours ago``, ``About a minute ago``, in the manner of ``ollama list``."""
    seconds = max(0.0, (time.time() if now is None else now) - then)
    if seconds < 1:
        return _("Less than a second ago")
    for limit, unit, one, many in _AGES:
        if seconds < limit:
            count = int(seconds // unit)
            return _(one) if count == 1 else _(many).format(count=count)
    raise AssertionError("unreachable")


_AGES = (  # (below, unit, one of them, several): the last row is unbounded
    (60, 1, N_("1 second ago"), N_("{count} seconds ago")),
    (3600, 60, N_("About a minute ago"), N_("{count} minutes ago")),
    (86400, 3600, N_("About an hour ago"), N_("{count} hours ago")),
    (86400 * 7, 86400, N_("1 day ago"), N_("{count} days ago")),
    (86400 * 30, 86400 * 7, N_("1 week ago"), N_("{count} weeks ago")),
    (86400 * 365, 86400 * 30, N_("1 month ago"), N_("{count} months ago")),
    (float("inf"), 86400 * 365, N_("1 year ago"), N_("{count} years ago")),
)


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
