"""Downloading one blob into the store: ranged, parallel, resumable, verified.

A blob is fetched into a :class:`~cairn.blobstore.partial.PartialBlob`,
in byte ranges that run in parallel for large blobs. Each range resumes from
where it got to after a dropped connection (and after a restart: the
partial records its progress); a server that ignores ``Range`` is met with
one plain download from zero. A hasher follows the bytes as they land, so
the digest check costs little once the last byte is in. Nothing enters the
store unless the whole blob hashes to its digest.

Bytes move by one of two paths. With a transport injected into the client
(tests) or a proxy configured, through httpx. Otherwise through
``http.client`` in threads, which reads straight into a buffer with
``readinto`` and releases the GIL while it waits on the socket: on this
project's machines about three times the throughput of httpx's streaming.
Both paths share the auth the async client negotiated.

A hostile or broken registry gets bounded effort: a blob that cannot fit
in the free space is refused before the first byte; a stream slower than
the policy's minimum rate for ``stall_seconds`` is restarted (as Ollama
restarts a stalled part); a range that fails ``attempts`` times without
real progress, or a blob that fails ``blob_failures`` times in all, ends
the pull; a body sent with a ``Content-Encoding`` nobody asked for is
refused, never decoded. A failed pull keeps its partial only when it can
be resumed, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import shutil
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from cairn import threads
from cairn.blobstore import Blob, BlobStore
from cairn.blobstore.partial import PartialBlob, Span
from cairn.errors import (
    AuthenticationError,
    RegistryError,
    RemoteNotFoundError,
    StorageFullError,
    TransferError,
)
from cairn.i18n import Phrase
from cairn.manifests.manifest import Descriptor
from cairn.registry.client import (
    REDIRECTS,
    USER_AGENT,
    Pace,
    RegistryClient,
    Stalled,
    ascii_digits,
    raw_chunks,
)
from cairn.registry.origins import WEB_SCHEMES, origin_of
from cairn.sanitize import untrusted

# A blob starts as one stream, which lets the hash follow the bytes as they
# land. When that stream is slower than SPLIT_BELOW bytes/s after SPLIT_AFTER
# seconds (a long, thin link, not loopback), what is left of a blob of at least
# PARALLEL_THRESHOLD bytes is split into PARTS ranges on parallel connections.
PARALLEL_THRESHOLD = 64 << 20
PARTS = 4
START_PARTS = 1
SPLIT_AFTER = 0.5
SPLIT_BELOW = 150 << 20
_BUFFER = 1 << 20
FREE_MARGIN = 64 << 20
"""Space a pull leaves free on the store's filesystem."""
KEEP_AT_LEAST = 1 << 20
"""A failed download keeps its partial for resuming only when this much had landed."""

Progress = Callable[[int], None]


class _RangeIgnored(Exception):
    """The server answered a ranged request with the whole blob (200)."""


class _Retryable(Exception):
    """A status worth asking again for (5xx and the like) in the middle of a blob."""


class _Expired(Exception):
    """The credential stopped working (401) mid-download."""


