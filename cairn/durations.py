"""Go's ``time.ParseDuration`` syntax (``5m``, ``1h30m``, ``5m0s``, ``-1s``, ``0``), as
Ollama reads ``keep_alive`` and ``--keepalive``: one parser for the CLI and the server."""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_WHOLE = re.compile(r"(?:[0-9]*(?:\.[0-9]*)?(?:ns|us|µs|μs|ms|s|m|h))+")


def go_duration(text: str) -> float | None:
    """Seconds (negative for a negative duration), or None when ``text`` is not one."""
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body[1:] if body[:1] in ("+", "-") else body
    if body == "0":
        return 0.0
    if not _WHOLE.fullmatch(body):
        return None
    parts = _PART.findall(body)
    if any(number in ("", ".") for number, _ in parts):
        return None  # every unit needs a number: "m" or ".s" is not a duration
    return sign * sum(float(number) * _UNITS[unit] for number, unit in parts)
