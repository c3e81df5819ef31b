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
import logging
import math
import shutil
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from cairn import threads
from cairn.blobstore import Blob, BlobStore
from cairn.blobstore.partial import PartialBlob, Span
from cairn.blobstore.store import short_of_space
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
    connection_problem,
    raw_chunks,
    retry_after_seconds,
)
from cairn.registry.origins import origin_of
from cairn.registry.streams import Growth
from cairn.sanitize import untrusted

# A blob starts as one stream, which lets the hash follow the bytes as they
# land. After FIRST_LOOK seconds, then every TICK, the aggregate rate is looked
# at: a blob of at least PARALLEL_THRESHOLD bytes whose streams are slow gets
# more (streams.Growth), within the client's budget. A stream that finishes
# its range steals part of the range that will take longest (see _Plan), so
# that the slowest stream does not set the finish time.
PARALLEL_THRESHOLD = 64 << 20
START_PARTS = 1
FIRST_LOOK = 0.1
TICK = 0.15
STEAL_AT_LEAST = 8 << 20
STEAL_GAIN = 0.1
"""Seconds a steal must save (about what a new request costs on a long path)."""
STEAL_MEASURE = 0.2
"""A stream's rate is known (for stealing) once it has run this long."""
JOIN_SECONDS = 2.0
"""How long an abandoned round waits for its streams' threads (their reads are cut; one
still connecting is left behind, and no longer writes)."""
SMALL_READ, SLOW_READ = 16 << 10, 0.25
"""A read that waits longer than SLOW_READ seconds to fill its buffer shrinks it (down to
SMALL_READ): a watchdog sees progress only read by read, so a slow but honest stream must
not wait for a whole megabyte per read."""
_BUFFER = 1 << 20
FREE_MARGIN = 64 << 20
"""Space a pull leaves free on the store's filesystem."""
KEEP_AT_LEAST = 1 << 20
"""A failed download keeps its partial for resuming only when this much had landed."""

Progress = Callable[[int], None]
Observe = Callable[[int, float], None]
"""Told, every ``TICK`` seconds of a download, its streams and their rate in bytes/s."""
log = logging.getLogger("cairn.fetch")


class _RangeIgnored(Exception):
    """The server answered a ranged request with the whole blob (200)."""


class _Retryable(Exception):
    """A status worth asking again for (5xx and the like) in the middle of a blob."""

    def __init__(self, message: str, wait: float | None = None, busy: bool = False) -> None:
        super().__init__(message)
        self.wait = wait
        """What the server's ``Retry-After`` asked for, capped."""
        self.busy = busy
        """A 429: the registry has more requests than it wants."""


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
    observe: Observe | None = None
    may_split: bool = True
    busy: bool = False
    """The registry answered 429 to a range: no more streams for this blob."""
    failures: int = 0
    """Failures of this blob so far, all ranges together."""
    reading: dict[int, http.client.HTTPConnection] = field(default_factory=dict)
    """The connection each range (by id) is being read on, on the fast path."""
    threads: list[threading.Thread] = field(default_factory=list)
    """The threads of this round's streams (fast path)."""
    asked: dict[int, str] = field(default_factory=dict)
    """The URL each range (by id) was last asked at, on the fast path."""

    def abandon(self) -> None:
        """End this round: no stream writes another byte, and every blocked read returns."""
        self.stop.set()
        for span_id in list(self.reading):
            conn = self.reading.get(span_id)
            sock = None if conn is None else conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def next_round(self) -> _Context:
        """A context for starting over: its own stop and streams; the failures carry on."""
        return replace(
            self, stop=threading.Event(), reading={}, threads=[], asked={}, may_split=False
        )

    def cut(self, span: Span) -> None:
        """Shut the connection ``span`` is read on (it was stolen to its end): a blocked read
        returns at once instead of when its buffer is full, which on a crawling stream is long."""
        conn = self.reading.get(id(span))
        sock = None if conn is None else conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

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
        self,
        status: int,
        content_range: str | None,
        span: Span,
        encoding: str | None = None,
        retry_after: str | None = None,
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
            # The whole blob from byte 0: right for a range that starts there, however much
            # of it is still this range's (a thief may have taken its end meanwhile).
            if span.position == 0 and span.start == 0:
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
        wait = retry_after_seconds(retry_after, self.client.retry.max_retry_after)
        raise _Retryable(f"blob {self.partial.digest}: HTTP {status}", wait, busy=status == 429)


