"""An async OCI Distribution client on httpx: requests, auth, retries, redirects.

The transport is injectable (``transport=httpx.MockTransport(...)`` in
tests), as httpx's own clients are. Every request:

- carries the cached credential for its scope while it goes to the
  registry's own origin (scheme, host and port; see ``origins.py``), and on
  a 401 from that origin answers the challenge once (Bearer: a token from
  an allowed realm, cached per scope; Basic: the stored credentials);
- is retried with exponential backoff on connection errors, 5xx and 429,
  honouring ``Retry-After`` up to a cap, within a total wait per request;
- follows redirects by hand, dropping ``Authorization`` as soon as one
  leaves the origin, and refusing ``https`` to ``http`` and other schemes;
- asks for ``Accept-Encoding: identity`` and reads every body that is not
  a blob with a size cap, decompressing (when a server compresses anyway)
  with the same cap: a small gzip body cannot inflate into gigabytes.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from cairn import __version__
from cairn.errors import (
    AuthenticationError,
    InvalidReferenceError,
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
from cairn.registry.origins import Origin, origin_of, realm_allowed
from cairn.registry.ratelimit import RateLimiter
from cairn.registry.streams import ConnectionPool, StreamBudget, max_streams_from_environment
from cairn.sanitize import untrusted

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = f"cairn/{__version__}"
SMALL_BODY = 64 << 10
"""The most read of any body that is not a blob or a manifest (errors, tokens, ``/v2/``)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    """Tries of one request, and of one range of a blob without progress."""
    base_delay: float = 0.2
    max_delay: float = 10.0
    max_retry_after: float = 30.0
    """The longest ``Retry-After`` obeyed (``CAIRN_MAX_RETRY_AFTER``)."""
    max_wait: float = 120.0
    """The most one request waits between its tries, all waits together."""
    blob_failures: int = 20
    """Failures one blob may have in all, progress or not, before the pull gives up."""
    stall_seconds: float = 30.0
    """A blob stream slower than ``min_rate`` this long is restarted (``CAIRN_STALL_SECONDS``)."""
    min_rate: int = 1024

    @classmethod
    def from_environment(cls) -> RetryPolicy:
        return cls(
            max_retry_after=_seconds("CAIRN_MAX_RETRY_AFTER", cls.max_retry_after),
            stall_seconds=_seconds("CAIRN_STALL_SECONDS", cls.stall_seconds),
        )

    def delay(self, attempt: int) -> float:
        backoff = min(self.max_delay, self.base_delay * 2.0**attempt)
        return float(backoff * (0.5 + random.random() / 2))


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        from cairn.errors import ConfigError

        raise ConfigError("{name} must be a number of seconds, not {text!r}", name=name, text=text)
    return value


def retry_after(response: httpx.Response, cap: float = 30.0) -> float | None:
    return retry_after_seconds(response.headers.get("Retry-After"), cap)


def retry_after_seconds(value: str | None, cap: float = 30.0) -> float | None:
    """A ``Retry-After`` header's wait in seconds (delta or HTTP date), at most ``cap``."""
    if not value:
        return None
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None
    return min(cap, max(0.0, when - time.time()))


async def raw_chunks(response: httpx.Response, size: int | None = None) -> AsyncIterator[bytes]:
    """A body's bytes as sent (never decoded); an in-memory response's content at once."""
    if response.is_stream_consumed:  # a transport that read it already (tests' MockTransport)
        yield response.content
        return
    async for chunk in response.aiter_raw(size):
        yield chunk


class Stalled(Exception):
    """A stream slower than the policy's minimum rate for its stall window."""


