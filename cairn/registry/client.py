"""An async OCI Distribution client on httpx: requests, auth, retries, redirects.

The transport is injectable (``transport=httpx.MockTransport(...)`` in
tests), as httpx's own clients are. Every request:

- carries the cached credential for its scope, and on a 401 answers the
  challenge once (Bearer: a token from the realm, cached per scope;
  Basic: the stored credentials) before trying again;
- is retried with exponential backoff on connection errors, 5xx and 429
  (honouring ``Retry-After``) when its body can be sent again;
- follows redirects by hand, dropping ``Authorization`` as soon as a
  redirect leaves the registry's host (blob storage must never see it).
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from cairn import __version__
from cairn.errors import (
    AuthenticationError,
    ManifestError,
    RegistryError,
    RemoteNotFoundError,
    TransferError,
)
from cairn.i18n import Phrase
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import MAX_MANIFEST_SIZE
from cairn.registry.auth import Credentials, parse_challenges
from cairn.registry.ollama_auth import OLLAMA_REALMS, OllamaKey, signed_token_request
from cairn.registry.ratelimit import RateLimiter

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = f"cairn/{__version__}"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0

    def delay(self, attempt: int) -> float:
        backoff = min(self.max_delay, self.base_delay * 2.0**attempt)
        return float(backoff * (0.5 + random.random() / 2))


def retry_after(response: httpx.Response, cap: float = 60.0) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time

    return min(cap, max(0.0, when.timestamp() - time.time()))


def _error_message(response: httpx.Response) -> str:
    """The registry's ``{"errors": [{"code", "message"}]}`` body, in one line."""
    try:
        body = response.json()
        parts = [
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
            for e in body.get("errors", [])
            if isinstance(e, dict)
        ]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        pass
    return response.reason_phrase or f"HTTP {response.status_code}"


def _host_of(url: str) -> str:
    return urlsplit(url).netloc.lower()