def use_fast_path(client: RegistryClient) -> bool:
    """Whether bytes may go by http.client to the registry (no transport injected, no proxy)."""
    if client.injected_transport:
        return False
    host = urlsplit(client.base_url).hostname or ""
    proxies = urllib.request.getproxies()
    scheme = "http" if client.insecure else "https"
    return not (scheme in proxies and not urllib.request.proxy_bypass(host))


def start_request(
    conn: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str]
) -> None:
    """Send a request's line and headers (cairn's User-Agent, no Accept-Encoding)."""
    conn.putrequest(method, target, skip_accept_encoding=True)
    conn.putheader("User-Agent", USER_AGENT)
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders()


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
"""What a reused connection the server closed while it was idle says on the next request."""


def _fast_span(ctx: _Context, span: Span, ssl_context: ssl.SSLContext | None) -> None:
    """Fetch the rest of ``span`` with http.client (runs in a thread).

    Connections come from the client's pool and go back to it when their
    response was read to the end; one cut short (a span shortened by
    stealing, an error) is closed.
    """
    url = ctx.url
    policy = ctx.client.retry
    pool = ctx.client.connections
    timeout = min(60.0, policy.stall_seconds)
    fresh = False
    for _ in range(10):
        if span.complete or ctx.stop.is_set():  # stolen to its end, or the blob ended
            return
        headers = ctx.headers(span)  # the range as it is now (a thief may have cut it)
        if origin_of(url) != ctx.client.origin:
            headers.pop("Authorization", None)  # credentials go to the registry's origin only
        ctx.asked[id(span)] = url
        conn, target, reused = pool.take(url, ssl_context, timeout, fresh)
        conn_url = url
        fresh = False
        reusable = False
        before = span.position
        ctx.reading[id(span)] = conn
        try:
            # The watchdog covers the answer's headers too: a server may drip those.
            with _Watchdog(Pace(policy, ctx.client.limiter), span, conn) as watchdog:
                try:
                    following, reusable = _fast_read(ctx, span, conn, target, headers, url)
                except _STALE:
                    if not reused or span.position != before or watchdog.stalled is not None:
                        raise
                    fresh = True  # closed while idle: ask again on a new connection
                    continue
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
            url = following
        finally:
            ctx.reading.pop(id(span), None)
            if reusable:
                pool.give(conn_url, conn)
            else:
                conn.close()
    raise RegistryError("too many redirects fetching blob {digest}", digest=ctx.partial.digest)


