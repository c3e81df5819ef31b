"""A thin link on 127.0.0.1: a TCP proxy that caps each connection's rate, and can add latency.

    python -m tests.throttle LISTEN_PORT TARGET_PORT BYTES_PER_SEC [--first-byte DELAY]

Each connection's bytes from the target to the client are paced at
``BYTES_PER_SEC`` (0: no cap), as per-connection shaping at CDNs and
proxies does, so one TCP stream is slow and parallel streams add up. The
pace starts again with each request (bytes from the client), so a
connection that sat idle cannot burst. ``--first-byte DELAY`` holds each
answer's first byte back that many seconds (a round trip's worth of
waiting per request). The same as ``../shared/tools/throttle_proxy.py``,
with the latency and the counters the tests read (:class:`Throttle` runs
it in a thread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time


class Throttle:
    """The proxy, on its own event loop in a thread (for tests), or run by :func:`main`."""

    def __init__(self, target_port: int, rate: float, first_byte: float = 0.0) -> None:
        self.target_port = target_port
        self.rate = rate
        self.first_byte = first_byte
        self.port = 0
        self.connections = 0
        """Connections accepted in all."""
        self.open = 0
        self.most_open = 0
        """The most connections open at once."""
        self.bytes_down = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # -- in a thread, for tests --------------------------------------------------

    def start(self) -> Throttle:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.listen(0))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- the proxy -----------------------------------------------------------------

    async def listen(self, port: int) -> asyncio.Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target_r, target_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        asked = asyncio.Event()
        up = asyncio.ensure_future(self._up(client_r, target_w, asked))
        down = asyncio.ensure_future(self._down(target_r, client_w, asked))
        try:
            # Open until either side hangs up (the client closing its socket ends it: a count
            # that waited for the target to notice too would lag behind the client's).
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.open -= 1
        await asyncio.gather(up, down, return_exceptions=True)

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, asked: asyncio.Event
    ) -> None:
        try:
            while data := await reader.read(1 << 16):
                asked.set()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, asked: asyncio.Event
    ) -> None:
        start, sent = time.monotonic(), 0
        try:
            while data := await reader.read(1 << 18):
                if asked.is_set():  # the first bytes of an answer: a new pace, and the delay
                    asked.clear()
                    if self.first_byte:
                        await asyncio.sleep(self.first_byte)
                    start, sent = time.monotonic(), 0
                writer.write(data)
                await writer.drain()
                sent += len(data)
                self.bytes_down += len(data)
                if self.rate:
                    ahead = sent / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen", type=int)
    parser.add_argument("target", type=int)
    parser.add_argument("rate", type=float)
    parser.add_argument("--first-byte", type=float, default=0.0)
    args = parser.parse_args()
    throttle = Throttle(args.target, args.rate, args.first_byte)

    async def serve() -> None:
        server = await throttle.listen(args.listen)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
