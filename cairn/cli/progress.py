"""Progress for transfers: tqdm bars on a terminal, NDJSON with --json, nothing with --quiet."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cairn.registry.pull import Event


class Reporter:
    """Turns transfer events into bars (one per blob), JSON lines or plain status lines."""

    def __init__(self, as_json: bool = False, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._bars: dict[str, Any] = {}
        self._last = ""

    def __call__(self, event: Event) -> None:
        if self.as_json:
            click.echo(json.dumps(event.to_json()))
            return
        if self.quiet:
            return
        if event.digest and event.total is not None and self.tty:
            from tqdm import tqdm

            bar = self._bars.get(event.digest)
            if bar is None:
                bar = tqdm(
                    total=event.total,
                    desc=event.status,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    leave=True,
                    file=sys.stderr,
                )
                self._bars[event.digest] = bar
            bar.update((event.completed or 0) - bar.n)
            return
        line = event.status if not event.digest else f"{event.status} {event.total} bytes"
        if line != self._last and (not event.digest or event.completed == event.total):
            click.echo(line, err=True)
            self._last = line

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
