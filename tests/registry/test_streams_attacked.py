"""Adaptive parallel streams (issue 18) against what an attack on them proved.

Each test forces its interleaving with events set by the hostile registry's hooks (and by
observing wrappers around cairn's own functions), never by timing alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import pytest
from aiohttp import web

from cairn.blobstore import Digest
from cairn.blobstore.partial import PartialBlob, Span
from cairn.blobstore.store import BlobStore
from cairn.errors import AuthenticationError
from cairn.manifests.manifest import Descriptor
from cairn.manifests.models import Models
from cairn.manifests.reference import parse_reference
from cairn.registry import fetch
from cairn.registry.client import RegistryClient, RetryPolicy
from cairn.registry.pull import pull
from cairn.registry.streams import Growth, StreamBudget
from tests.conftest import Runner, cairn_env, modelfile
from tests.ggufmaker import write_gguf
from tests.registry.hostile import HostileRegistry, digest
from tests.throttle import Throttle

MiB = 1 << 20
FAST = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)
WAIT = 60.0
"""The longest a hook waits for the client to reach a point (never reached: the test fails)."""


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    server = HostileRegistry()
    yield server
    server.stop()


@pytest.fixture
def thin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small blobs behave as large ones do: they grow streams and get stolen from."""
    monkeypatch.setattr(fetch, "PARALLEL_THRESHOLD", MiB)
    monkeypatch.setattr(fetch, "STEAL_AT_LEAST", 2 * MiB)


def blob_get(hostile: HostileRegistry, request: web.Request, least: int = MiB) -> bytes | None:
    """The blob a GET asks for, when it is one of at least ``least`` bytes."""
    if request.method != "GET" or "/blobs/" not in request.path:
        return None
    data = hostile.blobs.get(request.path.rpartition("/")[2])
    return data if data is not None and len(data) >= least else None


def asked(request: web.Request, data: bytes) -> tuple[int, int]:
    wanted = request.headers.get("Range")
    if not wanted:
        return 0, len(data)
    first, _, last = wanted.removeprefix("bytes=").partition("-")
    return int(first), int(last) + 1


async def drip(
    request: web.Request,
    data: bytes,
    start: int,
    end: int,
    rate: float,
    ranged: bool,
    chunk: int = 1 << 16,
) -> web.StreamResponse:
    """``data[start:end]`` at ``rate`` bytes/s (206 when ``ranged``), until the client hangs up."""
    response = web.StreamResponse(status=206 if ranged else 200)
    response.content_length = end - start
    if ranged:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
    await response.prepare(request)
    try:
        for offset in range(start, end, chunk):
            await response.write(data[offset : min(end, offset + chunk)])
            await asyncio.sleep(chunk / rate)
    except (ConnectionError, RuntimeError):
        pass
    return response


def pull_in_process(hostile: HostileRegistry, store: Path, max_streams: int = 16) -> Models:
    models = Models(store)

    async def go() -> None:
        async with RegistryClient(
            hostile.host, insecure=True, retry=FAST, max_streams=max_streams
        ) as client:
            await pull(models, parse_reference(f"{hostile.host}/lab/model:1"), client)

    asyncio.run(go())
    return models


def the_blob(models: Models, data: bytes) -> bytes:
    return models.blobs.path(Digest.parse(digest(data))).read_bytes()


# -- 1. an answer's headers that arrive after the first look restart the blob from zero -------


@pytest.mark.usefixtures("thin")
def test_slow_headers_of_the_first_request_do_not_throw_the_download_away(
    hostile: HostileRegistry, store: Path
) -> None:
    """The first request of a blob asks for all of it (no Range). On a long path its answer's
    headers come after the controller's first look. Found by the attack: that look saw a rate
    of 0 and added streams that stole from the first range; the honest 200 then arrived for a
    range that was no longer the whole blob, was called ``_RangeIgnored``, and the blob started
    over from zero as one stream that never grew. Now the growth clock starts at the first
    byte (no stream is added before an answer came), and a 200 is right for any range that
    starts at byte 0."""
    weights = os.urandom(24 * MiB)
    hostile.add_model("lab/model", "1", [weights])
    order: list[str] = []

    async def long_path(request: web.Request) -> web.StreamResponse | None:
        data = blob_get(hostile, request)
        if data is None:
            return None
        start, end = asked(request, data)
        if "Range" in request.headers:
            order.append("ranged")
            return await drip(request, data, start, end, 8e6, ranged=True)
        order.append("plain")
        await asyncio.sleep(1.0)  # the headers of the first answer are a long round trip late
        order.append("answered")
        return await drip(request, data, start, end, 8e6, ranged=False)

    hostile.hook(long_path)
    models = pull_in_process(hostile, store, max_streams=4)
    assert the_blob(models, weights) == weights
    assert order[:2] == ["plain", "answered"], order  # nobody joined before bytes came
    assert order.count("plain") == 1, "the blob was started over from zero"
    assert "ranged" in order  # and the path still got its streams after that


