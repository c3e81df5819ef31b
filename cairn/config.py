"""Every setting cairn reads from the environment, read in one place.

Nothing here runs at import time: call :func:`load` (or the helpers) when a
setting is needed, so tests can change the environment between calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Settings:
    """The environment, parsed."""

    models: Path
    """``CAIRN_MODELS``: the store root (default ``~/.cairn/models``)."""
    debug: bool
    """``CAIRN_DEBUG``: show tracebacks with errors."""
    home: Path
    """``CAIRN_HOME``: credentials and keys (default ``~/.cairn``)."""
    ca_bundle: Path | None
    """``CAIRN_CA_BUNDLE`` (else ``SSL_CERT_FILE``): the CAs to trust for TLS."""
    docker_config: Path
    """``DOCKER_CONFIG``/config.json: Docker's credentials, read as a fallback."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    models = env.get("CAIRN_MODELS") or str(Path("~/.cairn/models"))
    home = Path(env.get("CAIRN_HOME") or "~/.cairn").expanduser()
    ca_bundle = env.get("CAIRN_CA_BUNDLE") or env.get("SSL_CERT_FILE")
    docker = Path(env.get("DOCKER_CONFIG") or "~/.docker").expanduser() / "config.json"
    return Settings(
        models=Path(models).expanduser(),
        debug=_truthy(env.get("CAIRN_DEBUG")),
        home=home,
        ca_bundle=Path(ca_bundle).expanduser() if ca_bundle else None,
        docker_config=docker,
    )
