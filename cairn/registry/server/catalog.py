"""``GET /v2/_catalog``: the repositories ``cairn registry serve`` holds, as distribution
lists them (sorted, paged with ``n`` and ``last``, a ``Link`` to the next page).

A repository is listed under the name that reaches it (``app.py``'s mapping run
backwards): ``namespace/name`` for the default host, ``host/namespace/name`` for
another host the store holds. A repository with no tags is not listed (its
``tags/list`` answers NAME_UNKNOWN), nor one whose name no OCI client can send
(a host with a port, a part only Ollama's grammar allows). Who may read the
catalog is decided as for every other read (``Registry.authorized``): credentials
read every repository, so they see every one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from urllib.parse import quote

from aiohttp import web

from cairn.manifests.reference import Reference
from cairn.registry.server.errors import OCIError
from cairn.registry.server.registry import NUMBER, Registry

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
"""A path component of an OCI repository name (the distribution spec's grammar)."""


def served_name(ref: Reference, default_host: str) -> str | None:
    """The repository name a client reaches ``ref``'s repository by; None if it has none."""
    parts = [ref.namespace.lower(), ref.name.lower()]
    if ref.host.lower() != default_host.lower():
        parts.insert(0, ref.host.lower())
    if not all(_COMPONENT.fullmatch(part) for part in parts):
        return None
    return "/".join(parts)


def repositories(registry: Registry) -> list[str]:
    """Every repository the store holds a tag of, by its served name, sorted."""
    default_host = registry.options.default_host
    names = {served_name(tagged.reference, default_host) for tagged in registry.models.tags}
    return sorted(name for name in names if name is not None)


def page(
    items: list[str],
    query: Mapping[str, str],
    link: Callable[[str, int], str],
    invalid: Callable[[str], OCIError],
) -> tuple[list[str], dict[str, str]]:
    """One page of sorted ``items`` as ``n`` and ``last`` ask (the OCI spec's paging, as
    distribution does it), and its headers: a ``Link`` to the next page when there is more.
    ``link(last, n)`` spells that page's URL; ``invalid(n)`` is the error for an ``n`` that is
    not a number."""
    last = query.get("last")
    if last:
        items = [item for item in items if item > last]
    headers: dict[str, str] = {}
    count = query.get("n")
    if count is not None:
        if not NUMBER.fullmatch(count):
            raise invalid(count)
        limit = int(count)
        if len(items) > limit:
            items = items[:limit]
            if items:
                headers["Link"] = f'<{link(items[-1], limit)}>; rel="next"'
    return items, headers


async def catalog(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    names, headers = page(
        await asyncio.to_thread(repositories, registry),
        request.query,
        lambda last, n: f"/v2/_catalog?last={quote(last, safe='')}&n={n}",
        lambda n: OCIError(
            "PAGINATION_NUMBER_INVALID",
            "n must be a number of results",
            detail={"n": n[:40]},
            status=400,
        ),
    )
    return web.json_response({"repositories": names}, headers=headers)