class Pace:
    """Watches one stream's rate over windows of ``stall_seconds``: blobs and small bodies."""

    def __init__(self, policy: RetryPolicy, limiter: RateLimiter | None = None) -> None:
        self.window = policy.stall_seconds
        floor = policy.min_rate
        if limiter is not None:
            floor = min(floor, limiter.rate // 4)  # --limit-rate below the floor is no stall
        self.floor = floor
        self.start = time.monotonic()
        self.count = 0

    def add(self, count: int) -> None:
        self.count += count
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed >= self.window:
            if self.count < self.floor * elapsed:
                raise Stalled(f"{self.count} bytes in {elapsed:.0f} s, under {self.floor} bytes/s")
            self.start, self.count = now, 0


class BodyTooLargeError(Exception):
    """A body went past the cap it was read with."""


def _decoder(response: httpx.Response, what: object) -> Any:
    """A zlib decoder for a gzip or deflate body, None for identity; else a RegistryError."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise RegistryError(
        "{what}: the registry sent it encoded as {encoding!r}, which cairn did not ask for",
        what=what,
        encoding=untrusted(encoding[:40]),
    )


async def read_capped(
    response: httpx.Response, limit: int, what: object, policy: RetryPolicy | None = None
) -> bytes:
    """At most ``limit`` bytes of a body (after decoding); BodyTooLargeError past them.

    A body that comes slower than the policy's floor for its stall window (a
    4 MiB manifest dripped a byte a second would take 48 days) is a
    TransferError.
    """
    pace = Pace(policy or RetryPolicy())
    body = bytearray()
    try:
        decoder = _decoder(response, what) if not response.is_stream_consumed else None
        async for raw in raw_chunks(response):
            try:
                pace.add(len(raw))
            except Stalled as exc:
                raise TransferError("{what}: {problem}", what=what, problem=str(exc)) from None
            chunk = raw
            if decoder is not None:
                try:
                    chunk = decoder.decompress(raw, limit + 1 - len(body))
                except zlib.error as exc:
                    raise RegistryError(
                        "{what}: the body is not valid {encoding}: {exc}",
                        what=what,
                        encoding=response.headers.get("Content-Encoding"),
                        exc=exc,
                    ) from None
            body += chunk
            if len(body) > limit:
                raise BodyTooLargeError()
    finally:
        await response.aclose()
    return bytes(body)


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
            return untrusted("; ".join(parts)[:1000])
    except (ValueError, AttributeError, RecursionError, httpx.ResponseNotRead):
        pass
    return untrusted(response.reason_phrase or f"HTTP {response.status_code}")


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
        token_realms: frozenset[Origin] = frozenset(),
        timeout: float = 30.0,
        limiter: RateLimiter | None = None,
        ollama_key: OllamaKey | None = None,
        max_streams: int | None = None,
    ) -> None:
        self.host = host
        self.insecure = insecure
        self.base_url = f"{'http' if insecure else 'https'}://{host}"
        try:
            _ = httpx.URL(self.base_url).host  # reading it decodes an IDNA name
        except (httpx.InvalidURL, UnicodeError) as exc:
            # A host such as ``xn--zz`` passes a name's grammar but is no punycode.
            raise InvalidReferenceError(
                "host {host!r} cannot go in a URL: {reason}",
                host=host,
                reason=untrusted(str(exc))[:200],
            ) from None
        self.origin = origin_of(self.base_url)
        """The only place credentials go (token realms aside)."""
        self.credentials = credentials
        self.retry = retry or RetryPolicy.from_environment()
        self.token_realms = token_realms
        """``CAIRN_TOKEN_REALMS``: realms allowed besides the origin and its siblings."""
        self.notice: Callable[[Phrase], None] | None = None
        """Told when a request waits (``Retry-After``), for the progress line."""
        self.injected_transport = transport is not None
        self.ollama_key = ollama_key
        """Signs token requests to ollama.com, as Ollama does (registry.ollama.ai only)."""
        self.limiter = limiter
        """Shared by every byte stream of this client's transfers (``--limit-rate``)."""
        cap = max_streams or max_streams_from_environment()
        self.streams = StreamBudget(cap)
        """The blob streams this client's downloads may have open, all blobs together."""
        self.connections = ConnectionPool(cap)
        """Idle HTTP/1.1 connections for blob ranges (the fast path)."""
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
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )
        self._auth: dict[str, str] = {}
        self._refreshing: dict[str, asyncio.Lock] = {}
        self._open: set[str] = set()  # scopes that answered without any credential

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()
        self.connections.close()

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
        """The credential to send for ``scope`` to the registry's origin, if one is known."""
        return self._auth.get(scope) or self._auth.get("*")

    def at_origin(self, url: str) -> bool:
        """Whether ``url`` is on the registry's own origin (scheme, host and port)."""
        return origin_of(url) == self.origin

    def follow(self, url: str, location: str) -> str:
        """Where a redirect (or an upload ``Location``) leads; refused if unsafe.

        Only http and https are followed, and never from https down to http
        unless the user asked for ``--insecure``.
        """
        try:
            target = urljoin(url, location)
        except ValueError:  # an unreadable Location ("http://[zz]/")
            target = location
        before, after = origin_of(url), origin_of(target)
        if before.scheme == "https" and after.scheme == "http" and not self.insecure:
            raise RegistryError(
                "{url} redirects to plain HTTP ({target}); refused without --insecure",
                url=_redact(url),
                target=_redact(target),
            )
        return target

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
        own = self.at_origin(url)
        answered_challenge = False
        attempt = 0
        waited = 0.0
        while True:
            sent = dict(headers or {})
            credential = self.authorization(scope) if own else None
            if credential:
                sent["Authorization"] = credential
            try:
                response = await self._send(method, url, sent, content, stream)
            except httpx.TransportError as exc:
                if not replayable or attempt + 1 >= self.retry.attempts:
                    problem = connection_problem(exc, url)
                    if problem is not None:
                        raise TransferError(problem) from exc
                    raise TransferError(
                        "{method} {url}: {reason}",
                        method=method,
                        url=_redact(url),
                        reason=_describe(exc),
                    ) from exc
                waited += await self._wait(self.retry.delay(attempt), waited)
                attempt += 1
                continue
            if response.status_code == 401 and own and not answered_challenge:
                # Only the registry's own origin is answered: a challenge from an
                # upload Location or a redirect elsewhere gets no credentials.
                await response.aclose()
                async with self._refreshing.setdefault(scope, asyncio.Lock()):
                    # Requests running side by side that met the same expiry ask
                    # for one new token between them, not one each.
                    if self.authorization(scope) == credential:
                        await self._answer(response, scope)
                answered_challenge = True
                continue
            if (
                response.status_code in RETRY_STATUSES
                and replayable
                and attempt + 1 < self.retry.attempts
                and waited < self.retry.max_wait
            ):
                asked = retry_after(response, self.retry.max_retry_after)
                await response.aclose()
                wait = asked if asked is not None else self.retry.delay(attempt)
                waited += await self._wait(wait, waited, response.status_code, attempt + 2)
                attempt += 1
                continue
            if own and not credential and response.status_code < 400:
                self._open.add(scope)
            return response

    async def _wait(
        self, seconds: float, waited: float, status: int | None = None, next_try: int = 0
    ) -> float:
        """Sleep before another try, within what is left of the request's total wait."""
        seconds = max(0.0, min(seconds, self.retry.max_wait - waited))
        if status is not None and seconds >= 1 and self.notice is not None:
            self.notice(
                Phrase(
                    "{host} answered HTTP {status}; trying again in {seconds:.0f} s"
                    " (try {next_try} of {attempts})",
                    host=self.host,
                    status=status,
                    seconds=seconds,
                    next_try=next_try,
                    attempts=self.retry.attempts,
                )
            )
        await asyncio.sleep(seconds)
        return seconds

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
            response = await self._headers_of(request, bodiless=content in (None, b""))
            location = response.headers.get("Location")
            if (
                response.status_code not in REDIRECTS
                or not location
                or method not in ("GET", "HEAD")
            ):
                if not stream:
                    return await _small(
                        response,
                        Phrase("{method} {url}", method=method, url=_redact(url)),
                        self.retry,
                    )
                return response
            await response.aclose()
            target = self.follow(url, location)
            if origin_of(target) != origin_of(url):
                # Leaving the origin (blob storage, a CDN, another port or scheme):
                # never take the registry's credentials along.
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise RegistryError(
            "too many redirects for {method} {url}", method=method, url=_redact(url)
        )

    async def _headers_of(self, request: httpx.Request, bodiless: bool) -> httpx.Response:
        """Send ``request``; its response, once the status and headers are in.

        A request without a body gets twice the stall window for its headers (a
        server may drip them a byte at a time, each inside the read timeout);
        one with a body may take as long as its upload does.
        """
        try:
            if not bodiless:
                return await self.http.send(request, stream=True)
            return await asyncio.wait_for(
                self.http.send(request, stream=True), 2 * self.retry.stall_seconds
            )
        except TimeoutError:
            raise httpx.ReadTimeout(
                "no status and headers within the stall window", request=request
            ) from None
        except (httpx.InvalidURL, UnicodeError) as exc:  # httpx reads a Location itself
            raise RegistryError(
                "{url} answered with a Location that is not a URL: {exc}",
                url=_redact(str(request.url)),
                exc=untrusted(str(exc))[:200],
            ) from None

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
        try:
            origin = origin_of(realm)
        except RegistryError:
            raise AuthenticationError(
                "{host} sends token requests to {realm!r}, which is not an http(s) URL",
                host=self.host,
                realm=untrusted(realm[:200]),
                status=401,
            ) from None
        realm_host = str(origin)
        ollama = self.ollama_key is not None and origin in OLLAMA_REALMS
        if not ollama and not realm_allowed(origin, self.origin, self.token_realms):
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
        if ollama:
            assert self.ollama_key is not None
            url, headers["Authorization"] = signed_token_request(
                realm, params.get("service", ""), wanted, self.ollama_key
            )
        try:
            response = await _small(
                await self._headers_of(
                    self.http.build_request("GET", url, headers=headers), bodiless=True
                ),
                Phrase("token request to {realm_host}", realm_host=realm_host),
                self.retry,
                fail_when_larger=True,
            )
        except httpx.TransportError as exc:
            problem = connection_problem(exc, url)
            if problem is not None:
                raise TransferError(
                    "token request to {realm_host}: {problem}",
                    realm_host=realm_host,
                    problem=problem,
                ) from exc
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
        except (ValueError, AttributeError, RecursionError):
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
        if status == 400 and _plain_to_tls(response):
            raise RegistryError(
                "{what}: the registry answers over HTTPS, not HTTP: leave out --insecure",
                what=what,
                status=status,
            )
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
        what = Phrase(
            "manifest {repository}:{reference}", repository=repository, reference=reference
        )
        try:
            if response.status_code != 200:
                response = await _small(response, what, self.retry)
            if response.status_code == 404:
                raise RemoteNotFoundError(
                    "model {model} not found on {host} ({detail})",
                    model=f"{repository}{'@' if ':' in reference else ':'}{reference}",
                    host=self.host,
                    detail=_error_message(response),
                    status=404,
                )
            self.check(response, what)
            declared = response.headers.get("Content-Length")
            if declared and ascii_digits(declared) and int(declared) > MAX_MANIFEST_SIZE:
                raise ManifestError(
                    "manifest of {declared} bytes is larger than the {limit} byte limit",
                    declared=declared,
                    limit=MAX_MANIFEST_SIZE,
                )
            try:
                body = await read_capped(response, MAX_MANIFEST_SIZE, what, self.retry)
            except BodyTooLargeError:
                raise ManifestError(
                    "manifest is larger than the {limit} byte limit", limit=MAX_MANIFEST_SIZE
                ) from None
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
        return body, content_type, response.headers.get("Docker-Content-Digest")

    async def blob_size(self, repository: str, digest: str, push: bool = False) -> int | None:
        """The blob's size when the repository has it, else None."""
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        # Streamed: the headers as sent (a response read whole gets its body's length, 0).
        response = await self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope, stream=True
        )
        try:
            if response.status_code == 404:
                return None
            self.check(response, Phrase("blob {digest}", digest=digest))
            length = response.headers.get("Content-Length", "")
            return int(length) if ascii_digits(length) else 0
        finally:
            await response.aclose()

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


