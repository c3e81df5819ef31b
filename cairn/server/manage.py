"""Ollama's model management over HTTP: pull, push, create, blobs.

The work is cairn's own (``registry/pull.py``, ``registry/push.py``,
``manifests/create.py``, the blob store); what this module adds is the
shape Ollama gives it over HTTP. Their progress callbacks become NDJSON
lines (``{"status": ..., "digest", "total", "completed"}``), passed from
whatever thread reports them to the event loop with ``call_soon_threadsafe``
and written as they come; ``"stream": false`` waits and answers one
``{"status": "success"}``. An error before the first line is an HTTP error
(its status as for any request); after it, an ``{"error": "..."}`` line, as
Ollama's ``streamResponse`` does. A client that goes away cancels a pull or
a push: its downloads stop and nothing enters ``blobs/`` unverified (a
download's partial stays under ``.cairn/tmp`` for the next pull to resume).

``POST /api/blobs/{digest}`` streams the body into the store, hashing as it
goes: bytes that hash otherwise are a 400 and nothing is kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cairn.blobstore import Digest
from cairn.errors import CairnError, DigestMismatchError, InvalidDigestError
from cairn.modelfile import ROLES, Command, Modelfile, parameter_value
from cairn.server.fields import BadRequest, flag

if TYPE_CHECKING:
    from cairn.manifests.models import LocalModel, Models
    from cairn.registry.events import Event
    from cairn.server.api import Api

Line = dict[str, Any]
Report = Callable[[Line], None]
BODY_IDLE = 300.0
"""A blob upload that sends nothing for this long is cut off."""
_GGUF_MAGIC = b"GGUF"


class _Lines:
    """A job's progress lines, reported from any thread, read in order on the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Line | None] = asyncio.Queue()

    def __call__(self, line: Line) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, line)

    def end(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def _event(report: Report) -> Callable[[Event], None]:
    """A pull's or push's progress callback that reports each event as a line."""
    return lambda event: report(event.to_json())


def _ndjson(line: Line) -> bytes:
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


async def progress_response(
    request: web.Request, stream: bool, work: Callable[[Report], Awaitable[None]]
) -> web.StreamResponse:
    """Run ``work`` and answer with its progress, as Ollama answers a pull, push or create.

    Streamed: each line as it comes; an error before the first line is the
    request's error (the middleware gives it its status), one after it an
    ``{"error": ...}`` line. Not streamed: ``{"status": "success"}`` at the
    end, or the error. A client gone cancels ``work`` and waits for it to
    clean up before the handler ends.
    """
    lines = _Lines()

    async def run() -> None:
        try:
            await work(lines)
        finally:
            lines.end()

    task = asyncio.ensure_future(run())
    try:
        if not stream:
            await task
            return web.json_response({"status": "success"})
        response: web.StreamResponse | None = None
        while (line := await lines.queue.get()) is not None:
            if response is None:
                response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
                await response.prepare(request)
            await response.write(_ndjson(line))
        try:
            await task
        except Exception as exc:  # whatever it is, the client hears of it
            if response is None:
                raise
            await response.write(_ndjson({"error": str(exc)}))
        if response is None:  # no line at all (nothing to do): Ollama's last line alone
            return web.json_response({"status": "success"})
        await response.write_eof()
        return response
    finally:
        if not task.done():
            task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: already raised or written, never "never retrieved"


@dataclass(frozen=True)
class _Requested(Modelfile):
    """A create request as the Modelfile it stands for, its parameters typed already."""

    typed: dict[str, Any] = field(default_factory=dict)
    quantize: str | None = None
    """The type to quantize the weights to (Ollama's ``quantize`` field), checked."""

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.typed)


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


class _BodyReader:
    """A request body read from a worker thread (``readinto``) for the blob store.

    Each read asks the event loop for what has arrived (up to the buffer's
    size); ``stop`` (the client gone) or ``BODY_IDLE`` seconds without a
    byte end it with an error, so the store keeps nothing.
    """

    def __init__(self, request: web.Request, loop: asyncio.AbstractEventLoop) -> None:
        self.content = request.content
        self.loop = loop
        self.stop = threading.Event()

    async def _read(self, size: int) -> list[bytes]:
        first = await asyncio.wait_for(self.content.read(size), BODY_IDLE)
        pieces, got = [first], len(first)
        while first and got < size:
            more = self.content.read_nowait(size - got)
            if not more:
                break
            pieces.append(more)
            got += len(more)
        return pieces

    def readinto(self, buffer: bytearray | memoryview) -> int:
        future = asyncio.run_coroutine_threadsafe(self._read(len(buffer)), self.loop)
        while True:
            if self.stop.is_set():
                future.cancel()
                raise ConnectionAbortedError("the client went away")
            try:
                pieces = future.result(timeout=1.0)
                break
            except concurrent.futures.TimeoutError:
                continue
        offset = 0
        for piece in pieces:
            buffer[offset : offset + len(piece)] = piece
            offset += len(piece)
        return offset