class _Watchdog:
    """Cuts a blocking stream (http.client fills its buffer) that is slower than the floor.

    ``readinto`` on the fast path returns only when its buffer is full, so a
    server dripping a byte at a time never lets the reading thread look at
    the clock: this thread does, and shuts the socket down when a window of
    ``stall_seconds`` brought less than the floor.
    """

    def __init__(self, pace: Pace, span: Span, conn: http.client.HTTPConnection) -> None:
        self.pace = pace
        self.span = span
        self.conn = conn
        self.stalled: Stalled | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Watchdog:
        threads.start(self._thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        before = self.span.position
        while not self._done.wait(self.pace.window):
            try:
                self.pace.add(self.span.position - before)
            except Stalled as stalled:
                self.stalled = stalled
                sock = self.conn.sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
            before = self.span.position


@dataclass
class _Context:
    client: RegistryClient
    repository: str
    partial: PartialBlob
    progress: Progress
    stop: threading.Event
    may_split: bool = True
    failures: int = 0
    """Failures of this blob so far, all ranges together."""

    @property
    def url(self) -> str:
        return self.client.url(f"/v2/{self.repository}/blobs/{self.partial.digest}")

    @property
    def scope(self) -> str:
        return f"repository:{self.repository}:pull"

    def headers(self, span: Span) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if span.position > 0 or span.end < self.partial.size:
            headers["Range"] = f"bytes={span.position}-{span.end - 1}"
        credential = self.client.authorization(self.scope)
        if credential:
            headers["Authorization"] = credential
        return headers

    def accept_status(
        self, status: int, content_range: str | None, span: Span, encoding: str | None = None
    ) -> None:
        if status in (200, 206) and (encoding or "identity").strip().lower() != "identity":
            raise RegistryError(
                "blob {digest}: the registry sent it encoded as {encoding!r}, which cairn"
                " did not ask for (blobs are stored byte for byte)",
                digest=self.partial.digest,
                encoding=untrusted(encoding or "")[:40],
            )
        if status == 206:
            start = (content_range or "").removeprefix("bytes ").split("-")[0]
            if not ascii_digits(start) or int(start) != span.position:
                raise TransferError(
                    "blob {digest}: wrong Content-Range {content_range!r}",
                    digest=self.partial.digest,
                    content_range=untrusted(content_range or "")[:100],
                )
            return
        if status == 200:
            if span.position == 0 and span.start == 0 and span.end == self.partial.size:
                return
            raise _RangeIgnored()
        if status == 401:
            raise _Expired()
        if status == 404:
            raise RemoteNotFoundError(
                "blob {digest} is not in {repository}",
                digest=self.partial.digest,
                repository=self.repository,
                status=404,
            )
        if status in (403,):
            raise AuthenticationError(
                "blob {digest}: access denied", digest=self.partial.digest, status=status
            )
        raise _Retryable(f"blob {self.partial.digest}: HTTP {status}")


def use_fast_path(client: RegistryClient) -> bool:
    """Whether bytes may go by http.client to the registry (no transport injected, no proxy)."""
    if client.injected_transport:
        return False
    host = urlsplit(client.base_url).hostname or ""
    proxies = urllib.request.getproxies()
    scheme = "http" if client.insecure else "https"
    return not (scheme in proxies and not urllib.request.proxy_bypass(host))


def connect(
    url: str, ssl_context: ssl.SSLContext | None, timeout: float = 60.0
) -> tuple[http.client.HTTPConnection, str]:
    """An ``http.client`` connection to ``url``'s host, and the request target on it."""
    parts = urlsplit(url)
    if parts.scheme not in WEB_SCHEMES:
        origin_of(url)  # raises: no other scheme is ever spoken
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=ssl_context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    return conn, parts.path + (f"?{parts.query}" if parts.query else "")


def start_request(
    conn: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str]
) -> None:
    """Send a request's line and headers (cairn's User-Agent, no Accept-Encoding)."""
    conn.putrequest(method, target, skip_accept_encoding=True)
    conn.putheader("User-Agent", USER_AGENT)
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders()


def _fast_span(ctx: _Context, span: Span, ssl_context: ssl.SSLContext | None) -> None:
    """Fetch the rest of ``span`` with http.client (runs in a thread)."""
    url = ctx.url
    headers = ctx.headers(span)
    policy = ctx.client.retry
    for _ in range(10):
        conn, target = connect(url, ssl_context, timeout=min(60.0, policy.stall_seconds))
        try:
            # The watchdog covers the answer's headers too: a server may drip those.
            with _Watchdog(Pace(policy, ctx.client.limiter), span, conn) as watchdog:
                try:
                    following = _fast_read(ctx, span, conn, target, headers, url)
                except (OSError, http.client.HTTPException):
                    if watchdog.stalled is None:
                        raise
                    following = None
            if watchdog.stalled is not None:
                raise watchdog.stalled
            if following is None:
                if not span.complete and not ctx.stop.is_set():
                    raise http.client.IncompleteRead(b"", span.end - span.position)
                return
            if origin_of(following) != origin_of(url):
                headers.pop("Authorization", None)
            url = following
        finally:
            conn.close()
    raise RegistryError("too many redirects fetching blob {digest}", digest=ctx.partial.digest)


def _fast_read(
    ctx: _Context,
    span: Span,
    conn: http.client.HTTPConnection,
    target: str,
    headers: dict[str, str],
    url: str,
) -> str | None:
    """One request on ``conn``: the URL a redirect leads to, or None once the bytes are read."""
    conn.request("GET", target, headers=headers)
    response = conn.getresponse()
    location = response.getheader("Location")
    if response.status in REDIRECTS and location:
        response.read(64 << 10)
        return ctx.client.follow(url, location)
    ctx.accept_status(
        response.status,
        response.getheader("Content-Range"),
        span,
        response.getheader("Content-Encoding"),
    )
    view = memoryview(bytearray(_BUFFER))
    while not span.complete and not ctx.stop.is_set():
        want = min(_BUFFER if ctx.client.limiter is None else 1 << 16, span.end - span.position)
        count = response.readinto(view[:want])
        if not count:
            break
        ctx.progress(ctx.partial.write_at(span, view[:count]))
        if ctx.client.limiter is not None:
            ctx.client.limiter.consume(count)
    return None