def ascii_digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes "²", which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _has_h2() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


async def _small(
    response: httpx.Response,
    what: object,
    policy: RetryPolicy | None = None,
    fail_when_larger: bool = False,
) -> httpx.Response:
    """The response with its body read: at most :data:`SMALL_BODY` bytes, decoded with that cap.

    An error body past the cap is cut there (its message is only shown);
    ``fail_when_larger`` makes that an error instead (a token response).
    """
    try:
        body = await read_capped(response, SMALL_BODY, what, policy)
    except BodyTooLargeError:
        if fail_when_larger:
            raise RegistryError(
                "{what}: the answer is larger than {limit} bytes", what=what, limit=SMALL_BODY
            ) from None
        body = b""
    except TransferError:
        raise
    except RegistryError:
        body = b""  # an encoding cairn does not read: no message to show
    return httpx.Response(
        response.status_code,
        headers=undecoded_headers(response.headers.raw),
        content=body,
        request=response.request,
        extensions=response.extensions,
    )


def undecoded_headers(
    headers: Iterable[tuple[str | bytes, str | bytes]],
) -> list[tuple[bytes, bytes]]:
    """Headers for a response built from a body already read: nothing left to decode.

    As bytes: a header value need not be ASCII (``X-Note: café``), and httpx
    encodes text it is handed as ASCII.
    """
    kept = []
    for key, value in headers:
        raw_key = key if isinstance(key, bytes) else key.encode("latin-1", "replace")
        raw_value = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
        if raw_key.lower() not in _DECODED:
            kept.append((raw_key, raw_value))
    return kept


