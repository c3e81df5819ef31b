"""Blob bytes from one registry to another, streamed: read into a few recycled buffers on
one thread, hashed and sent on another; never stored, never held whole."""

from __future__ import annotations

import asyncio
import http.client
import queue
import threading
from collections.abc import AsyncIterator, Callable

import httpx

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
    RegistryClient,
    ascii_digits,
    raw_chunks,
)
from cairn.registry.fetch import connect, start_request

_BUFFER = 1 << 20
_BUFFERS = 6


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
            try:
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
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
        error: BaseException | None = None
        try:
            left = self.descriptor.size
            while left and not pipe.stop.is_set():
                buffer = pipe.free.get()
                count = self._fast_response.readinto(memoryview(buffer)[: min(_BUFFER, left)])
                if not count:
                    pipe.free.put(buffer)
                    raise TransferError(
                        "blob {digest}: the source's body ended {left} bytes early",
                        digest=self.descriptor.digest,
                        left=left,
                    )
                left -= count
                pipe.full.put((buffer, count))
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
        try:
            async for chunk in raw_chunks(self._response, _BUFFER):
                count += len(chunk)
                if count > self.descriptor.size:
                    break
                yield chunk
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
