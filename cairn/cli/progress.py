"""Progress for transfers: tqdm bars on a terminal, NDJSON with --json, nothing with --quiet."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any

import click

from cairn.cli.output import human_size
from cairn.i18n import _, localize
from cairn.registry.events import Event
from cairn.sanitize import untrusted

BAR_FORMAT = "{desc} {percentage:3.0f}% ▕{bar}▏ {sizes}{speed}"
"""Ollama's bar: ``pulling 735af2139dc6:  45% ▕████      ▏ 114 MB/253 MB  12 MB/s  11s``."""


class Reporter:
    """Turns transfer events into bars (one per blob, one overall), JSON lines or status lines."""

    def __init__(self, as_json: bool = False, quiet: bool = False, to_stderr: bool = False) -> None:
        """``to_stderr``: NDJSON too goes to stderr (stdout carries data, a bundle)."""
        self.as_json = as_json
        self.to_stderr = to_stderr
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._bars: dict[str, Any] = {}
        self._overall: Any = None
        self._last = ""

    def __call__(self, event: Event) -> None:
        if self.as_json:
            click.echo(json.dumps(event.to_json()), err=self.to_stderr)
        elif self.quiet:
            return
        elif event.digest and event.total is not None and self.tty:
            self._bar(event)
        else:
            line = untrusted(localize(event.status))  # NDJSON keeps the English
            if event.digest and event.total is not None:
                line = f"{line} {human_size(event.total)}"
            if line != self._last and (not event.digest or event.completed == event.total):
                if self._bars:
                    from tqdm import tqdm

                    tqdm.write(line, file=sys.stderr)  # above the bars, not through them
                else:
                    click.echo(line, err=True)
                self._last = line

    def _bar(self, event: Event) -> None:
        assert event.digest is not None and event.total is not None
        if self._overall is None:
            self._overall = _new_bar(_("total"), 0, 0)
        bar = self._bars.get(event.digest)
        if bar is None:
            desc = untrusted(localize(event.status))
            bar = _new_bar(desc, event.total, len(self._bars) + 1)
            self._bars[event.digest] = bar
            self._overall.total += event.total
            self._overall.refresh()
        step = (event.completed or 0) - bar.n
        bar.update(step)
        self._overall.update(step)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        if self._overall is not None:
            self._overall.close()


def _new_bar(desc: str, total: int, position: int) -> Any:
    columns, lines = _terminal_size()
    return _bar_class()(
        total=total,
        desc=desc,
        file=sys.stderr,
        position=position,
        bar_format=BAR_FORMAT,
        ncols=columns,
        nrows=lines,
    )


@functools.cache
def _bar_class() -> type:
    """tqdm, writing sizes as Ollama does (``253 MB``, decimal units), not tqdm's ``241MB``,
    and sized afresh at each redraw by :func:`_terminal_size`.

    (tqdm's own resizing takes a terminal that says it has 0 columns and 0
    lines at its word: every bar hidden, a blank line left for each.)
    """
    from tqdm import tqdm

    class Bar(tqdm):  # type: ignore[misc]
        @property
        def format_dict(self) -> dict[str, Any]:
            self.ncols, self.nrows = _terminal_size()
            shown: dict[str, Any] = super().format_dict
            done, total = int(shown["n"]), int(shown["total"] or 0)
            rate = shown.get("rate")
            if total and done >= total:
                shown.update(sizes=human_size(total), speed="")
            else:
                shown["sizes"] = f"{human_size(done)}/{human_size(total)}"
                speed = ""
                if rate:
                    speed = f"  {human_size(int(rate))}/s  {_remaining((total - done) / rate)}"
                shown["speed"] = speed
            return shown

    return Bar


def _terminal_size() -> tuple[int, int]:
    """Columns and lines for the bars: stderr's, less the last column (a line that fills
    it wraps on some terminals); 80 and 24 where the terminal does not say (it says 0).

    ``COLUMNS`` and ``LINES`` win, as with :func:`shutil.get_terminal_size`.
    """
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        columns, lines = 0, 0
    told = [os.environ.get(name, "") for name in ("COLUMNS", "LINES")]
    columns = int(told[0]) if told[0].isdigit() and int(told[0]) > 0 else columns
    lines = int(told[1]) if told[1].isdigit() and int(told[1]) > 0 else lines
    return (columns - 1 if columns > 1 else 80), (lines if lines > 0 else 24)


def _remaining(seconds: float) -> str:
    """Ollama's time left: ``59s``, ``12m5s``, ``2h30m``, ``99h+``."""
    whole = int(seconds)
    if whole >= 100 * 3600:
        return "99h+"
    if whole >= 3600:
        return f"{whole // 3600}h{whole // 60 % 60}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60}s"
    return f"{whole}s"