_DECODED = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})


def _redact(url: str) -> str:
    """A URL without its query (upload state tokens, signed storage URLs)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


_PLAIN_HTTP = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"})
"""What OpenSSL says when the other side answers a TLS hello with plain HTTP."""


def connection_problem(exc: BaseException, url: str) -> Phrase | None:
    """What a failed connection to ``url`` means and what to do about it, for the
    failures users meet most (a plain-HTTP registry, nothing listening, a name that does
    not resolve, an untrusted certificate); None for the others."""
    parts = urlsplit(url)
    where = parts.netloc.rpartition("@")[2] or url
    causes: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(causes) < 10:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return Phrase(
                "the certificate of {where} is not trusted ({reason}: {detail}): give its CA"
                " in CAIRN_CA_BUNDLE",
                where=where,
                reason=cause.reason or "",
                detail=untrusted(cause.verify_message or "")[:200],
            )
        if isinstance(cause, ssl.SSLError) and cause.reason in _PLAIN_HTTP:
            return Phrase(
                "the registry at {where} answered over HTTP, not HTTPS: use --insecure for a"
                " registry without TLS",
                where=where,
            )
        if isinstance(cause, socket.gaierror):
            return Phrase(
                "cannot resolve the host {host} ({reason}): check its name, and the network",
                host=parts.hostname or where,
                reason=cause.strerror or str(cause),
            )
        if isinstance(cause, ConnectionRefusedError):
            return Phrase(
                "nothing listens on {where} (connection refused): is the registry running,"
                " and is the port right?",
                where=where,
            )
    if isinstance(exc, httpx.ConnectTimeout):
        return Phrase(
            "{where} did not take the connection in time: is the host up, and the port right?",
            where=where,
        )
    return None


def _plain_to_tls(response: httpx.Response) -> bool:
    """Whether a 400 is a TLS server's answer to plain HTTP (Go's net/http says so)."""
    try:
        return b"HTTP request to an HTTPS server" in response.content[:200]
    except httpx.ResponseNotRead:
        return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
