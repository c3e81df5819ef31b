"""Digests: ``sha256:<64 lowercase hex>``, the only algorithm the store keeps."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cairn.errors import InvalidDigestError

_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated sha256 digest."""

    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.hex, str) or not _HEX.fullmatch(self.hex):
            raise InvalidDigestError("invalid sha256 hex: {hex!r:.80}", hex=self.hex)

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>`` (Ollama's ``sha256-<hex>`` file form is accepted too)."""
        if not isinstance(text, str):
            raise InvalidDigestError(
                "digest must be a string, not {kind}", kind=type(text).__name__
            )
        algorithm, sep, value = text.partition(":")
        if not sep:
            algorithm, sep, value = text.partition("-")
        if not sep or algorithm != "sha256" or not _HEX.fullmatch(value):
            raise InvalidDigestError(
                "invalid digest {text!r:.100}: want sha256:<64 hex digits>", text=text
            )
        return cls(value)

    @property
    def filename(self) -> str:
        """The blob's file name in Ollama's layout."""
        return f"sha256-{self.hex}"

    @property
    def short(self) -> str:
        """The first 12 hex digits, as ``ollama list`` shows model IDs."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"sha256:{self.hex}"
