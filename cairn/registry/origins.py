"""Where credentials may go: origins (scheme, host, port) and token realms.

A credential belongs to the origin that challenged for it. It goes along
with a request only while the request's URL has that same scheme, host and
port: an upload ``Location`` on another host, a redirect to blob storage,
an ``https`` to ``http`` downgrade, or another port on the same host are
all other origins (as requests' ``should_strip_auth`` and curl since
CVE-2022-27774 treat them).

A token realm gets the user's password, so it must be the registry's own
origin, a sibling host of the same registrable domain (``auth.docker.io``
for ``registry-1.docker.io``, judged by the Public Suffix List, not by
counting dots), or listed in ``CAIRN_TOKEN_REALMS``.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx

from cairn.errors import ConfigError, RegistryError

DEFAULT_PORTS = {"http": 80, "https": 443}
WEB_SCHEMES = frozenset(DEFAULT_PORTS)


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        default = DEFAULT_PORTS.get(self.scheme)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


def origin_of(url: str) -> Origin:
    """The origin of an absolute URL; a RegistryError for one that has none."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port
        host = parts.hostname
        if host:
            host.encode("idna")  # what http.client will do: a host it refuses is refused here
            httpx.URL(url)  # and what httpx will do (it checks xn-- labels too)
    except (ValueError, UnicodeError, httpx.InvalidURL):
        host, port, scheme = None, None, ""
    if scheme not in WEB_SCHEMES or not host:
        raise RegistryError(
            "{url} is not an http or https URL; cairn follows no other scheme",
            url=_shown(url),
        )
    return Origin(scheme, host.lower(), port or DEFAULT_PORTS[scheme])


def parse_origins(text: str) -> frozenset[Origin]:
    """``CAIRN_TOKEN_REALMS``: comma-separated ``[scheme://]host[:port]`` (https by default)."""
    origins = set()
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        url = entry if "://" in entry else f"https://{entry}"
        try:
            origins.add(origin_of(url))
        except RegistryError:
            raise ConfigError(
                "CAIRN_TOKEN_REALMS entry {entry!r} is not [scheme://]host[:port]", entry=entry
            ) from None
    return frozenset(origins)


def siblings(a: str, b: str) -> bool:
    """Whether two host names share one registrable domain (eTLD+1, per the Public Suffix List).

    ``auth.docker.io`` and ``registry-1.docker.io`` do; ``evil.io`` and
    ``registry-1.docker.io`` do not, nor ``a.github.io`` and ``b.github.io``
    (``github.io`` is a public suffix), nor any two IP addresses.
    """
    if _is_ip(a) or _is_ip(b):
        return False
    own = _registrable(a)
    return own is not None and own == _registrable(b)


def realm_allowed(realm: Origin, registry: Origin, listed: frozenset[Origin]) -> bool:
    """Whether a Bearer realm may receive the credentials of ``registry``."""
    if realm == registry or realm in listed:
        return True
    # A sibling host, over TLS unless the registry itself is plain HTTP, on
    # its scheme's standard port or the registry's own.
    scheme_ok = realm.scheme == "https" or registry.scheme == "http"
    port_ok = realm.port in (DEFAULT_PORTS[realm.scheme], registry.port)
    return scheme_ok and port_ok and siblings(realm.host, registry.host)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _registrable(host: str) -> str | None:
    found: str | None = _suffix_list().privatesuffix(host.rstrip(".").lower())
    return found


@functools.cache
def _suffix_list() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def _shown(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url[:200]
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:200]
