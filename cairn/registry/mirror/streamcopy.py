"""Blob bytes from one registry to another, streamed: read into a few recycled buffers on
one thread, hashed and sent on another; never stored, never held whole.

A source slower than the policy's minimum rate for its stall window
(``CAIRN_STALL_SECONDS``), headers or body, fails the copy, as it fails a pull:
a watchdog thread shuts its socket (the reading thread, blocked in a read,
never looks at the clock). Only time spent waiting on the source counts, not
time the reader waits for the destination to take what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx

from cairn import threads
from cairn.errors import (
    RegistryError,
    RemoteNotFoundError,
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
from cairn.registry.fetch import start_request
from cairn.registry.streams import connect

_BUFFER = 1 << 20
_BUFFERS = 6
_READ = 64 << 10
"""The most one read from the source asks for: the watchdog sees bytes as each returns."""


# -- the source's pace ----------------------------------------------------------------


class _Watchdog:
    """Shuts the source's socket when waiting on it brings less than the floor.

    The reading thread says when it waits on the source (:meth:`waiting`) and
    what each read brought (:meth:`got`); every ``stall_seconds`` of such
    waiting must bring ``min_rate`` bytes a second, or the socket is shut down
    and ``stalled`` says why.
    """

    def __init__(self, client: RegistryClient) -> None:
        self.window = client.retry.stall_seconds
        self.floor = client.retry.min_rate
        self.conn: http.client.HTTPConnection | None = None
        self.stalled: str | None = None
        self._lock = threading.Lock()
        self._since: float | None = None
        self._waited = 0.0
        self._count = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threads.start(threading.Thread(target=self._watch, daemon=True))

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        with self._lock:
            self._since = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                if self._since is not None:
                    self._waited += time.monotonic() - self._since
                self._since = None

    def got(self, count: int) -> None:
        with self._lock:
            self._count += count

    def _watch(self) -> None:
        while not self._done.wait(max(0.05, self.window / 4)):
            with self._lock:
                now = time.monotonic()
                waited = self._waited + (now - self._since if self._since is not None else 0.0)
                if waited < self.window:
                    continue
                if self._count >= self.floor * waited:  # a window at the floor: a fresh one
                    self._waited, self._count = 0.0, 0
                    self._since = now if self._since is not None else None
                    continue
                self.stalled = f"{self._count} bytes in {waited:.0f} s, under {self.floor} bytes/s"
                sock = self.conn.sock if self.conn is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return

    def error(self, digest: object) -> TransferError:
        return TransferError(
            "blob {digest}: the source stalled: {problem}", digest=digest, problem=self.stalled
        )


# -- bytes from the source ------------------------------------------------------------


class _End:
    """The reading thread's last word: the error, if it failed."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class SourceStream:
    """One blob's bytes from the source registry, as a GET opened before the upload starts.

    On the fast path (``http.client`` in threads) a reading thread fills
    recycled buffers and hands them over; the consuming thread sends or writes
    them and hashes them. Otherwise the bytes go through httpx.
    """

    def __init__(
        self, client: RegistryClient, repository: str, descriptor: Descriptor, fast: bool
    ) -> None:
        self.client = client
        self.repository = repository
        self.descriptor = descriptor
        self.hasher = descriptor.digest.hasher()
        self.fast = fast
        self._conn: http.client.HTTPConnection | None = None
        self._fast_response: http.client.HTTPResponse | None = None
        self._response: httpx.Response | None = None
        self._watchdog = _Watchdog(client)

    @property
    def scope(self) -> str:
        return f"repository:{self.repository}:pull"

    @property
    def url(self) -> str:
        return self.client.url(f"/v2/{self.repository}/blobs/{self.descriptor.digest}")

    async def open(self) -> None:
        """Send the GET and check its status: a missing blob fails before any upload."""
        if self.fast and not self.client.known(self.scope):
            await self.client.blob_size(self.repository, str(self.descriptor.digest))
        if self.fast:
            self._watchdog.start()
            self._conn, self._fast_response = await asyncio.to_thread(self._open_fast)
            return
        self._response = await self.client.request(
            "GET", self.url, scope=self.scope, headers={"Accept-Encoding": "identity"}, stream=True
        )
        self._check(self._response.status_code, self._response.headers.get("Content-Length"))

    def _open_fast(self) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        url = self.url
        headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        credential = self.client.authorization(self.scope)
        if credential:
            headers["Authorization"] = credential
        ssl_context = self.client.http1_ssl_context()
        for _ in range(10):
            conn, target = connect(
                url, ssl_context, timeout=min(60.0, self.client.retry.stall_seconds)
            )
            self._watchdog.conn = conn
            try:
                try:
                    with self._watchdog.waiting():  # a source may drip its headers too
                        conn.request("GET", target, headers=headers)
                        response = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    if self._watchdog.stalled is not None:
                        raise self._watchdog.error(self.descriptor.digest) from None
                    raise
                location = response.getheader("Location")
                if response.status in REDIRECTS and location:
                    following = self.client.follow(url, location)
                    if not self.client.at_origin(following):
                        headers.pop("Authorization", None)
                    url = following
                    conn.close()
                    continue
                self._check(response.status, response.getheader("Content-Length"))
                return conn, response
            except BaseException:
                conn.close()
                raise
        raise RegistryError(
            "too many redirects fetching blob {digest}", digest=self.descriptor.digest
        )

    def _check(self, status: int, length: str | None) -> None:
        digest = self.descriptor.digest
        if status == 404:
            raise RemoteNotFoundError(
                "blob {digest} is not in {repository}",
                digest=digest,
                repository=self.repository,
                status=404,
            )
        if status != 200:
            if status >= 500 or status == 429:  # worth another try
                raise TransferError("blob {digest}: HTTP {status}", digest=digest, status=status)
            raise RegistryError("blob {digest}: HTTP {status}", digest=digest, status=status)
        if length is not None and ascii_digits(length) and int(length) != self.descriptor.size:
            raise RegistryError(
                "blob {digest}: the source sends {length} bytes, the manifest says {size}",
                digest=digest,
                length=length,
                size=self.descriptor.size,
            )

    def _read_into(self, pipe: Pipe) -> None:
        """The reading thread: fill buffers until the blob's size is in."""
        assert self._fast_response is not None
        response = self._fast_response
        watchdog = self._watchdog
        error: BaseException | None = None
        try:
            left = self.descriptor.size
            while left and not pipe.stop.is_set():
                buffer = pipe.free.get()  # waiting on the destination: no stall
                view = memoryview(buffer)
                filled = 0
                want = min(_BUFFER, left)
                try:
                    while filled < want:
                        with watchdog.waiting():
                            count = response.readinto(view[filled : min(want, filled + _READ)])
                        if not count:
                            break
                        watchdog.got(count)
                        filled += count
                except (OSError, http.client.HTTPException):
                    if watchdog.stalled is None:
                        raise
                if watchdog.stalled is not None:
                    pipe.free.put(buffer)
                    raise watchdog.error(self.descriptor.digest)
                if filled:
                    left -= filled
                    pipe.full.put((buffer, filled))
                if filled < want:
                    if not filled:
                        pipe.free.put(buffer)
                    raise TransferError(
                        "blob {digest}: the source's body ended {left} bytes early",
                        digest=self.descriptor.digest,
                        left=left,
                    )
        except BaseException as exc:
            error = exc
        finally:
            pipe.full.put(_End(error))

    async def pump(self, consume: Callable[[memoryview], None]) -> None:
        """Pass every byte, in order, to ``consume`` (run in a thread), hashing it."""

        def each(view: memoryview) -> None:
            consume(view)
            self.hasher.update(view)

        if not self.fast:
            async for chunk in self._chunks():
                await asyncio.to_thread(each, memoryview(chunk))
            return
        pipe = Pipe()
        reading = asyncio.ensure_future(asyncio.to_thread(self._read_into, pipe))
        try:
            await asyncio.to_thread(pipe.drain, each)
        finally:
            pipe.stop.set()
            await reading
            self.close()

    async def _chunks(self) -> AsyncIterator[bytes]:
        assert self._response is not None
        count = 0
        pace = Pace(self.client.retry)
        held = bytearray()
        try:
            async for chunk in raw_chunks(self._response):  # as received: paced
                try:
                    pace.add(len(chunk))
                except Stalled as exc:
                    raise TransferError(
                        "blob {digest}: the source stalled: {problem}",
                        digest=self.descriptor.digest,
                        problem=str(exc),
                    ) from None
                count += len(chunk)
                if count > self.descriptor.size:
                    break
                held += chunk
                if len(held) >= _BUFFER:
                    yield bytes(held)
                    held.clear()
            if held and count <= self.descriptor.size:
                yield bytes(held)
        finally:
            await self._response.aclose()
        if count != self.descriptor.size:
            raise TransferError(
                "blob {digest}: the source sent {count} bytes of {size}",
                digest=self.descriptor.digest,
                count=count,
                size=self.descriptor.size,
            )

    async def upload(
        self, dest: RegistryClient, location: str, scope: str, progress: Callable[[int], None]
    ) -> str:
        """Send the whole blob in one PATCH to the upload session; the session's next URL."""
        size = self.descriptor.size
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if size:
            headers["Content-Range"] = f"0-{size - 1}"
        what = Phrase("uploading {digest}", digest=self.descriptor.digest)
        if not self.fast:

            async def body() -> AsyncIterator[bytes]:
                async for chunk in self._chunks():
                    self.hasher.update(chunk)
                    progress(len(chunk))
                    yield chunk

            response = await dest.request(
                "PATCH", location, scope=scope, headers=headers, content=body(), replayable=False
            )
        else:
            credential = dest.authorization(scope) if dest.at_origin(location) else None
            if credential:
                headers["Authorization"] = credential
            conn, target = connect(location, dest.http1_ssl_context())
            try:
                await asyncio.to_thread(start_request, conn, "PATCH", target, headers)

                def send(view: memoryview) -> None:
                    assert conn.sock is not None
                    conn.sock.sendall(view)
                    progress(len(view))

                await self.pump(send)
                answer = await asyncio.to_thread(conn.getresponse)
                status, raw = answer.status, answer.getheaders()
                said = await asyncio.to_thread(answer.read, 64 << 10)
            finally:
                conn.close()
            response = httpx.Response(status, headers=raw, content=said)
        dest.check(response, str(what), (202,))
        return dest.follow(location, response.headers.get("Location", location))

    def close(self) -> None:
        self._watchdog.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Pipe:
    """Buffers passed from the reading thread to the consuming one, and back."""

    def __init__(self) -> None:
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(_BUFFERS):
            self.free.put(bytearray(_BUFFER))
        self.full: queue.Queue[tuple[bytearray, int] | _End] = queue.Queue()
        self.stop = threading.Event()

    def drain(self, consume: Callable[[memoryview], None]) -> None:
        """Consume buffers until the reader's end; a failure stops the reader."""
        failure: BaseException | None = None
        while True:
            item = self.full.get()
            if isinstance(item, _End):
                if failure is not None:
                    raise failure
                if item.error is not None:
                    raise item.error
                return
            buffer, count = item
            if failure is None:
                try:
                    consume(memoryview(buffer)[:count])
                except BaseException as exc:
                    failure = exc
                    self.stop.set()
            self.free.put(buffer)
