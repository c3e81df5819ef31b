"""How many byte streams a pull keeps open, on which connections, and when it adds one.

On loopback one TCP stream fills the link; on the internet each stream is
usually far slower than the link (long round trips, per-connection shaping
at CDNs and proxies), and parallel streams add up. So a blob's download
starts as one stream and :class:`Growth` adds streams while the aggregate
rate keeps rising, and stops adding when it does not.

Streams are counted per client (one pull, or one upstream of the
pull-through cache), not per blob: :class:`StreamBudget` holds
``CAIRN_MAX_STREAMS`` (16 by default) for all blobs together, and a blob's
first stream waits for a free one. :class:`ConnectionPool` keeps the
HTTP/1.1 connections that finished a response cleanly, per origin, for the
next range any stream asks for.

Blob bytes always go over HTTP/1.1, even where the registry speaks HTTP/2
(manifests and the rest use it): parallel ranges multiplexed over one
HTTP/2 connection would share one TCP stream, which is the very limit the
parallel streams are there to get past.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cairn import threads
from cairn.errors import ConfigError
from cairn.registry.origins import WEB_SCHEMES, Origin, origin_of

MAX_STREAMS = 16
"""Streams one pull may have open at once, all blobs together (``CAIRN_MAX_STREAMS``)."""
MAX_STREAMS_LIMIT = 256

FAST_STREAM = 150 << 20
"""Bytes/s one stream may bring before more streams are pointless (loopback, a LAN)."""
RISING = 1.15
"""The aggregate rate must grow at least this much after streams were added to add more."""
GROWTH = 4
"""Each addition multiplies the streams by this: 1, 4, 16 (a ramp of two looks)."""
IDLE_SECONDS = 30.0
"""An idle connection older than this is closed rather than used again."""


def max_streams_from_environment() -> int:
    """``CAIRN_MAX_STREAMS``: a whole number from 1 to 256 (16 when unset)."""
    text = os.environ.get("CAIRN_MAX_STREAMS", "").strip()
    if not text:
        return MAX_STREAMS
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_STREAMS_LIMIT:
        raise ConfigError(
            "CAIRN_MAX_STREAMS must be a whole number from 1 to {limit}, not {text!r}",
            limit=MAX_STREAMS_LIMIT,
            text=text[:40],
        )
    return int(text)


class StreamBudget:
    """The streams a client may have open at once: taken before a stream starts, given back after.

    Used from one event loop. A stream that must run (a blob's first)
    waits with :meth:`take`; one that would only help (growth, stealing)
    asks with :meth:`try_take`, which yields to anybody already waiting.
    """

    def __init__(self, cap: int = MAX_STREAMS) -> None:
        self.cap = cap
        self.open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @staticmethod
    async def run(
        function: Callable[..., None], *args: Any, track: list[threading.Thread] | None = None
    ) -> None:
        """Run a stream's blocking reads in a thread of its own (asyncio's default executor
        has far fewer threads on a small machine); ``track`` is given the thread, so that
        whoever abandons the stream can wait for it.

        A daemon thread that blocks SIGINT: a thread still in a read when the pull ends
        (its connection is cut, but a connect may still be waiting) never holds the
        process's exit, and Ctrl-C always reaches the main thread.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(failure: BaseException | None) -> None:
            if done.done():
                return
            if failure is None:
                done.set_result(None)
            else:
                done.set_exception(failure)

        def work() -> None:
            failure: BaseException | None = None
            try:
                function(*args)
            except BaseException as exc:  # handed to the awaiting task
                failure = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, failure)

        thread = threading.Thread(target=work, name="cairn-stream", daemon=True)
        if track is not None:
            track.append(thread)
        threads.start(thread)
        await done

    def try_take(self) -> bool:
        if self.open < self.cap and not self._waiting:
            self.open += 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            await future  # resolved by give(): its stream is handed over
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give()  # handed a stream, then cancelled: pass it on
            else:  # give() may have dropped the cancelled future already
                with contextlib.suppress(ValueError):
                    self._waiting.remove(future)
            raise

    def give(self) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.open -= 1


def connect(
    url: str, ssl_context: ssl.SSLContext | None, timeout: float = 60.0
) -> tuple[http.client.HTTPConnection, str]:
    """A new ``http.client`` connection to ``url``'s host, and the request target on it."""
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


