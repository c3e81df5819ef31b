"""Registry credentials and the auth challenges of the OCI Distribution spec.

Credentials come from ``cairn login`` (``$CAIRN_HOME/auth.json``, mode
0600, Docker's format) and else from Docker's ``~/.docker/config.json``
(``auths`` entries, and a credential helper when one is configured).
Secrets never appear in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.errors import ConfigError

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def encoded(self) -> str:
        """``user:password`` in base64, as Basic auth and Docker's ``auths`` hold it."""
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def basic(self) -> str:
        return "Basic " + self.encoded()


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``Bearer realm=...,service=...,scope=...``."""

    scheme: str
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` header into its challenges (Basic, Bearer, ...)."""
    challenges: list[Challenge] = []
    rest = header.strip()
    while rest:
        match = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if match is None:
            break
        scheme, rest = match.group(1), rest[match.end() :]
        params: dict[str, str] = {}
        while rest:
            param = _PARAM.match(rest)
            if param is None or (param.group(2) is None and param.group(3) is None):
                break
            # A bare word followed by another word starts the next challenge.
            if "=" not in rest[: param.end()]:
                break
            value = param.group(2) if param.group(2) is not None else param.group(3)
            params[param.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            rest = rest[param.end() :]
        challenges.append(Challenge(scheme.lower(), params))
        rest = rest.lstrip(", ")
    return challenges


def _decode_auth(entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except ValueError:
            return None
        return Credentials(user, password) if user else None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    return None


def _lookup(auths: Any, host: str) -> Any:
    if not isinstance(auths, dict):
        return None
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/"):
        if key in auths:
            return auths[key]
    return None


class CredentialStore:
    """``cairn login`` credentials, with Docker's config as a fallback."""

    def __init__(self, path: Path, docker_config: Path | None = None) -> None:
        self.path = path
        self.docker_config = docker_config

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                "cannot read credentials from {path}: {exc}", path=path, exc=exc
            ) from None
        return data if isinstance(data, dict) else {}

    def get(self, host: str) -> Credentials | None:
        found = _decode_auth(_lookup(self._read(self.path).get("auths"), host))
        if found is not None or self.docker_config is None:
            return found
        docker = self._read(self.docker_config)
        helper = (docker.get("credHelpers") or {}).get(host) or docker.get("credsStore")
        found = _decode_auth(_lookup(docker.get("auths"), host))
        if found is None and isinstance(helper, str):
            found = _from_helper(helper, host)
        return found

    def save(self, host: str, credentials: Credentials) -> None:
        data = self._read(self.path)
        auths = data.setdefault("auths", {})
        auths[host] = {"auth": credentials.encoded()}
        self._write(data)

    def remove(self, host: str) -> bool:
        data = self._read(self.path)
        auths = data.get("auths") or {}
        if host not in auths:
            return False
        del auths[host]
        self._write(data)
        return True

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


def _from_helper(helper: str, host: str) -> Credentials | None:
    with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
        result = subprocess.run(
            [f"docker-credential-{helper}", "get"],
            input=host,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if result.returncode == 0:
            data = json.loads(result.stdout)
            if data.get("Username") and data.get("Secret"):
                return Credentials(data["Username"], data["Secret"])
    return None