class RegistryClient:
    """One registry host: authenticated, retried requests against ``/v2/``."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        ca_bundle: str | None = None,
        token_realms: frozenset[str] = frozenset(),
        timeout: float = 30.0,
        limiter: RateLimiter | None = None,
        ollama_key: OllamaKey | None = None,
    ) -> None:
        self.host = host
        self.insecure = insecure
        self.base_url = f"{'http' if insecure else 'https'}://{host}"
        self.credentials = credentials
        self.retry = retry or RetryPolicy()
        self.token_realms = token_realms
        self.injected_transport = transport is not None
        self.ollama_key = ollama_key
        """Signs token requests to ollama.com, as Ollama does (registry.ollama.ai only)."""
        self.limiter = limiter
        """Shared by every byte stream of this client's transfers (``--limit-rate``)."""
        # --insecure is Ollama's: plain HTTP, and no TLS verification should a
        # redirect lead to https (it also spares loading the CA store, ~60 ms).
        verify: ssl.SSLContext | bool = not insecure
        if ca_bundle and not insecure:
            verify = ssl.create_default_context(cafile=ca_bundle)
        self.verify = verify
        self.ca_bundle = ca_bundle
        self._http1_context: ssl.SSLContext | None = None
        self.http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            verify=verify,
            trust_env=True,
            http2=not insecure and transport is None and _has_h2(),
            headers={"User-Agent": USER_AGENT},
        )
        self._auth: dict[str, str] = {}
        self._open: set[str] = set()  # scopes that answered without any credential

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    def http1_ssl_context(self) -> ssl.SSLContext:
        """A TLS context for the ``http.client`` byte paths: same trust, HTTP/1.1 only.

        Not httpx's own context: httpx offers ``h2`` through ALPN on the
        context it is given, and ``http.client`` speaks HTTP/1.1 alone.
        """
        if self._http1_context is None:
            context = ssl.create_default_context(cafile=self.ca_bundle if self.verify else None)
            if not self.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["http/1.1"])
            self._http1_context = context
        return self._http1_context

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def authorization(self, scope: str) -> str | None:
        """The credential to send for ``scope``, if one is known."""
        return self._auth.get(scope) or self._auth.get("*")

    def known(self, scope: str) -> bool:
        """Whether requests for ``scope`` are known to pass (a credential, or none needed)."""
        return self.authorization(scope) is not None or scope in self._open

    # -- the request loop ----------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        stream: bool = False,
        replayable: bool = True,
    ) -> httpx.Response:
        """Send a request with auth, redirects and retries; the final response.

        A response with an error status (other than the 401 answered here)
        is returned, not raised: :meth:`check` turns it into an error.
        """
        if not url.startswith(("http://", "https://")):
            url = self.url(url)
        answered_challenge = False
        attempt = 0
        while True:
            sent = dict(headers or {})
            credential = self.authorization(scope)
            if credential:
                sent["Authorization"] = credential
            try:
                response = await self._send(method, url, sent, content, stream)
            except httpx.TransportError as exc:
                if not replayable or attempt + 1 >= self.retry.attempts:
                    raise TransferError(
                        "{method} {url}: {reason}",
                        method=method,
                        url=_redact(url),
                        reason=_describe(exc),
                    ) from exc
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if response.status_code == 401 and not answered_challenge:
                await response.aclose()
                await self._answer(response, scope)
                answered_challenge = True
                continue
            if (
                response.status_code in RETRY_STATUSES
                and replayable
                and attempt + 1 < self.retry.attempts
            ):
                wait = retry_after(response)
                await response.aclose()
                await asyncio.sleep(wait if wait is not None else self.retry.delay(attempt))
                attempt += 1
                continue
            if not credential and response.status_code < 400:
                self._open.add(scope)
            return response

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | AsyncIterator[bytes] | None,
        stream: bool,
    ) -> httpx.Response:
        for _ in range(10):
            request = self.http.build_request(method, url, headers=headers, content=content)
            response = await self.http.send(request, stream=True)
            location = response.headers.get("Location")
            if (
                response.status_code not in REDIRECTS
                or not location
                or method not in ("GET", "HEAD")
            ):
                if not stream:
                    await response.aread()
                return response
            await response.aclose()
            target = urljoin(url, location)
            if _host_of(target) != _host_of(url):
                # Leaving the registry (blob storage, a CDN): never take its credentials along.
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise RegistryError(
            "too many redirects for {method} {url}", method=method, url=_redact(url)
        )

    async def _answer(self, response: httpx.Response, scope: str) -> None:
        """Answer a 401's challenge: fetch a token or use Basic credentials."""
        challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        for challenge in challenges:
            if challenge.scheme == "bearer" and "realm" in challenge.params:
                self._auth[scope] = await self._token(challenge.params, scope)
                return
        for challenge in challenges:
            if challenge.scheme == "basic":
                if self.credentials is None:
                    raise AuthenticationError(
                        "{host} needs credentials: run `cairn login {host}`",
                        host=self.host,
                        status=401,
                    )
                self._auth["*"] = self.credentials.basic()
                return
        raise AuthenticationError(
            "{host} refused the request (401) and offered no way in", host=self.host, status=401
        )

    async def _token(self, params: Mapping[str, str], scope: str) -> str:
        realm = params["realm"]
        realm_host = urlsplit(realm).hostname or ""
        registry_host = urlsplit(self.base_url).hostname or ""
        allowed = self.token_realms | (OLLAMA_REALMS if self.ollama_key is not None else set())
        if not _same_site(realm_host, registry_host) and realm_host not in allowed:
            raise AuthenticationError(
                "{host} sends token requests to {realm_host}, another site;"
                " allow it with CAIRN_TOKEN_REALMS if that is intended",
                host=self.host,
                realm_host=realm_host,
                status=401,
            )
        query: dict[str, str] = {}
        if params.get("service"):
            query["service"] = params["service"]
        wanted = params.get("scope") or (scope if scope != "*" else "")
        if wanted:
            query["scope"] = wanted
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        if self.ollama_key is not None and realm_host in OLLAMA_REALMS:
            url, headers["Authorization"] = signed_token_request(
                realm, params.get("service", ""), wanted, self.ollama_key
            )
        try:
            response = await self.http.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise TransferError(
                "token request to {realm_host}: {reason}",
                realm_host=realm_host,
                reason=_describe(exc),
            ) from exc
        if response.status_code in (401, 403):
            if self.credentials is None:
                raise AuthenticationError(
                    "{host} needs credentials: run `cairn login {host}`",
                    host=self.host,
                    status=response.status_code,
                )
            raise AuthenticationError(
                "{realm_host} refused the credentials for {host}",
                realm_host=realm_host,
                host=self.host,
                status=response.status_code,
            )
        if response.status_code != 200:
            raise AuthenticationError(
                "token request to {realm_host} failed: HTTP {status_code}",
                realm_host=realm_host,
                status_code=response.status_code,
                status=response.status_code,
            )
        try:
            body: Any = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise AuthenticationError(
                "{realm_host} answered without a token", realm_host=realm_host
            )
        return f"Bearer {token}"

    # -- checking ------------------------------------------------------------

    @staticmethod
    def check(response: httpx.Response, what: str, ok: tuple[int, ...] = (200,)) -> None:
        """Raise the typed error for a response whose status is not in ``ok``."""
        status = response.status_code
        if status in ok:
            return
        message = Phrase(
            "{what}: {detail} (HTTP {status})",
            what=what,
            detail=_error_message(response),
            status=status,
        )
        if status == 404:
            raise RemoteNotFoundError(message, status=status)
        if status in (401, 403):
            raise AuthenticationError(message, status=status)
        raise RegistryError(message, status=status)

    # -- operations ------------------------------------------------------------

    async def get_manifest(
        self, repository: str, reference: str, accept: tuple[str, ...] = mt.ACCEPT
    ) -> tuple[bytes, str | None, str | None]:
        """The manifest bytes, their Content-Type and Docker-Content-Digest (at most 4 MiB)."""
        response = await self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scope=f"repository:{repository}:pull",
            headers={"Accept": ", ".join(accept)},
            stream=True,
        )
        try:
            if response.status_code != 200:
                await response.aread()
            self.check(
                response,
                Phrase(
                    "manifest {repository}:{reference}", repository=repository, reference=reference
                ),
            )
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_SIZE:
                raise ManifestError(
                    "manifest of {declared} bytes is larger than the {limit} byte limit",
                    declared=declared,
                    limit=MAX_MANIFEST_SIZE,
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST_SIZE:
                    raise ManifestError(
                        "manifest is larger than the {limit} byte limit", limit=MAX_MANIFEST_SIZE
                    )
        except httpx.TransportError as exc:
            raise TransferError(
                "reading manifest {repository}:{reference}: {reason}",
                repository=repository,
                reference=reference,
                reason=_describe(exc),
            ) from exc
        finally:
            await response.aclose()
        content_type = response.headers.get("Content-Type")
        if content_type:
            content_type = content_type.split(";")[0].strip()
        return bytes(body), content_type, response.headers.get("Docker-Content-Digest")

    async def blob_size(self, repository: str, digest: str, push: bool = False) -> int | None:
        """The blob's size when the repository has it, else None."""
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        response = await self.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope)
        if response.status_code == 404:
            return None
        self.check(response, Phrase("blob {digest}", digest=digest))
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else 0

    async def put_manifest(
        self, repository: str, reference: str, data: bytes, content_type: str
    ) -> str | None:
        response = await self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=f"repository:{repository}:pull,push",
            headers={"Content-Type": content_type},
            content=data,
        )
        self.check(
            response,
            Phrase(
                "pushing manifest {repository}:{reference}",
                repository=repository,
                reference=reference,
            ),
            (200, 201, 202),
        )
        digest: str | None = response.headers.get("Docker-Content-Digest")
        return digest


def _has_h2() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def _same_site(a: str, b: str) -> bool:
    """Same host, or hosts under one parent domain (auth.docker.io, registry-1.docker.io)."""
    if a == b:
        return True
    parent_a, parent_b = a.split(".", 1)[-1], b.split(".", 1)[-1]
    return "." in parent_b and (
        parent_a == parent_b or a.endswith("." + parent_b) or b.endswith("." + parent_a)
    )


def _redact(url: str) -> str:
    """A URL without its query (upload state tokens, signed storage URLs)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
