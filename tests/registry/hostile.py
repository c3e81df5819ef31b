"""A hostile registry on 127.0.0.1: a small aiohttp server whose behaviours each test picks.

It serves models the way a registry does (``/v2/``, manifests, blobs with
ranges, uploads) until a test installs a *hook*: an async function that
sees each request first and answers it (a redirect elsewhere, a gzip bomb,
a drip-fed body, a lie) or returns None to let the registry answer. Every
request is recorded with its headers, so a test can assert what reached
where (credentials above all). ``other`` is a second listener on another
port: another origin, for uploads and redirects that lead away.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from cairn.manifests import mediatypes as mt

Hook = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    port: int


@dataclass
class Listener:
    """One origin: its own port, hook and record of requests."""

    server: HostileRegistry
    tls: ssl.SSLContext | None = None
    hook: Hook | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def authorizations(self) -> list[str]:
        return [s.headers["Authorization"] for s in self.seen if "Authorization" in s.headers]

    def count(self, method: str, fragment: str = "") -> int:
        return sum(1 for s in self.seen if s.method == method and fragment in s.path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method, request.path, request.query_string, dict(request.headers), self.port
            )
        )
        if self.hook is not None:
            answer = await self.hook(request)
            if answer is not None:
                return answer
        return await self.server.serve(request)


class HostileRegistry:
    """Models in memory, served over plain HTTP (or TLS), and hooks that misbehave."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self._sessions = 0
        self._uploads: dict[str, bytearray] = {}
        self.basic: str | None = None
        """``user:password``: when set, every /v2/ request needs it (Basic)."""
        self.main = Listener(self, tls)
        self.other = Listener(self)
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)

    # -- what a test sets up ---------------------------------------------------

    @property
    def host(self) -> str:
        return self.main.host

    @property
    def url(self) -> str:
        return self.main.url

    def hook(self, hook: Hook | None) -> None:
        self.main.hook = hook

    def add_model(
        self,
        repository: str,
        tag: str,
        layers: list[bytes],
        config: Mapping[str, object] | None = None,
        media_type: str = mt.OLLAMA_MODEL,
    ) -> bytes:
        config_bytes = json.dumps(
            config if config is not None else {"model_format": "gguf", "model_family": "test"}
        ).encode()
        return self.add_raw(repository, tag, config_bytes, layers, media_type)

    def add_raw(
        self,
        repository: str,
        tag: str,
        config: bytes,
        layers: list[bytes],
        media_type: str = mt.OLLAMA_MODEL,
    ) -> bytes:
        self.blobs[digest(config)] = config
        entries = []
        for data in layers:
            self.blobs[digest(data)] = data
            entries.append({"mediaType": media_type, "digest": digest(data), "size": len(data)})
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.DOCKER_MANIFEST,
                "config": {
                    "mediaType": mt.DOCKER_CONFIG,
                    "digest": digest(config),
                    "size": len(config),
                },
                "layers": entries,
            }
        ).encode()
        self.put_manifest(repository, tag, manifest)
        return manifest

    def put_manifest(self, repository: str, tag: str, manifest: bytes) -> None:
        self.manifests[(repository, tag)] = (manifest, mt.DOCKER_MANIFEST)
        self.manifests[(repository, digest(manifest))] = (manifest, mt.DOCKER_MANIFEST)

    def stop(self) -> None:
        async def close() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- the server --------------------------------------------------------------

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        for listener in (self.main, self.other):
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/{tail:.*}", listener.handle)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            self._loop.run_until_complete(runner.setup())
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            listener.port = sock.getsockname()[1]
            site = web.SockSite(runner, sock, ssl_context=listener.tls)
            self._loop.run_until_complete(site.start())
            self._runners.append(runner)
        started.set()
        self._loop.run_forever()

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """What an honest registry would answer."""
        if self.basic is not None:
            import base64

            expected = "Basic " + base64.b64encode(self.basic.encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    status=401,
                    headers={"WWW-Authenticate": 'Basic realm="hostile"'},
                )
        path = request.path
        if path == "/v2/":
            return web.json_response({})
        if "/manifests/" in path:
            repository, _, reference = path[len("/v2/") :].partition("/manifests/")
            if request.method == "PUT":
                body = await request.read()
                self.put_manifest(repository, reference, body)
                return web.Response(status=201, headers={"Docker-Content-Digest": digest(body)})
            found = self.manifests.get((repository, reference))
            if found is None:
                return web.json_response(
                    {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                    status=404,
                )
            body, content_type = found
            headers = {"Content-Type": content_type, "Docker-Content-Digest": digest(body)}
            return web.Response(body=body if request.method == "GET" else None, headers=headers)
        if "/blobs/uploads/" in path:
            return await self._upload(request)
        if "/blobs/" in path:
            data = self.blobs.get(path.rpartition("/")[2])
            if data is None:
                return web.json_response(
                    {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}, status=404
                )
            if request.method == "HEAD":
                return web.Response(headers={"Content-Length": str(len(data))})
            return ranged(request, data)
        return web.Response(status=404)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            self._sessions += 1
            return web.Response(status=202, headers={"Location": f"{request.path}{self._sessions}"})
        return await self.receive(request)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        """PATCH and PUT of an upload session (on any listener): the bytes are kept."""
        body = await request.read()
        held = self._uploads.setdefault(request.path, bytearray())
        held += body
        if request.method == "PATCH":
            return web.Response(status=202, headers={"Location": request.path})
        if request.method == "PUT":
            self.blobs[request.query.get("digest", "")] = bytes(self._uploads.pop(request.path))
            return web.Response(status=201)
        return web.Response(status=405)


def ranged(request: web.Request, data: bytes) -> web.Response:
    """``data`` as a registry sends it: 206 for a Range, 200 otherwise."""
    wanted = request.headers.get("Range")
    if wanted:
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        start, end = int(first), int(last) + 1 if last else len(data)
        return web.Response(
            status=206,
            body=data[start:end],
            headers={"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"},
        )
    return web.Response(body=data)


def range_start(request: web.Request) -> int:
    wanted = request.headers.get("Range", "")
    first = wanted.removeprefix("bytes=").partition("-")[0]
    return int(first) if first.isdigit() else 0
