"""Bearer tokens for ``cairn registry serve``, and Ollama's key-signed way of asking for one.

Ollama never sends a password to a registry (server/auth.go, auth/auth.go):
on a 401 with ``WWW-Authenticate: Bearer realm=...`` it GETs the realm (only
on the registry's own host) with ``service``, ``scope``, ``ts`` and a random
``nonce`` added to the query, and an ``Authorization`` header of
``<public key>:<signature>``: the base64 SSH wire form of its ed25519 key
(``~/.ollama/id_ed25519``), a colon, and the base64 ed25519 signature of
``GET,<the realm URL as sent>,<base64 of the hex sha256 of an empty body>``.
It takes ``token`` from the JSON answer and sends ``Bearer <token>``.

Its downloader then fetches a blob's parts from the ``Location`` of an
unranged GET with no credentials at all (server/download.go), so that
Location carries a grant: a signature over the repository, the digest and
an expiry, good for that one blob only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cairn.errors import CairnError, ConfigError
from cairn.registry.ollama_auth import EMPTY_BODY
from cairn.registry.origins import Origin, origin_of

TOKEN_LIFE = 300.0
"""Seconds a token is good for; Ollama asks again on the next 401."""
GRANT_LIFE = 3600.0
"""Seconds a blob's grant (the Location of an authorized GET) is good for."""
CLOCK_SKEW = 300.0
"""How far a signed request's ``ts`` may be from this machine's clock."""
MOST_TOKENS = 100_000
"""Tokens and nonces remembered at once; past it the oldest half goes."""
_ED25519 = b"ssh-ed25519"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def load_keys(path: Path) -> dict[bytes, str]:
    """The Ollama public keys in ``path`` (``ssh-ed25519 AAAA... comment`` lines, as in
    ``~/.ollama/id_ed25519.pub``): the key's wire form to its comment."""
    keys: dict[bytes, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        wire = _wire(fields[1]) if len(fields) >= 2 and fields[0] == "ssh-ed25519" else None
        if wire is None:
            raise ConfigError(
                "{path} line {line}: not an ed25519 public key (ssh-ed25519 AAAA... as in"
                " ~/.ollama/id_ed25519.pub)",
                path=path,
                line=number,
            )
        keys[wire] = " ".join(fields[2:]) or f"key {number}"
    if not keys:
        raise ConfigError("{path} has no public keys (ssh-ed25519 AAAA...)", path=path)
    return keys


def _wire(text: str) -> bytes | None:
    """The SSH wire form of an ed25519 public key, checked; None if ``text`` is not one."""
    try:
        wire = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return wire if _raw_key(wire) is not None else None


def _raw_key(wire: bytes) -> bytes | None:
    """The 32 bytes of an ed25519 key in SSH wire form (string "ssh-ed25519", string key)."""
    if len(wire) != 4 + len(_ED25519) + 4 + 32:
        return None
    (kind_length,) = struct.unpack(">I", wire[:4])
    if kind_length != len(_ED25519) or wire[4:15] != _ED25519:
        return None
    (key_length,) = struct.unpack(">I", wire[15:19])
    return wire[19:] if key_length == 32 else None


class Tokens:
    """Issues and checks bearer tokens and blob grants; checks Ollama's signed requests."""

    def __init__(self, keys: dict[bytes, str], origins: frozenset[Origin] = frozenset()) -> None:
        self.keys = keys
        self.origins = origins
        """Where this server is reached (``--public-url``): a signed request for any other
        origin is one Ollama made for another registry, relayed here."""
        self._secret = secrets.token_bytes(32)
        self._issued: dict[str, float] = {}
        self._nonces: dict[str, float] = {}

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        _remember(self._issued, token, time.monotonic() + TOKEN_LIFE)
        return token

    def valid(self, token: str) -> bool:
        return self._issued.get(token, 0.0) > time.monotonic()

    def ollama_key(self, header: str, url: str, ts: str, nonce: str) -> str | None:
        """The comment of the listed key that signed this token request, or None.

        ``url`` is the request's URL as the client sent it (what it signed), on one of this
        server's own origins (a signature made for another registry and relayed here with
        a ``Host`` of that registry is refused); ``ts`` must be
        within ``CLOCK_SKEW`` of now and ``nonce`` not seen before, so a signed request
        overheard once cannot be replayed."""
        try:
            if origin_of(url) not in self.origins:
                return None
        except CairnError:
            return None
        public, sep, signature = header.partition(":")
        if not sep or not nonce or len(nonce) > 200 or not ts.isascii() or not ts.isdigit():
            return None
        if abs(time.time() - int(ts[:12])) > CLOCK_SKEW:
            return None
        wire = _wire(public)
        if wire is None or wire not in self.keys:
            return None
        raw = _raw_key(wire)
        try:
            signed = base64.b64decode(signature, validate=True)
            assert raw is not None  # _wire checked it
            Ed25519PublicKey.from_public_bytes(raw).verify(
                signed, f"GET,{url},{EMPTY_BODY}".encode()
            )
        except (ValueError, InvalidSignature):
            return None
        now = time.time()
        if self._nonces.get(nonce, 0.0) > now:
            return None  # a replay
        _remember(self._nonces, nonce, now + 2 * CLOCK_SKEW)
        return self.keys[wire]

    def grant(self, repository: str, digest: str) -> str:
        """A grant to GET one blob of one repository until ``GRANT_LIFE`` from now."""
        expires = int(time.time() + GRANT_LIFE)
        return f"{expires}.{self._sign(repository, digest, expires)}"

    def granted(self, repository: str, digest: str, grant: str) -> bool:
        expires, _, signature = grant.partition(".")
        if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            return False
        if not _HEX64.fullmatch(signature):  # compare_digest takes ASCII only
            return False
        if int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, self._sign(repository, digest, int(expires)))

    def _sign(self, repository: str, digest: str, expires: int) -> str:
        message = f"{repository}\n{digest}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def _remember(memory: dict[str, float], key: str, until: float) -> None:
    if len(memory) >= MOST_TOKENS:
        for old in sorted(memory, key=memory.__getitem__)[: MOST_TOKENS // 2]:
            del memory[old]
    memory[key] = until