class ConnectionPool:
    """Idle HTTP/1.1 connections per origin, for the next range request. Safe from threads.

    At most ``keep`` idle connections in all (the oldest goes first), none
    idle longer than ``IDLE_SECONDS`` (servers close theirs; a pull-through
    cache's client lives as long as the server).
    """

    def __init__(self, keep: int = MAX_STREAMS) -> None:
        self.keep = keep
        self.made = 0
        """Connections opened in all (tests read it)."""
        self._idle: deque[tuple[Origin, float, http.client.HTTPConnection]] = deque()
        self._lock = threading.Lock()

    def take(
        self, url: str, ssl_context: ssl.SSLContext | None, timeout: float, fresh: bool = False
    ) -> tuple[http.client.HTTPConnection, str, bool]:
        """A connection to ``url``'s origin, the request target, and whether it was used before."""
        origin = origin_of(url)
        found = None
        with self._lock:
            stale = self._expire()
            if not fresh:
                for entry in reversed(self._idle):  # the most recently used first
                    if entry[0] == origin:
                        self._idle.remove(entry)
                        found = entry[2]
                        break
        _close(stale)
        if found is not None:
            return found, connect(url, ssl_context)[1], True
        conn, target = connect(url, ssl_context, timeout)
        with self._lock:
            self.made += 1
        return conn, target, False

    def give(self, url: str, conn: http.client.HTTPConnection) -> None:
        """Keep ``conn`` (its last response was read to the end) for the next request."""
        with self._lock:
            self._idle.append((origin_of(url), time.monotonic(), conn))
            stale = self._expire()
            while len(self._idle) > self.keep:
                stale.append(self._idle.popleft()[2])
        _close(stale)

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        with self._lock:
            idle = [conn for _, _, conn in self._idle]
            self._idle.clear()
        _close(idle)

    def _expire(self) -> list[http.client.HTTPConnection]:
        """Take out the connections idle too long (the lock held); the caller closes them."""
        oldest = time.monotonic() - IDLE_SECONDS
        stale = []
        while self._idle and self._idle[0][1] < oldest:
            stale.append(self._idle.popleft()[2])
        return stale


def _close(conns: list[http.client.HTTPConnection]) -> None:
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.close()


@dataclass
class Growth:
    """When a blob's download adds streams: while the aggregate rate keeps rising.

    Shown the aggregate rate every look: the first time, one stream slower
    than ``fast`` gets company (``GROWTH`` times the streams); after that,
    streams are added again only if the last addition raised the rate by
    ``RISING`` or more. Once it did not, or one stream was fast, it is done.
    """

    fast: float = FAST_STREAM
    rising: float = RISING
    factor: int = GROWTH
    rate_before: float | None = None
    """The aggregate rate when streams were last added."""
    streams_before: int = 0
    done: bool = False

    def decide(self, rate: float, streams: int, room: int) -> tuple[int, str]:
        """How many streams to add now (``room``: how many the budget has free), and why
        (said with ``CAIRN_DEBUG=1``)."""
        shown = f"{streams} stream{'s' if streams != 1 else ''} at {_rate(rate)}"
        if self.done or streams <= 0:
            return 0, ""
        if rate <= 0:
            # Nothing came since the last look (answers still on their way, or a stall):
            # no evidence either way, so nothing is decided.
            return 0, f"{shown}: nothing came since the last look, waiting"
        if self.rate_before is None:
            if rate >= self.fast * streams:
                self.done = True
                return 0, f"{shown}: fast enough, no more streams"
            return self._add(rate, streams, f"{shown}, below {_rate(self.fast)} a stream", room)
        if streams < self.streams_before:  # streams ended: the blob is nearly in
            self.done = True
            return 0, f"{shown}: streams are ending, no more"
        if streams == self.streams_before:  # none could be added last time: try again
            return self._add(self.rate_before, streams, f"{shown}, waiting to add", room)
        if rate >= self.rate_before * self.rising:
            gain = rate / max(1.0, self.rate_before)
            return self._add(rate, streams, f"{shown}, {gain:.2f}x of {self.streams_before}", room)
        self.done = True
        return 0, (
            f"{shown}, not above {self.streams_before}'s {_rate(self.rate_before)}"
            f" by {self.rising:.2f}x: the path gives no more, no more streams"
        )

    def _add(self, rate: float, streams: int, why: str, room: int) -> tuple[int, str]:
        self.rate_before = rate
        self.streams_before = streams
        if room <= 0:
            return 0, f"{why}; every stream of the budget is in use (CAIRN_MAX_STREAMS)"
        add = min(room, streams * (self.factor - 1))
        return add, f"{why}: adding {add}"


def _rate(rate: float) -> str:
    return f"{rate / 1e6:.1f} MB/s"
