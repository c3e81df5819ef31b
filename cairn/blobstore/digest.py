"""Digests: ``sha256:<64 lowercase hex>``, or ``sha512:<128 lowercase hex>`` (OCI content).

Ollama's models are sha256 throughout; sha512 is for OCI content pushed to
or pulled from a registry that addresses it so.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cairn.errors import InvalidDigestError

LENGTHS = {"sha256": 64, "sha512": 128}
"""The algorithms the store keeps, and the hex digits of each."""
_HEX = {algorithm: re.compile(f"[0-9a-f]{{{n}}}") for algorithm, n in LENGTHS.items()}


@dataclass(frozen=True, order=True)
class Digest:
    """A validated digest: sha256 unless said otherwise."""

    hex: str
    algorithm: str = "sha256"

    def __post_init__(self) -> None:
        pattern = _HEX.get(self.algorithm) if isinstance(self.algorithm, str) else None
        if pattern is None:
            raise InvalidDigestError(
                "unsupported digest algorithm {algorithm!r:.40} (sha256 or sha512)",
                algorithm=self.algorithm,
            )
        if not isinstance(self.hex, str) or not pattern.fullmatch(self.hex):
            raise InvalidDigestError(
                "invalid {algorithm} hex: {hex!r:.80}", algorithm=self.algorithm, hex=self.hex
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>`` or ``sha512:<hex>`` (the file form ``sha256-<hex>`` too)."""
        if not isinstance(text, str):
            raise InvalidDigestError(
                "digest must be a string, not {kind}", kind=type(text).__name__
            )
        algorithm, sep, value = text.partition(":")
        if not sep:
            algorithm, sep, value = text.partition("-")
        pattern = _HEX.get(algorithm)
        if not sep or pattern is None or not pattern.fullmatch(value):
            raise InvalidDigestError(
                "invalid digest {text!r:.100}: want sha256:<64 hex digits>"
                " or sha512:<128 hex digits>",
                text=text,
            )
        return cls(value, algorithm)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data`` (small: a manifest, a config)."""
        return cls(hashlib.new(algorithm, data).hexdigest(), algorithm)

    def hasher(self) -> Any:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    @property
    def filename(self) -> str:
        """The blob's file name in Ollama's layout: ``sha256-<hex>``."""
        return f"{self.algorithm}-{self.hex}"

    @property
    def short(self) -> str:
        """The first 12 hex digits, as ``ollama list`` shows model IDs."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def from_filename(name: str) -> Digest | None:
    """The digest a blob file name (``sha256-<hex>``, ``sha512-<hex>``) spells, or None."""
    algorithm, sep, value = name.partition("-")
    pattern = _HEX.get(algorithm)
    if not sep or pattern is None or not pattern.fullmatch(value):
        return None
    return Digest(value, algorithm)


def from_hex(name: str) -> Digest | None:
    """The digest a stamp's name (the bare hex) stands for: its length says which."""
    for algorithm, length in LENGTHS.items():
        if len(name) == length and _HEX[algorithm].fullmatch(name):
            return Digest(name, algorithm)
    return None