async def _httpx_span(ctx: _Context, span: Span) -> None:
    """Fetch the rest of ``span`` through the client's httpx transport."""
    headers = ctx.headers(span)
    headers.pop("Authorization", None)  # the client adds it, and drops it across hosts
    response = await ctx.client.request(
        "GET", ctx.url, scope=ctx.scope, headers=headers, stream=True
    )
    try:
        ctx.accept_status(
            response.status_code,
            response.headers.get("Content-Range"),
            span,
            response.headers.get("Content-Encoding"),
        )
        pace = Pace(ctx.client.retry, ctx.client.limiter)
        async for chunk in raw_chunks(response):  # as received: no progress held back
            if ctx.stop.is_set():
                return
            ctx.progress(ctx.partial.write_at(span, chunk))
            pace.add(len(chunk))
            if ctx.client.limiter is not None:
                await ctx.client.limiter.aconsume(len(chunk))
            if span.complete:
                return
        if not span.complete:
            raise TransferError("blob {digest}: the body ended early", digest=ctx.partial.digest)
    finally:
        await response.aclose()


async def _span_with_retries(ctx: _Context, span: Span, fast: bool) -> None:
    client = ctx.client
    policy = client.retry
    attempt = 0
    ssl_context = client.http1_ssl_context()
    # Progress that resets the count of attempts: a stream that was healthy for
    # a while, not a byte dripped before the next stall.
    real_progress = max(1, policy.min_rate * int(policy.stall_seconds))
    while not span.complete:
        before = span.position
        try:
            if fast:
                await asyncio.to_thread(_fast_span, ctx, span, ssl_context)
            else:
                await _httpx_span(ctx, span)
            continue
        except _Expired:
            # Renew the credential through the async client, then carry on.
            await client.blob_size(ctx.repository, str(ctx.partial.digest))
            problem: BaseException = AuthenticationError("credential expired")
        except (
            OSError,
            http.client.HTTPException,
            httpx.TransportError,
            TransferError,
            _Retryable,
            Stalled,
        ) as exc:
            problem = exc
        if ctx.stop.is_set():
            return
        if span.position - before >= real_progress:
            attempt = 0  # real progress was made: this is a fresh failure
        attempt += 1
        ctx.failures += 1
        if attempt >= policy.attempts or ctx.failures >= policy.blob_failures:
            if isinstance(problem, TransferError):  # it names the blob already
                raise TransferError(
                    "{problem} (after {failures} failures)",
                    problem=problem,
                    failures=ctx.failures,
                ) from problem
            raise TransferError(
                "blob {digest}: {problem} (after {failures} failures)",
                digest=ctx.partial.digest,
                problem=untrusted(str(problem))[:300],
                failures=ctx.failures,
            ) from problem
        await asyncio.sleep(policy.delay(attempt - 1))


def _follow_and_hash(partial: PartialBlob, done: threading.Event) -> tuple[Any, int]:
    """Hash the blob's bytes as they land (runs in a thread); return hasher and count."""
    hasher = partial.digest.hasher()
    hashed = 0
    while True:
        finished = done.is_set()
        landed = partial.landed()
        if landed > hashed:
            partial.hash_prefix(hasher, hashed, landed)
            hashed = landed
        partial.flush_if_due()
        if finished:
            return hasher, hashed
        done.wait(0.01)


async def _split_if_slow(
    ctx: _Context, fast: bool, task: asyncio.Future[None]
) -> list[asyncio.Future[None]]:
    """Watch a lone stream; if it is slow, split what is left over parallel ranges."""
    pending = [s for s in ctx.partial.spans if not s.complete]
    if len(pending) != 1:
        return []
    span = pending[0]
    loop = asyncio.get_running_loop()
    started, before = loop.time(), span.position
    done, _ = await asyncio.wait({task}, timeout=SPLIT_AFTER)
    if done:
        return []
    rate = (span.position - before) / max(1e-6, loop.time() - started)
    if rate >= SPLIT_BELOW or span.end - span.position < 2 * (8 << 20):
        return []
    added = ctx.partial.split(span, PARTS)
    return [asyncio.ensure_future(_span_with_retries(ctx, new, fast)) for new in added]


