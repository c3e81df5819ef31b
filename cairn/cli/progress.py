"""Progress for transfers: tqdm bars on a terminal, NDJSON with --json, nothing with --quiet."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cairn.i18n import Phrase, _, localize
from cairn.registry.pull import Event
from cairn.sanitize import untrusted


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
            said = event.status  # NDJSON keeps the English
            if event.digest:
                said = Phrase("{label} {total} bytes", label=said, total=event.total)
            line = untrusted(localize(said))
            if line != self._last and (not event.digest or event.completed == event.total):
                if self._bars:
                    from tqdm import tqdm

                    tqdm.write(line, file=sys.stderr)  # above the bars, not through them
                else:
                    click.echo(line, err=True)
                self._last = line

    def _bar(self, event: Event) -> None:
        from tqdm import tqdm

        assert event.digest is not None and event.total is not None
        if self._overall is None:
            self._overall = tqdm(
                total=0,
                desc=_("total"),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                position=0,
            )
        bar = self._bars.get(event.digest)
        if bar is None:
            bar = tqdm(
                total=event.total,
                desc=untrusted(localize(event.status)),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                position=len(self._bars) + 1,
            )
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
