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


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    models = env.get("CAIRN_MODELS") or str(Path("~/.cairn/models"))
    return Settings(
        models=Path(models).expanduser(),
        debug=_truthy(env.get("CAIRN_DEBUG")),
    )