async def fetch_blob(
    client: RegistryClient,
    repository: str,
    descriptor: Descriptor,
    store: BlobStore,
    progress: Progress = lambda n: None,
) -> Blob:
    """Download one blob into ``store`` (resuming what a previous run left)."""
    parts = START_PARTS if descriptor.size >= PARALLEL_THRESHOLD else 1
    partial = store.partial(descriptor.digest, descriptor.size, parts)
    await asyncio.to_thread(partial.open)
    try:
        if store.has(descriptor.digest):  # another process fetched it while we waited
            partial.discard()  # the empty partial this process just made
            return Blob(descriptor.digest, descriptor.size)
        _check_space(store, partial)
        progress(partial.resumed)
        return await _fetch_into(client, repository, descriptor, partial, progress)
    except BaseException as exc:
        replacement = _kept_or_discarded(partial, exc)
        if replacement is exc:
            raise
        raise replacement from exc
    finally:
        await asyncio.to_thread(partial.close)


async def _fetch_into(
    client: RegistryClient,
    repository: str,
    descriptor: Descriptor,
    partial: PartialBlob,
    progress: Progress,
) -> Blob:
    fast = use_fast_path(client)
    if fast and not client.known(f"repository:{repository}:pull"):
        # Let the async client meet any auth challenge before the threads start.
        await client.blob_size(repository, str(descriptor.digest))
    ctx = _Context(client, repository, partial, progress, threading.Event())
    landed = threading.Event()
    hashing = asyncio.ensure_future(asyncio.to_thread(_follow_and_hash, partial, landed))
    try:
        while True:
            try:
                await _run_spans(ctx, fast)
                break
            except _RangeIgnored:
                # The server sends whole blobs only: start over with one plain GET
                # (again each time such a download breaks off, within the budget).
                # The hasher must be done before the file is cut (it reads by mmap).
                ctx.failures += 1
                if ctx.failures >= client.retry.blob_failures:
                    raise TransferError(
                        "blob {digest}: the registry ignores Range requests and the"
                        " download broke off {failures} times",
                        digest=descriptor.digest,
                        failures=ctx.failures,
                    ) from None
                landed.set()
                await hashing
                partial.restart()
                landed.clear()
                hashing = asyncio.ensure_future(
                    asyncio.to_thread(_follow_and_hash, partial, landed)
                )
                ctx.stop = threading.Event()
                ctx.may_split = False
                await asyncio.sleep(client.retry.delay(min(ctx.failures, 6)))
    finally:
        landed.set()
        hasher, hashed = await hashing
    return await asyncio.to_thread(partial.commit, hasher, hashed)


def _check_space(store: BlobStore, partial: PartialBlob) -> None:
    """Refuse a blob that cannot fit in the free space (less a margin) before fetching it."""
    need = partial.size - partial.resumed
    try:
        free = shutil.disk_usage(store.tmp_dir).free
    except OSError:
        return
    if need > free - FREE_MARGIN:
        raise StorageFullError(
            "blob {digest} needs {need} bytes, but {path} has {free} bytes free"
            " (and cairn keeps {margin} spare)",
            digest=partial.digest,
            need=need,
            path=store.tmp_dir,
            free=free,
            margin=FREE_MARGIN,
        )


def _kept_or_discarded(partial: PartialBlob, exc: BaseException) -> BaseException:
    """Keep a failed download's bytes only if a later pull can resume them; say where."""
    landed = partial.landed() if partial.spans else 0
    resumable = isinstance(
        exc, (TransferError, AuthenticationError, asyncio.CancelledError, KeyboardInterrupt)
    )
    if landed < KEEP_AT_LEAST or not resumable:
        partial.discard()
        return exc
    if isinstance(exc, TransferError):
        return TransferError(
            Phrase(
                "{problem}; {landed} bytes are kept in {path}: pull again to resume,"
                " or run `cairn prune` to remove them",
                problem=exc,
                landed=landed,
                path=partial.path,
            )
        )
    return exc


async def _run_spans(ctx: _Context, fast: bool) -> None:
    tasks: list[asyncio.Future[None]] = [
        asyncio.ensure_future(_span_with_retries(ctx, span, fast))
        for span in ctx.partial.spans
        if not span.complete
    ]
    try:
        if ctx.may_split and ctx.partial.size >= PARALLEL_THRESHOLD and len(tasks) == 1:
            tasks += await _split_if_slow(ctx, fast, tasks[0])
        await asyncio.gather(*tasks)
    except BaseException:
        ctx.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        ctx.partial.save()