def test_a_real_registry_behind_a_long_round_trip_sends_the_blob_once(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    """The same with a real ``cairn pull`` and docker-registry behind a link whose answers
    start 1 s after each request (a long path, a redirect to a CDN): every byte of the 72 MiB
    blob should cross the link about once, not once for the abandoned streams and again for
    the single stream that starts over from zero."""
    gguf = write_gguf(
        tmp_path / "big.gguf", tensors=[("w", (1024, 1024, 18))], fill=os.urandom(1 << 16)
    )
    modelfile(tmp_path, f"FROM {gguf}\n", "MF")
    cairn("create", "big:1", "-f", str(tmp_path / "MF"), "--quiet")
    cairn("push", "big:1", f"{registry}/lab/big:1", "--insecure", "-q")
    size = gguf.stat().st_size
    link = Throttle(int(registry.rpartition(":")[2]), rate=20e6, first_byte=1.0).start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cairn", "pull", "-q", "--insecure", f"{link.host}/lab/big:1"],
            env=cairn_env(tmp_path / "fresh"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        link.stop()
    assert result.returncode == 0, result.stderr
    assert link.bytes_down < size + 8 * MiB, f"{link.bytes_down} bytes crossed for {size}"


# -- 2. a stream of an abandoned round writes into the blob after its bytes were hashed -------


def blocked_reading(thread_id: int) -> bool:
    """Whether the thread waits in a socket read (its innermost frame is a ``readinto``)."""
    frame = sys._current_frames().get(thread_id)
    return frame is not None and frame.f_code.co_name == "readinto"


@pytest.mark.usefixtures("thin")
def test_a_stream_of_an_abandoned_round_never_writes_bytes_the_hash_already_followed(
    hostile: HostileRegistry, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one range is answered with a 200 (``_RangeIgnored``), ``_run_spans`` cancels its
    stream tasks, but not their threads: a thread blocked in ``readinto`` goes on, and
    ``_fetch_into`` then *replaces* ``ctx.stop`` with a fresh, unset Event, so the old thread
    reads its old range to the end and ``write_at``s it into the file the new round is
    writing and hashing. Bytes it writes behind the hasher are never read again: the store
    gets them under the right digest."""
    weights = os.urandom(24 * MiB)
    hostile.add_model("lab/model", "1", [weights])
    where: dict[str, int] = {}
    old_span: list[Span] = []
    first_write, hashed_past, release, evil_written = (threading.Event() for _ in range(4))
    plain: list[int] = []

    write_at = PartialBlob.write_at

    def watched_write(self: PartialBlob, span: Span, data: memoryview | bytes) -> int:
        if old_span and span is old_span[0]:
            try:  # the old round's stream, after the new round began
                return write_at(self, span, data)
            finally:
                evil_written.set()
        count = write_at(self, span, data)
        if "old" in where and span.start == where["old"] and not old_span:
            old_span.append(span)
            where["thread"] = threading.get_ident()
            first_write.set()
        return count

    hash_prefix = PartialBlob.hash_prefix

    def watched_hash(self: PartialBlob, hasher: Any, start: int, end: int) -> None:
        hash_prefix(self, hasher, start, end)
        if "old" in where and end >= where["old"] + 2 * MiB and plain[1:]:
            hashed_past.set()

    monkeypatch.setattr(PartialBlob, "write_at", watched_write)
    monkeypatch.setattr(PartialBlob, "hash_prefix", watched_hash)

    async def hook(request: web.Request) -> web.StreamResponse | None:
        data = blob_get(hostile, request)
        if data is None:
            return None
        start, end = asked(request, data)
        if "Range" in request.headers and "old" not in where:
            where["old"] = start  # the first stream to join: one MiB, then it waits
            response = web.StreamResponse(status=206)
            response.content_length = end - start
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            await response.prepare(request)
            await response.write(data[start : start + MiB])
            await asyncio.to_thread(release.wait, WAIT)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write(os.urandom(MiB))  # not the blob's bytes
                await asyncio.to_thread(evil_written.wait, 5)
            return response
        if "Range" in request.headers:
            # Another stream that joins is answered with the whole blob (200): the registry
            # "ignores Range", and the round starts over, once the first joiner waits in its
            # next read.
            await asyncio.to_thread(first_write.wait, WAIT)
            for _ in range(int(WAIT * 100)):
                if blocked_reading(where["thread"]):
                    break
                await asyncio.sleep(0.01)
            return web.Response(body=data)
        plain.append(start)
        if len(plain) == 1:
            return await drip(request, data, start, end, 4e6, ranged=False)
        # The round started over: all but the last bytes, then the old stream's turn (an old
        # stream cut when its round was given up has none: the wait runs out).
        response = web.StreamResponse(status=200)
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) - (1 << 16)])
        await asyncio.to_thread(hashed_past.wait, WAIT)
        release.set()
        await asyncio.to_thread(evil_written.wait, 5)
        await response.write(data[len(data) - (1 << 16) :])
        return response

    hostile.hook(hook)
    models = pull_in_process(hostile, store, max_streams=3)
    assert len(plain) == 2  # the round was started over
    stored = the_blob(models, weights)
    assert hashlib.sha256(stored).hexdigest() == digest(weights).removeprefix("sha256:"), (
        "the store holds a blob whose bytes do not hash to its name"
    )


# -- 3. the streams of a failed blob go on reading: a process that cannot exit, a client
#       whose threads are all taken -------------------------------------------------------


@dataclass
class Crawlers:
    """Blob GETs of the hostile registry: the first request of each blob runs until a second
    stream joins it, then breaks off; the joining streams (ranged) crawl at ``rate`` (above
    the stall floor: never a stall); any request of the blob after the break is refused (403,
    which ends it)."""

    hostile: HostileRegistry
    rate: float = 4096.0
    joined: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)
    fail: bool = True
    """False: the first request goes on (slowly) after a stream joined it."""
    crawling: int = 0
    sent: int = 0
    """Chunks the crawling streams sent."""
    over: threading.Event = field(default_factory=threading.Event)
    small: threading.Event = field(default_factory=threading.Event)
    """Set when a blob under a MiB is asked for."""

    async def __call__(self, request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and "/blobs/" in request.path:
            name = request.path.rpartition("/")[2]
            if name in self.hostile.blobs and len(self.hostile.blobs[name]) < MiB:
                self.small.set()
        data = blob_get(self.hostile, request)
        if data is None:
            return None
        name = request.path.rpartition("/")[2]
        start, end = asked(request, data)
        if name in self.broken:
            return web.Response(status=403)
        if "Range" in request.headers:
            self.joined.add(name)
            return await self.crawl(request, data, start, end)
        response = web.StreamResponse(status=200)
        response.content_length = end - start
        await response.prepare(request)
        offset = start
        while (name not in self.joined or not self.fail) and offset < end:
            if self.over.is_set():
                break
            await response.write(data[offset : offset + (1 << 16)])
            offset += 1 << 16
            await asyncio.sleep(0.02)
        self.broken.add(name)
        assert request.transport is not None
        request.transport.close()
        return response

    async def crawl(
        self, request: web.Request, data: bytes, start: int, end: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=206)
        response.content_length = end - start
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        await response.prepare(request)
        self.crawling += 1
        try:
            step = int(self.rate) // 4
            for offset in range(start, end, step):
                if self.over.is_set():
                    break
                await response.write(data[offset : min(end, offset + step)])
                self.sent += 1
                await asyncio.sleep(0.25)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.crawling -= 1
        return response


@pytest.mark.parametrize("end", ["403", "ctrl-c"])
def test_a_failed_pull_exits_while_another_stream_crawls(
    end: str, hostile: HostileRegistry, store: Path
) -> None:
    """A range answered 403 ends the pull (or the user presses Ctrl-C), and ``cairn pull``
    says so, but the process does not exit: ``_run_spans`` cancelled the other streams'
    tasks, not their threads, and the interpreter joins the ``StreamBudget`` executor's
    (non-daemon) threads at exit. A thread blocked in ``readinto`` of a 1 MiB buffer at
    4 KiB/s would return after some 256 s; the watchdog cuts it after its window (30 s by
    default, ``CAIRN_STALL_SECONDS``, more on a slow link), and only then does it see
    ``ctx.stop`` and the process exit."""
    weights = os.urandom(64 * MiB)  # fetch.PARALLEL_THRESHOLD: a blob that grows streams
    hostile.add_model("lab/model", "1", [weights])
    crawlers = Crawlers(hostile, fail=end == "403")
    hostile.hook(crawlers)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "pull", "--insecure", f"{hostile.host}/lab/model:1"],
        env=cairn_env(store),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    guard = threading.Timer(300, proc.kill)  # a test that cannot hang the suite
    guard.start()
    try:
        assert proc.stderr is not None
        said = ""
        if end == "ctrl-c":
            while crawlers.sent < 8 and proc.poll() is None:  # the crawling reads are under way
                threading.Event().wait(0.05)
            proc.send_signal(signal.SIGINT)
        for line in proc.stderr:  # the pull has ended once it says so
            said += line
            if line.startswith(("Error:", "Interrupted")):
                break
        assert ("access denied" if end == "403" else "Interrupted") in said, said
        assert crawlers.crawling  # the joining stream is still being read from
        try:
            # An exit takes well under a second; the stall watchdog cuts the crawling read
            # after its 30 s window (CAIRN_STALL_SECONDS): then, and only then, it exits.
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        assert code == (1 if end == "403" else 130), (
            f"cairn pull said {said.splitlines()[-1]!r} and then did not exit:"
            " a stream thread still reads"
        )
    finally:
        guard.cancel()
        crawlers.over.set()
        proc.kill()
        proc.wait()


def streams_reading() -> int:
    """Threads of this process inside ``fetch._fast_span`` (reading a range) right now."""
    count = 0
    for frame in sys._current_frames().values():
        probe: FrameType | None = frame
        while probe is not None:
            if probe.f_code.co_name == "_fast_span":
                count += 1
                break
            probe = probe.f_back
    return count


@pytest.mark.usefixtures("thin")
def test_a_failed_blob_leaves_no_stream_reading_on_a_client_that_lives_on(
    hostile: HostileRegistry, store: Path
) -> None:
    """The pull-through cache keeps one client per upstream for its life. A blob that fails
    there gives every stream back to the ``StreamBudget`` (``budget.open`` is 0) while the
    threads of its other streams still hold their connections and the budget's executor
    threads: with ``cap`` of them taken, the next blobs' streams queue behind them (up to
    the stall window, 30 s, or their whole range once ``ctx.stop`` was replaced)."""
    weights = os.urandom(8 * MiB)
    hostile.add_model("lab/model", "1", [weights])
    crawlers = Crawlers(hostile)
    hostile.hook(crawlers)
    descriptor = Descriptor("application/octet-stream", Digest.parse(digest(weights)), 8 * MiB)

    async def go() -> tuple[int, int]:
        async with RegistryClient(hostile.host, insecure=True, retry=FAST, max_streams=4) as client:
            with pytest.raises(AuthenticationError):
                await fetch.fetch_blob(client, "lab/model", descriptor, BlobStore(store))
            return client.streams.open, streams_reading()

    try:
        open_, reading = asyncio.run(go())
    finally:
        crawlers.over.set()
    assert open_ == 0
    assert reading == 0, f"{reading} stream(s) of the failed blob still read, outside the budget"


# -- 4. an honest slow stream is a stall to the watchdog; with many streams, the pull fails -----


@pytest.mark.usefixtures("thin")
def test_honest_streams_far_above_the_floor_are_not_stalls(
    hostile: HostileRegistry, store: Path
) -> None:
    """The watchdog measures ``span.position``, which moves only when ``readinto`` has filled
    its 1 MiB buffer: a stream slower than 1 MiB per ``stall_seconds`` window (35 KB/s with
    the default 30 s) shows no progress at all, is cut as stalled and counted as a failure of
    the blob. Each of the blob's streams does that once a window, so with more streams
    ``blob_failures`` (20) runs out sooner: here 4 streams at 100 KB/s each (100 times the
    1 KiB/s floor; the window shortened to 1 s, as ``CAIRN_STALL_SECONDS`` does) fail a
    10-second download after about 5."""
    weights = os.urandom(4 * MiB)
    hostile.add_model("lab/model", "1", [weights])

    async def honest_but_slow(request: web.Request) -> web.StreamResponse | None:
        data = blob_get(hostile, request)
        if data is None:
            return None
        start, end = asked(request, data)
        return await drip(request, data, start, end, 100e3, "Range" in request.headers, 8192)

    hostile.hook(honest_but_slow)
    models = Models(store)
    policy = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05, stall_seconds=1.0)

    async def go() -> None:
        async with RegistryClient(hostile.host, insecure=True, retry=policy, max_streams=4) as c:
            await pull(models, parse_reference(f"{hostile.host}/lab/model:1"), c)

    asyncio.run(go())
    assert the_blob(models, weights) == weights


# -- 5. the connection pool keeps up to CAIRN_MAX_STREAMS idle connections per origin, for
#       as many origins as redirects lead to --------------------------------------------------


class _Ranged(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    blobs: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        data = self.blobs[self.path.rpartition("/")[2]]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_redirects_to_many_origins_do_not_pile_up_idle_connections(
    hostile: HostileRegistry, store: Path
) -> None:
    """Each layer is redirected to storage on another origin (a port of its own). Every range
    read to its end leaves its keep-alive connection in ``ConnectionPool``, which keeps
    ``keep`` (the stream cap) per origin and has no bound across origins, and never lets one
    go while the client lives: a client of the pull-through cache (one per upstream, for the
    server's life) gathers open sockets for every origin it was ever sent to."""
    layers = [os.urandom(100_000) for _ in range(8)]
    hostile.add_model("lab/model", "1", layers)
    servers = []
    _Ranged.blobs = {digest(layer): layer for layer in layers}
    for _ in layers:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ranged)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    where = {digest(layer): s.server_address[1] for layer, s in zip(layers, servers, strict=True)}

    async def to_storage(request: web.Request) -> web.StreamResponse | None:
        port = where.get(request.path.rpartition("/")[2])
        if request.method != "GET" or "/blobs/" not in request.path or port is None:
            return None
        return web.Response(
            status=307, headers={"Location": f"http://127.0.0.1:{port}{request.path}"}
        )

    hostile.hook(to_storage)
    models = Models(store)

    async def go() -> int:
        async with RegistryClient(hostile.host, insecure=True, retry=FAST, max_streams=2) as c:
            await pull(models, parse_reference(f"{hostile.host}/lab/model:1"), c)
            return c.connections.idle()

    try:
        held = asyncio.run(go())
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert all(the_blob(models, layer) == layer for layer in layers)
    assert held <= 2, f"{held} idle connections kept open with CAIRN_MAX_STREAMS=2"


# -- 6. small things in the budget and the growth rule ----------------------------------------


def test_a_waiter_cancelled_while_a_stream_is_given_back_raises_cancelled_error() -> None:
    """``StreamBudget.take``: a waiter cancelled after ``give()`` skipped (and popped) its
    cancelled future calls ``self._waiting.remove(future)`` on a future no longer there:
    ValueError instead of CancelledError. ``fetch_blob`` then takes the blob's failure for
    a non-resumable one and discards a partial that a cancelled pull (Ctrl-C) would keep."""

    async def go() -> None:
        budget = StreamBudget(1)
        await budget.take()
        waiter = asyncio.ensure_future(budget.take())
        await asyncio.sleep(0)
        waiter.cancel()  # its future is cancelled now; the task runs its except clause later
        budget.give()  # a stream of another blob ends in the same turn of the loop
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.open == 0

    asyncio.run(go())


def test_streams_are_not_added_while_no_byte_has_come() -> None:
    """``Growth.decide``: "added again only if the last addition raised the rate by 15 %",
    but 0 >= 0 * 1.15, so a download that has not received a byte goes 1, 4, 16 streams
    within two looks (0.3 s): every one a request on a path that answers nothing yet."""
    growth = Growth()
    add, why = growth.decide(0.0, 1, room=15)
    assert add == 0 and "nothing came" in why  # no evidence yet: nothing is decided
    assert growth.decide(5e6, 1, room=15)[0] == 3  # the first bytes: company for a slow stream
    add, why = growth.decide(0.0, 4, room=12)
    assert add == 0, why
