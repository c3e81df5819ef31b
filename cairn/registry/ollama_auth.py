"""Ollama's signed token requests, for registry.ollama.ai.

Ollama answers a Bearer challenge from registry.ollama.ai (realm on
ollama.com) by adding ``service``, ``scope``, ``ts`` (Unix seconds) and a
random ``nonce`` to the realm URL and signing, with an ed25519 key,
``GET,<that URL>,<base64 of the hex sha256 of the empty body>``. The
``Authorization`` header is ``<base64 SSH public key blob>:<base64
signature>``. Anonymous pulls work without it; pushes to a namespace on
ollama.com need the key registered there (``cairn`` prints where it is).

The key lives at ``$CAIRN_HOME/id_ed25519`` (OpenSSH format, 0600), made
on first need.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import struct
import time
from pathlib import Path
from urllib.parse import urlencode

from cairn.errors import ConfigError
from cairn.registry.origins import Origin

OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_REALMS = frozenset(
    {Origin("https", "ollama.com", 443), Origin("https", "registry.ollama.ai", 443)}
)
"""The only realms Ollama's signed token requests go to: exactly these origins."""
EMPTY_BODY = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class OllamaKey:
    """The ed25519 key that signs token requests, created on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> object:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        if not self.path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            private = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(private)
            public = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            self.path.with_suffix(".pub").write_bytes(public + b"\n")
            return key
        try:
            loaded = serialization.load_ssh_private_key(self.path.read_bytes(), password=None)
        except (ValueError, OSError) as exc:
            raise ConfigError(
                "cannot read the ed25519 key {path}: {exc}", path=self.path, exc=exc
            ) from None
        if not isinstance(loaded, ed25519.Ed25519PrivateKey):
            raise ConfigError("{path} is not an ed25519 key", path=self.path)
        return loaded

    def sign(self, data: bytes) -> str:
        """``<base64 public key blob>:<base64 signature>`` for ``data``."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = self._load()
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        blob = _ssh_string(b"ssh-ed25519") + _ssh_string(raw)
        signature = key.sign(data)
        return f"{base64.b64encode(blob).decode()}:{base64.b64encode(signature).decode()}"


def signed_token_request(realm: str, service: str, scope: str, key: OllamaKey) -> tuple[str, str]:
    """The token URL Ollama would request, and the ``Authorization`` to send with it."""
    query = {"service": service, "scope": scope, "ts": str(int(time.time()))}
    query["nonce"] = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
    url = realm + ("&" if "?" in realm else "?") + urlencode({k: v for k, v in query.items() if v})
    return url, key.sign(f"GET,{url},{EMPTY_BODY}".encode())
