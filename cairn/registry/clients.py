"""Registry clients as this user has configured them: credentials (``cairn login``, then
Docker's), the CA bundle, token realms, the Ollama key, mirrors. Shared by the CLI and
``cairn serve``'s ``/api/pull`` and ``/api/push``, so both reach a registry alike."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from cairn import config

if TYPE_CHECKING:
    from cairn.manifests.models import Models
    from cairn.manifests.reference import Reference
    from cairn.registry.auth import CredentialStore
    from cairn.registry.client import RegistryClient
    from cairn.registry.events import Report


def credential_store() -> CredentialStore:
    from cairn.registry.auth import CredentialStore

    settings = config.load()
    return CredentialStore(settings.home / "auth.json", settings.docker_config)


def make_client(ref: Reference, insecure: bool, limit: int | None = None) -> RegistryClient:
    """A client for ``ref``'s registry; ``limit``: bytes per second at most."""
    from cairn.registry.client import RegistryClient
    from cairn.registry.ollama_auth import OLLAMA_REGISTRY, OllamaKey
    from cairn.registry.origins import parse_origins
    from cairn.registry.ratelimit import RateLimiter

    settings = config.load()
    return RegistryClient(
        ref.host,
        insecure=insecure or ref.insecure,
        credentials=credential_store().get(ref.host),
        ca_bundle=str(settings.ca_bundle) if settings.ca_bundle else None,
        token_realms=parse_origins(os.environ.get("CAIRN_TOKEN_REALMS", "")),
        limiter=RateLimiter(limit) if limit else None,
        ollama_key=OllamaKey(settings.home / "id_ed25519")
        if ref.host.lower() == OLLAMA_REGISTRY
        else None,
    )


async def pull_configured(
    models: Models, ref: Reference, insecure: bool, report: Report, limit: int | None = None
) -> None:
    """Pull ``ref`` through its mirrors first (``mirrors.json``, ``CAIRN_MIRRORS``), then
    from its origin; ``insecure``: the origin is plain HTTP, also when a mirror resolves
    tags there."""
    from cairn.manifests.reference import parse_reference
    from cairn.registry.pull import pull, pull_via_mirrors

    if insecure:
        ref = dataclasses.replace(ref, insecure=True)
    mirrors = config.load().mirrors().get(ref.host.lower(), ())
    if mirrors:

        def connect(host: str, plain: bool) -> RegistryClient:
            return make_client(parse_reference(f"{host}/{ref.repository}"), plain, limit)

        if await pull_via_mirrors(models, ref, mirrors, connect, report) is not None:
            return
    async with make_client(ref, insecure, limit) as client:
        await pull(models, ref, client, report)
