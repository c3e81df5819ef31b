"""``GET /v2/_catalog``: the repositories ``cairn registry serve`` holds, as distribution
lists them (sorted, paged with ``n`` and ``last``, a ``Link`` to the next page).

A repository is listed under the name that reaches it (``app.py``'s mapping run
backwards): ``namespace/name`` for the default host, ``host/namespace/name`` for
another host the store holds, and ``host/org/team/name`` for a deeper OCI repository
(on any host: a name of three parts or more starts with its host). A repository with
no tags is not listed (its
``tags/list`` answers NAME_UNKNOWN), nor one whose name no OCI client can send
(a host with a port, a part only Ollama's grammar allows). Who may read the
catalog is decided as for every other read (``Registry.authorized``): credentials
read every repository, so they see every one.
"""

from __future__ import annotations

import asyncio
import bisect
import re
import time
import weakref
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
    parts = [part.lower() for part in ref.components[1:]]
    if ref.host.lower() != default_host.lower() or ref.deep:
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
        items = items[bisect.bisect_right(items, last) :]  # sorted: no scan of every name
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


SNAPSHOT_SECONDS = 60.0
"""How long the listing a first page walked serves the pages that follow it."""

_snapshots: weakref.WeakKeyDictionary[Registry, tuple[float, list[str]]] = (
    weakref.WeakKeyDictionary()
)
"""Per served store: when its repositories were last walked, and what was found."""


async def listing(registry: Registry, continued: bool) -> list[str]:
    """The store's repositories: walked afresh for a first page (no ``last``); for a page
    that continues one (``last`` given), the listing walked at most :data:`SNAPSHOT_SECONDS`
    ago. A walk reads every repository's folder, so a walk per page would make reading a
    catalog of N repositories n at a time cost N*N/n (2 s a page at 20,000 repositories)."""
    if continued:
        taken = _snapshots.get(registry)
        if taken is not None and time.monotonic() - taken[0] < SNAPSHOT_SECONDS:
            return taken[1]
    names = await asyncio.to_thread(repositories, registry)
    _snapshots[registry] = (time.monotonic(), names)
    return names


async def catalog(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    names, headers = page(
        await listing(registry, bool(request.query.get("last"))),
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
