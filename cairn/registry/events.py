"""Progress of a transfer, shaped like Ollama's ``/api/pull`` stream: light to import (the
CLI and the server's client read events without loading the transfer code)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One progress line, shaped like Ollama's ``/api/pull`` stream."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
    streams: int | None = None
    """Streams fetching the blob (cairn's own field; ``--json`` shows it)."""
    rate: int | None = None
    """Their rate in bytes/s since the last look (every 0.15 s; cairn's own field)."""

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if v is not None}


Report = Callable[[Event], None]


def quiet(_: Event) -> None:
    pass
