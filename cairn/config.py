"""Every setting cairn reads from the environment, read in one place.

Nothing here runs at import time: call :func:`load` (or the helpers) when a
setting is needed, so tests can change the environment between calls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cairn.errors import ConfigError

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
    mirror_list: str
    """``CAIRN_MIRRORS`` as given (see :meth:`mirrors`)."""
    models_given: bool = False
    """Whether ``CAIRN_MODELS`` was set (not the default)."""

    def mirrors(self) -> dict[str, tuple[Mirror, ...]]:
        """Registries to try first, per host: ``CAIRN_MIRRORS`` over ``$CAIRN_HOME/mirrors.json``.

        Read when a pull asks, so that a broken mirrors file stops pulls only,
        not every command (nor the printing of its error).
        """
        return _mirrors(self.mirror_list, self.home / "mirrors.json")

    def store_exists(self) -> bool:
        """Whether the store at ``models`` is there; False for a default store never made.

        A file there, or a ``CAIRN_MODELS`` naming a path that does not exist (a typo,
        most often), is a :class:`ConfigError`: listing it as empty would hide the mistake.
        Ollama makes a missing models directory on first use; so does a pull or create here.
        """
        if self.models.is_dir():
            return True
        if self.models.exists():
            raise ConfigError(
                "the store at {path} is a file, not a directory: set CAIRN_MODELS to the"
                " store's directory",
                path=self.models,
            )
        if self.models_given:
            raise ConfigError(
                "CAIRN_MODELS names {path}, which does not exist (a pull or create there makes it)",
                path=self.models,
            )
        return False


@dataclass(frozen=True)
class Mirror:
    """One mirror of a registry: ``host[:port]`` or ``http://host[:port]``."""

    url: str
    resolve_tags: bool = True
    """False: tags are resolved at the origin, and only digests fetched here (as containerd's
    ``capabilities = ["pull"]`` without ``resolve``)."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    models = env.get("CAIRN_MODELS") or str(Path("~/.cairn/models"))
    home = Path(env.get("CAIRN_HOME") or "~/.cairn").expanduser()
    ca_bundle = env.get("CAIRN_CA_BUNDLE") or env.get("SSL_CERT_FILE")
    docker = Path(env.get("DOCKER_CONFIG") or "~/.docker").expanduser() / "config.json"
    return Settings(
        mirror_list=env.get("CAIRN_MIRRORS", ""),
        models=Path(models).expanduser(),
        models_given=bool(env.get("CAIRN_MODELS")),
        debug=_truthy(env.get("CAIRN_DEBUG")),
        home=home,
        ca_bundle=Path(ca_bundle).expanduser() if ca_bundle else None,
        docker_config=docker,
    )


def _mirrors(text: str, path: Path) -> dict[str, tuple[Mirror, ...]]:
    """``origin=mirror[,mirror...][;origin=...]``, after the file's ``{"origin": [mirrors]}``.

    A mirror is ``host[:port]``, or ``http://host[:port]`` for plain HTTP; in
    the file also ``{"url": "host[:port]", "resolve_tags": false}``.
    """
    mirrors: dict[str, tuple[Mirror, ...]] = {}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        raise ConfigError("cannot read mirrors from {path}: {exc}", path=path, exc=exc) from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(_mirror(m) is not None for m in v) for v in data.values()
    ):
        raise ConfigError("{path} must map registry hosts to lists of mirrors", path=path)
    mirrors.update({str(k).lower(): tuple(filter(None, map(_mirror, v))) for k, v in data.items()})
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        origin, sep, targets = entry.partition("=")
        found = tuple(t.strip() for t in targets.split(",") if t.strip())
        if not sep or not origin.strip() or not found:
            raise ConfigError(
                "CAIRN_MIRRORS entry {entry!r} is not origin=mirror[,mirror]", entry=entry
            )
        mirrors[origin.strip().lower()] = tuple(Mirror(t) for t in found)
    return mirrors


def _mirror(entry: object) -> Mirror | None:
    """A mirror from the file: a string, or ``{"url": ..., "resolve_tags": bool}``."""
    if isinstance(entry, str) and entry:
        return Mirror(entry)
    if isinstance(entry, dict) and set(entry) <= {"url", "resolve_tags"}:
        url, resolve = entry.get("url"), entry.get("resolve_tags", True)
        if isinstance(url, str) and url and isinstance(resolve, bool):
            return Mirror(url, resolve)
    return None