def _fast_read(
    ctx: _Context,
    span: Span,
    conn: http.client.HTTPConnection,
    target: str,
    headers: dict[str, str],
    url: str,
) -> tuple[str | None, bool]:
    """One request on ``conn``: the URL a redirect leads to (None once the bytes are read), and
    whether the connection may serve another request (its answer was read to the end)."""
    conn.request("GET", target, headers=headers)
    response = conn.getresponse()
    location = response.getheader("Location")
    if response.status in REDIRECTS and location:
        response.read(64 << 10)
        return ctx.client.follow(url, location), _finished(response)
    ctx.accept_status(
        response.status,
        response.getheader("Content-Range"),
        span,
        response.getheader("Content-Encoding"),
        response.getheader("Retry-After"),
    )
    view = memoryview(bytearray(_BUFFER))
    size = 1 << 16  # grows to _BUFFER while reads fill fast, shrinks when they crawl
    while not span.complete and not ctx.stop.is_set():
        want = min(size if ctx.client.limiter is None else 1 << 16, span.end - span.position)
        began = time.monotonic()
        count = response.readinto(view[:want])
        if not count:
            break
        took = time.monotonic() - began
        if took > SLOW_READ:
            size = max(SMALL_READ, size // 4)
        elif took < SLOW_READ / 25 and count == want:
            size = min(_BUFFER, size * 2)
        ctx.progress(ctx.partial.write_at(span, view[:count]))
        if ctx.client.limiter is not None:
            ctx.client.limiter.consume(count)
    return None, _finished(response)


def _finished(response: http.client.HTTPResponse) -> bool:
    """Whether ``response`` was read to its end on a connection the server keeps open."""
    return response.isclosed() and not response.will_close


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
            response.headers.get("Retry-After"),
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
                await client.streams.run(_fast_span, ctx, span, ssl_context, track=ctx.threads)
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
        if ctx.stop.is_set() or span.complete:  # stolen to its end while it failed
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
            # What it means and what to do, named for where the range was asked (a redirect
            # may have led elsewhere).
            said = connection_problem(problem, ctx.asked.get(id(span), ctx.url))
            raise TransferError(
                "blob {digest}: {problem} (after {failures} failures)",
                digest=ctx.partial.digest,
                problem=said if said is not None else untrusted(str(problem))[:300],
                failures=ctx.failures,
            ) from problem
        wait = policy.delay(attempt - 1)
        if isinstance(problem, _Retryable):
            ctx.busy = ctx.busy or problem.busy
            wait = max(wait, problem.wait or 0.0)
        await asyncio.sleep(wait)


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


async def fetch_blob(
    client: RegistryClient,
    repository: str,
    descriptor: Descriptor,
    store: BlobStore,
    progress: Progress = lambda n: None,
    observe: Observe | None = None,
) -> Blob:
    """Download one blob into ``store`` (resuming what a previous run left).

    ``progress`` is told each count of bytes that landed; ``observe``, every
    ``TICK`` seconds, how many streams are open and their rate.
    """
    parts = START_PARTS if descriptor.size >= PARALLEL_THRESHOLD else 1
    partial = store.partial(descriptor.digest, descriptor.size, parts)
    await _open(partial)
    try:
        if store.has(descriptor.digest):  # another process fetched it while we waited
            partial.discard()  # the empty partial this process just made
            return Blob(descriptor.digest, descriptor.size)
        _check_space(store, partial)
        progress(partial.resumed)
        return await _fetch_into(client, repository, descriptor, partial, progress, observe)
    except BaseException as exc:
        replacement = _kept_or_discarded(partial, exc)
        if replacement is exc:
            raise
        raise replacement from exc
    finally:
        await asyncio.to_thread(partial.close)


async def _open(partial: PartialBlob) -> None:
    """Open (and lock) the partial in a thread.

    Cancelled meanwhile (a sibling blob of the pull failed; the pull ends), the thread
    still makes the file: whichever of the two sees the other done closes it and takes
    away the empty partial, so that none is left behind. A thread still waiting for
    another process's lock on the partial stops waiting (Ctrl-C must not wait out that
    other download: the process ends only when its threads do).
    """
    lock = threading.Lock()
    state = {"abandoned": False, "opened": False}

    def forget() -> None:
        _kept_or_discarded(partial, asyncio.CancelledError())
        partial.close()

    def open_it() -> None:
        partial.open(stop=lambda: state["abandoned"])
        with lock:
            state["opened"] = not state["abandoned"]
        if not state["opened"]:
            forget()

    try:
        await asyncio.to_thread(open_it)
    except asyncio.CancelledError:
        with lock:
            state["abandoned"] = True
            opened = state["opened"]
        if opened:
            forget()
        raise


async def _fetch_into(
    client: RegistryClient,
    repository: str,
    descriptor: Descriptor,
    partial: PartialBlob,
    progress: Progress,
    observe: Observe | None,
) -> Blob:
    fast = use_fast_path(client)
    if fast and not client.known(f"repository:{repository}:pull"):
        # Let the async client meet any auth challenge before the threads start.
        await client.blob_size(repository, str(descriptor.digest))
    ctx = _Context(client, repository, partial, progress, threading.Event(), observe)
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
                ctx = ctx.next_round()  # the last round's threads keep their own stop, set
                await asyncio.sleep(client.retry.delay(min(ctx.failures, 6)))
    finally:
        landed.set()
        hasher, hashed = await hashing
    log.debug(
        "blob %s: all bytes in; %d of %d hashed as they landed, the rest now",
        descriptor.digest.short,
        hashed,
        descriptor.size,
    )
    blob = await asyncio.to_thread(partial.commit, hasher, hashed)
    log.debug("blob %s: verified and stored", descriptor.digest.short)
    return blob


def _check_space(store: BlobStore, partial: PartialBlob) -> None:
    """Refuse a blob that cannot fit in the free space (less a margin) before fetching it."""
    need = partial.size - partial.resumed
    try:
        free = shutil.disk_usage(store.tmp_dir).free
    except OSError:
        return
    if need > free - FREE_MARGIN:
        raise short_of_space(partial.digest, need, store.root, spare=FREE_MARGIN)


def _kept_or_discarded(partial: PartialBlob, exc: BaseException) -> BaseException:
    """Keep a failed download's bytes only if a later pull can resume them; say where."""
    landed = partial.landed() if partial.spans else 0
    resumable = isinstance(
        exc, (TransferError, AuthenticationError, asyncio.CancelledError, KeyboardInterrupt)
    )
    if landed < KEEP_AT_LEAST or not resumable:
        partial.discard()
        if isinstance(exc, StorageFullError) and isinstance(exc.__cause__, OSError):
            # The disk filled mid-way (not the check before the first byte): say what the
            # blob needs and what is left once its partial is gone.
            return short_of_space(partial.digest, partial.size, partial.store.root)
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


def _join(threads: list[threading.Thread], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


class _Plan:
    """Which range each stream of a blob fetches.

    A stream claims a range nobody fetches (a resumed download has several),
    else it steals from the range that will take longest to finish at its
    stream's rate: the part of what is left that lets both streams end
    together at their rates (half between equals, all of it from a stream
    that crawls). Stealing is worth a new request when it brings the range's
    end ``STEAL_GAIN`` seconds or more closer; before any rate is known,
    when the range has ``STEAL_AT_LEAST`` bytes to go.
    """

    def __init__(
        self,
        partial: PartialBlob,
        cut: Callable[[Span], None] = lambda span: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.partial = partial
        self.cut = cut
        self.clock = clock
        self.busy: list[Span] = []
        self._began: dict[int, tuple[float, int]] = {}  # id(span): when claimed, position then

    def claim(self, done: Span | None = None) -> Span | None:
        """The next range for a stream (``done``: the range it just finished), or None."""
        now = self.clock()
        thief = None if done is None else self._rate(done, now)
        if done is not None:
            self.release(done)
        for span in self.partial.spans:
            if not span.complete and all(span is not b for b in self.busy):
                return self._take(span)
        rates = {id(s): self._rate(s, now) for s in self.busy}
        known = sorted(r for r in rates.values() if r is not None)
        typical = thief if thief else (known[len(known) // 2] if known else None)

        def time_left(span: Span) -> float:
            rate = rates[id(span)]
            if rate is None:
                rate = typical
            if rate is None:
                return 0.0  # nothing measured yet: the bytes left decide
            return (span.end - span.position) / rate if rate > 0 else math.inf

        candidates = [s for s in self.busy if s.end - s.position >= 2 * _BUFFER]
        victim = max(candidates, key=lambda s: (time_left(s), s.end - s.position), default=None)
        if victim is None:
            return None
        left = victim.end - victim.position
        own = rates[id(victim)]
        if own is None:
            own = typical
        if own is None or not typical:
            if left < STEAL_AT_LEAST:  # nothing measured yet: only a large range is worth it
                return None
            share = 0.5
        else:
            share = own / (own + typical)  # the victim's part: both streams end together
            alone = left / own if own > 0 else math.inf
            if alone - left / (own + typical) < STEAL_GAIN:
                return None  # a new request would save less than it costs
        keep = int(left * share)
        if keep < _BUFFER:
            keep = 0  # less than one read: all of it goes to the thief
        added = self.partial.split_at(victim, victim.position + keep)
        if added is None:
            return None
        if not keep:
            # The victim's blocked read would go on until its buffer is full, at its crawl,
            # for bytes it may no longer write: cut its connection instead.
            self.cut(victim)
        return self._take(added)

    def _take(self, span: Span) -> Span:
        self.busy.append(span)
        self._began[id(span)] = (self.clock(), span.position)
        return span

    def _rate(self, span: Span, now: float) -> float | None:
        """Bytes/s of ``span``'s stream since it was claimed; None while too soon to say."""
        began, position = self._began[id(span)]
        if now - began < STEAL_MEASURE:
            return None
        return (span.position - position) / (now - began)

    def release(self, span: Span) -> None:
        self.busy = [b for b in self.busy if b is not span]
        self._began.pop(id(span), None)


async def _run_spans(ctx: _Context, fast: bool) -> None:
    """Fetch every range of the blob: one stream, then as many as the path rewards."""
    plan = _Plan(ctx.partial, ctx.cut)
    budget = ctx.client.streams
    loop = asyncio.get_running_loop()
    streams: set[asyncio.Future[None]] = set()

    async def stream(span: Span | None) -> None:
        while span is not None:
            await _span_with_retries(ctx, span, fast)
            span = None if ctx.stop.is_set() else plan.claim(span)

    def start(span: Span) -> None:
        task = asyncio.ensure_future(stream(span))
        # Given back when the task ends in any way: also when it is cancelled before its
        # first step, where a `finally` inside it would never run.
        task.add_done_callback(lambda _: budget.give())
        streams.add(task)

    def add() -> bool:
        if not budget.try_take():
            return False
        span = plan.claim()
        if span is None:
            budget.give()
            return False
        start(span)
        return True

    # No growth under --limit-rate: the limit is shared, more streams bring nothing.
    growth = (
        Growth()
        if ctx.may_split
        and ctx.partial.size >= PARALLEL_THRESHOLD
        and budget.cap > 1
        and ctx.client.limiter is None
        else None
    )
    short = ctx.partial.digest.short
    await budget.take()
    first = plan.claim()
    if first is None:
        budget.give()
        return
    start(first)
    received, since, tick = ctx.partial.received(), loop.time(), FIRST_LOOK
    flowing = False
    try:
        while streams:
            done, _ = await asyncio.wait(streams, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                streams.discard(task)
                task.result()  # a stream's failure ends the blob's download
            now = loop.time()
            landed = ctx.partial.received()
            if not flowing:
                # The clock starts with the first byte: an answer slow to come (a long round
                # trip, a redirect to a CDN) says nothing about the path's rate.
                flowing = landed > received
                received, since = landed, now
                continue
            if not streams or now - since < tick:
                continue
            tick = TICK
            rate = (landed - received) / (now - since)
            received, since = landed, now
            if growth is not None and not growth.done and ctx.busy:
                growth.done = True
                log.debug("blob %s: the registry answered 429: no more streams", short)
            elif growth is not None and not growth.done:
                want, why = growth.decide(rate, len(streams), budget.cap - budget.open)
                added = 0
                while added < want and add():
                    added += 1
                if want:
                    why += f" ({added} added, {budget.open} of {budget.cap} streams in use)"
                log.debug("blob %s: %s", short, why)
            if ctx.observe is not None:
                ctx.observe(len(streams), rate)
    except BaseException:
        ctx.abandon()
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        # Their reads were cut: wait (a little) for the threads, so that none is still
        # reading when the pull moves on, starts over or ends.
        await asyncio.to_thread(_join, ctx.threads, JOIN_SECONDS)
        raise
    finally:
        ctx.partial.save()