class Manage:
    """The handlers; ``api`` gives the store, the body parsing and the errors."""

    def __init__(self, api: Api) -> None:
        self.api = api

    @property
    def models(self) -> Models:
        return self.api.models

    # -- pull and push ----------------------------------------------------------

    async def pull(self, request: web.Request) -> web.StreamResponse:
        from cairn.manifests.reference import parse_reference

        data = await self.api.body(request)
        name = self.api.name_of(data)
        insecure = flag(data, "insecure", False)
        stream = flag(data, "stream", True)
        ref = parse_reference(name)

        async def work(report: Report) -> None:
            from cairn.registry.clients import pull_configured

            await pull_configured(self.models, ref, insecure, _event(report))

        return await progress_response(request, stream, work)

    async def push(self, request: web.Request) -> web.StreamResponse:
        data = await self.api.body(request)
        name = self.api.name_of(data)
        insecure = flag(data, "insecure", False)
        stream = flag(data, "stream", True)
        model: LocalModel = self.api.local(name)
        dest = model.reference

        async def work(report: Report) -> None:
            from cairn.registry.clients import make_client
            from cairn.registry.push import push

            async with make_client(dest, insecure) as client:
                await push(self.models, name, dest, client, report=_event(report))

        return await progress_response(request, stream, work)

    # -- create -------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        from cairn.manifests.reference import parse_reference

        data = await self.api.body(request)
        name = self.api.name_of(data)
        parse_reference(name)  # a bad name is a 400 before anything is read
        stream = flag(data, "stream", True)
        modelfile = await asyncio.to_thread(self._modelfile, data)

        async def work(report: Report) -> None:
            await asyncio.to_thread(self._create, name, modelfile, report)

        return await progress_response(request, stream, work)

    def _modelfile(self, data: dict[str, Any]) -> _Requested:
        """The request checked and turned into a Modelfile: FROM a model in the store, or
        the path of an uploaded GGUF blob; each bad field a 400, before any work."""
        for key in ("draft_files", "draft_quantize", "remote_host"):
            if data.get(key):
                raise BadRequest(f"{key} is not supported by cairn")
        quantize = data.get("quantize") or data.get("quantization")
        if quantize is not None and not isinstance(quantize, str):
            raise BadRequest("quantize must be a string, such as q4_K_M")
        if quantize:
            from cairn.quantize import parse_type

            try:
                quantize = parse_type(quantize)
            except CairnError as exc:
                raise BadRequest(str(exc)) from None
        source = _text(data, "from")
        files = self._files(data, "files")
        if source and files:
            raise BadRequest("give either 'from' or 'files', not both")
        commands: list[Command] = []
        if source:
            model = self.api.local(source)  # a model in the store, never a path on the server
            commands.append(Command("from", str(model.reference), 0))
        elif files:
            if len(files) > 1:
                raise BadRequest("files: give one GGUF file (split GGUF files are not supported)")
            commands.append(Command("from", str(files[0]), 0))
        else:
            raise BadRequest("neither 'from' or 'files' was specified")
        adapters = self._files(data, "adapters")
        if len(adapters) > 1:
            raise BadRequest("only one adapter is currently supported")
        commands += [Command("adapter", str(path), 0) for path in adapters]
        for key in ("template", "system"):
            text = _text(data, key)
            if text is not None:
                commands.append(Command(key, text, 0))
        licenses = data.get("license")
        if licenses is not None:
            if isinstance(licenses, str):
                licenses = [licenses] if licenses else []
            if not isinstance(licenses, list) or not all(isinstance(t, str) for t in licenses):
                raise BadRequest("license must be a string or a list of strings")
            commands += [Command("license", text, 0) for text in licenses]
        messages = data.get("messages") or []
        if not isinstance(messages, list):
            raise BadRequest("messages must be a list")
        for message in messages:
            if (
                not isinstance(message, dict)
                or message.get("role") not in ROLES
                or not isinstance(message.get("content", ""), str)
            ):
                raise BadRequest(
                    "each message needs a role (system, user or assistant) and a content string"
                )
            commands.append(Command("message", f"{message['role']} {message.get('content')}", 0))
        return _Requested(
            tuple(commands), self._parameters(data.get("parameters")), quantize or None
        )

    @staticmethod
    def _parameters(values: Any) -> dict[str, Any]:
        from cairn.modelfile import MAX_STOPS, PARAMETER_TYPES

        if values is None:
            return {}
        if not isinstance(values, dict):
            raise BadRequest("parameters must be an object")
        typed = {}
        for key, value in values.items():
            if key not in PARAMETER_TYPES:
                raise BadRequest(f"parameters: unknown parameter {key!r:.60}")
            typed[key] = parameter_value(key, value, "parameters: ")  # a ModelfileError: 400
        if len(typed.get("stop", [])) > MAX_STOPS:
            raise BadRequest(f"parameters: at most {MAX_STOPS} stop sequences")
        return typed

    def _files(self, data: dict[str, Any], key: str) -> list[Path]:
        """``{filename: digest}`` as the stored blobs' paths: GGUF files, uploaded already."""
        files = data.get(key) or {}
        if not isinstance(files, dict):
            raise BadRequest(f"{key} must be an object of file names and digests")
        paths = []
        for filename, text in sorted(files.items()):
            parts = filename.split("/")
            if not filename or filename.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise BadRequest("file path must be relative")
            if filename.endswith(".safetensors"):
                raise BadRequest(
                    f"{key}: {filename!r:.100} is safetensors; cairn imports GGUF files only"
                )
            digest = self._digest(text)
            path = self.models.blobs.path(digest)
            try:
                with open(path, "rb") as f:
                    magic = f.read(4)
            except FileNotFoundError:
                raise BadRequest(
                    f"{key}: blob {digest} is not on the server (POST it to /api/blobs/{digest})"
                ) from None
            if magic != _GGUF_MAGIC:
                raise BadRequest("supplied file was not in GGUF format")
            paths.append(path)
        return paths

    @staticmethod
    def _digest(text: Any) -> Digest:
        try:
            return Digest.parse(text)  # sha256:<hex>, or sha256-<hex> as Ollama takes it too
        except InvalidDigestError as exc:
            raise BadRequest(str(exc)) from None

    def _create(self, name: str, modelfile: _Requested, report: Report) -> None:
        """Create the model (on a worker thread), reporting Ollama's create lines:
        ``parsing GGUF`` for a file, a line per layer, ``writing manifest``, ``success``."""
        from cairn.manifests.create import create_model

        def progress(status: str) -> None:
            template = getattr(status, "template", status)
            if template in ("copying file {source}", "copying adapter {adapter}"):
                report({"status": "parsing GGUF"})
            elif template == "quantizing {current} model to {target}":
                report({"status": str(status)})  # Ollama's line, in English as its API is

        def warn(said: str) -> None:
            report({"status": f"warning: {said}"})

        existing = set(self.models.blobs)
        with tempfile.TemporaryDirectory() as nowhere:  # FROM names no file on the server
            model = create_model(
                self.models, name, modelfile, nowhere, progress, modelfile.quantize, warn
            )
        for layer in model.manifest.layers:
            kind = "using existing layer" if layer.digest in existing else "creating new layer"
            report({"status": f"{kind} {layer.digest}"})
        report({"status": "writing manifest"})
        report({"status": "success"})

    # -- blobs --------------------------------------------------------------------

    async def head_blob(self, request: web.Request) -> web.StreamResponse:
        digest = self._digest(request.match_info["digest"])
        if await asyncio.to_thread(self.models.blobs.has, digest):
            return web.Response()
        return web.json_response({"error": f"blob {str(digest)!r} not found"}, status=404)

    async def post_blob(self, request: web.Request) -> web.StreamResponse:
        digest = self._digest(request.match_info["digest"])
        blobs = self.models.blobs
        if await asyncio.to_thread(blobs.has, digest):
            return web.Response()
        reader = _BodyReader(request, asyncio.get_running_loop())

        def put() -> None:
            with blobs.writing():
                blobs.put(reader, expected=digest)

        work = asyncio.ensure_future(asyncio.to_thread(put))
        try:
            await asyncio.shield(work)
        except DigestMismatchError as exc:
            raise BadRequest(
                f"digest mismatch, expected {str(digest)!r}, got {exc.actual!r}"
            ) from None
        finally:
            if not work.done():  # the client went away: the write ends, nothing is kept
                reader.stop.set()
                await asyncio.wait([work])
                if not work.cancelled():
                    work.exception()
        return web.Response(status=201)


def routes(api: Api) -> list[web.AbstractRouteDef]:
    manage = Manage(api)
    return [
        web.post("/api/pull", manage.pull),
        web.post("/api/push", manage.push),
        web.post("/api/create", manage.create),
        web.head("/api/blobs/{digest}", manage.head_blob),
        web.post("/api/blobs/{digest}", manage.post_blob),
    ]
