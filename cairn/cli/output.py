"""Turning results into text for people: sizes, ages, tables."""

from __future__ import annotations

import time
from collections.abc import Sequence

from cairn.errors import ConfigError


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
        return "Less than a second ago"
    steps = (
        (60, 1, "second"),
        (3600, 60, "minute"),
        (86400, 3600, "hour"),
        (86400 * 7, 86400, "day"),
        (86400 * 30, 86400 * 7, "week"),
        (86400 * 365, 86400 * 30, "month"),
    )
    for limit, unit, name in steps:
        if seconds < limit:
            count = int(seconds // unit)
            if count == 1:
                return f"About a {name} ago" if name in ("minute", "hour") else f"1 {name} ago"
            return f"{count} {name}s ago"
    years = int(seconds // (86400 * 365))
    return "1 year ago" if years == 1 else f"{years} years ago"


def display_width(text: str) -> int:
    """Terminal columns: East Asian wide and full-width characters (Hangul, CJK) take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned by display width, separated by at least four spaces."""
    widths = [display_width(h) for h in headers]
    for row in rows:
        widths = [max(w, display_width(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [
            cell + " " * (w - display_width(cell)) for cell, w in zip(row, widths, strict=True)
        ]
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
        raise ConfigError(f"not a size: {given!r} (use bytes, or K, M, G suffixes)")
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
