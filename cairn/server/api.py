"""``cairn serve``: Ollama's API over the store (``/api/*``), through the scheduler.

Request and response shapes follow Ollama's ``api/types.go``: errors are
``{"error": "..."}`` with the status Ollama uses (404 for an unknown model,
400 for a bad request); ``/api/generate`` and ``/api/chat`` stream NDJSON
unless ``"stream": false``, the last object carrying ``done``,
``done_reason`` and the durations in nanoseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cairn import __version__
from cairn.errors import (
    CairnError,
    ModelNotFoundError,
)
from cairn.manifests.models import Models
from cairn.manifests.reference import parse_reference
from cairn.running import DEFAULT_CONTEXT
from cairn.runtime_plugins.runtime import Chunk
from cairn.server.fields import MOST_KEEP_ALIVE, BadRequest, duration, flag, stamp, streaming
from cairn.server.loader import RunnerLoader, generate
from cairn.server.scheduler import Scheduler, Want
from cairn.server.tools import (
    ToolError,
    ToolParser,
    check_calls,
    check_tools,
    tag_of,
)

OLLAMA_VERSION = "0.12.0"
"""The version of Ollama's API that cairn answers as (``/api/version``)."""


@dataclass
class Settings:
    models: Models
    keep_alive: float = 300.0
    max_loaded: int = 3
    num_parallel: int = 1
    max_queue: int = 512
    api_keys: tuple[str, ...] = ()
    """``CAIRN_API_KEYS``: Bearer keys, any of which lets a request in (none: no key asked)."""
    origins: tuple[str, ...] = ()
    """``CAIRN_ORIGINS``: the browser origins CORS lets in."""
    insecure_no_auth: bool = False
    """``--insecure-no-auth``: serve a non-loopback address without keys."""
    loopback_only: bool = False
    """Served on a loopback address: requests must name this machine in ``Host``."""


@dataclass(frozen=True)
class Job:
    """One request's generation, checked and ready to run."""

    name: str
    want: Want
    keep_alive: float
    prompt: str
    options: dict[str, Any]
    empty: bool
    """No prompt, no messages: load (or unload) the model and answer at once."""
    tools: tuple[dict[str, Any], ...] = ()
    """The tools offered (Ollama's shape): the answer is read for calls to them."""
    tag: str = "{"
    """What a tool call starts with in this model's answers (``tools.tag_of``)."""

    def parser(self) -> ToolParser:
        return ToolParser(list(self.tools), self.tag)


MOST_SCHEMA = 64 << 10
"""The longest JSON schema a ``format`` may be, in bytes of JSON."""


def free_memory() -> int:
    """Bytes of memory free for another model (``MemAvailable``; unknown: no limit)."""
    from cairn.runtime_plugins.devices import available_memory

    found = available_memory()
    return found if found is not None else 1 << 62


def free_gpu_memory() -> int:
    """Bytes free on the visible NVIDIA GPUs (``nvidia-smi``); unknown: no limit."""
    from cairn.runtime_plugins.devices import nvidia_free_memory

    found = nvidia_free_memory(os.environ)
    return found if found is not None else 1 << 62


class Api:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models = settings.models
        self.loader = RunnerLoader(settings.num_parallel)
        self.scheduler = Scheduler(
            self.loader,
            max_loaded=settings.max_loaded,
            # Each of a model's requests at once borrows a runner of its own (the loader's
            # pool is as large): none waits on a runner another request may have to kill.
            num_parallel=settings.num_parallel,
            max_queue=settings.max_queue,
            keep_alive=settings.keep_alive,
            free_memory=free_memory,
            free_gpu_memory=free_gpu_memory,
        )
        self.observers: list[Callable[[str, Mapping[str, Any]], None]] = []
        """Told of every answer's model and last statistics (the metrics)."""

    # -- plumbing -------------------------------------------------------------

    @staticmethod
    async def body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadRequest("the body is not valid JSON (or nests too deep)") from None
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data

    @staticmethod
    def name_of(data: dict[str, Any]) -> str:
        name = data.get("model") or data.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("model is required")
        return name

    def local(self, name: str) -> Any:
        try:
            return self.models.get(name)
        except CairnError:
            raise ModelNotFoundError("model {name!r} not found", name=name) from None

    # -- simple endpoints -----------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.StreamResponse:
        from cairn.server.client import store_identity  # the CLI compares it with its own

        store = store_identity(self.models.root)
        return web.json_response({"version": OLLAMA_VERSION, "cairn": __version__, "store": store})

    def entry(self, model: Any) -> dict[str, Any]:
        from cairn.manifests.show import show_model
        from cairn.server.shown import details as details_of

        name = model.reference.display
        details: dict[str, Any] = {"format": "gguf", "parent_model": ""}
        with contextlib.suppress(CairnError):
            details = details_of(show_model(self.models, str(model.reference)))
        return {
            "name": name,
            "model": name,
            "modified_at": stamp(model.modified),
            "size": model.size,
            "digest": model.manifest.digest.hex,
            "details": details,
        }

    async def tags(self, request: web.Request) -> web.StreamResponse:
        found, _problems = await asyncio.to_thread(self.models.catalog)
        entries = await asyncio.to_thread(lambda: [self.entry(m) for m in found])
        return web.json_response({"models": entries})

    async def show(self, request: web.Request) -> web.StreamResponse:
        from cairn.manifests.show import show_model
        from cairn.server.shown import show_response

        data = await self.body(request)
        name = self.name_of(data)
        verbose = flag(data, "verbose", False)
        self.local(name)

        def answer() -> dict[str, Any]:
            return show_response(self.models, show_model(self.models, name), verbose)

        return web.json_response(await asyncio.to_thread(answer))

    async def ps(self, request: web.Request) -> web.StreamResponse:
        now, wall = time.monotonic(), time.time()
        listed = []
        for status in self.scheduler.status():
            try:
                entry = self.entry(self.local(status.model))
            except ModelNotFoundError:  # deleted while loaded: it goes when its requests do
                entry = {"name": status.model, "model": status.model, "size": status.size}
            if status.expires is not None:
                expires = wall + (status.expires - now)
            else:
                expires = wall + MOST_KEEP_ALIVE  # in use, or kept for ever
            listed.append(
                {
                    **entry,
                    "size": status.size,  # in memory, as estimated: weights and KV cache
                    "size_vram": status.gpu_size,
                    "expires_at": stamp(expires),
                    "context_length": dict(status.options).get("num_ctx", DEFAULT_CONTEXT),
                }
            )
        return web.json_response({"models": listed})

    async def copy(self, request: web.Request) -> web.StreamResponse:
        data = await self.body(request)
        source, destination = data.get("source"), data.get("destination")
        if not isinstance(source, str) or not isinstance(destination, str):
            raise BadRequest("source and destination are required")
        self.local(source)
        await asyncio.to_thread(self.models.copy, source, destination)
        return web.Response()

    async def delete(self, request: web.Request) -> web.StreamResponse:
        data = await self.body(request)
        name = self.name_of(data)
        model = self.local(name)
        await self.scheduler.stop(str(model.reference))
        await asyncio.to_thread(self.models.remove, [name])
        return web.Response()

    # -- generation -----------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        data = await self.body(request)
        return await self.answer(request, data, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        data = await self.body(request)
        return await self.answer(request, data, chat=True)

    async def job(
        self,
        name: str,
        options: Any,
        output_format: Any,
        keep_alive: Any,
        messages: list[Any] | None = None,
        prompt: Any = None,
        system: Any = None,
        template: Any = None,
        raw: bool = False,
        tools: Any = None,
    ) -> Job:
        """A request's model, options and prompt, checked: ``messages`` for a chat,
        ``prompt`` for a completion. ``output_format`` is ``"json"`` or a JSON schema;
        ``tools`` are Ollama's (or OpenAI's: the same shape)."""
        from cairn.modelfile import check_parameters
        from cairn.running import memory_needed, plan
        from cairn.runtime_plugins.prompt import Message, build_prompt

        stored = str(self.local(name).reference)
        if options is not None and not isinstance(options, dict):
            raise BadRequest("options must be an object")
        for field_name, value in (("template", template), ("system", system)):
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"{field_name} must be a string")
        checked = check_parameters(options or {}, "options: ")
        if output_format == "json":
            checked["format"] = "json"
        elif isinstance(output_format, dict):
            if len(json.dumps(output_format)) > MOST_SCHEMA:
                raise BadRequest(f"a format's JSON schema takes at most {MOST_SCHEMA} bytes")
            _local_refs(output_format)
            checked["format"] = output_format
        elif output_format not in (None, ""):
            raise BadRequest('format must be "json" or a JSON schema (an object)')
        try:
            offered = check_tools(tools)
        except ToolError as exc:
            raise BadRequest(str(exc)) from None
        ready = await asyncio.to_thread(plan, self.models, stored, checked)
        alive = duration(keep_alive, self.settings.keep_alive)
        details = ready.details
        if messages is not None:
            conversation = []
            system = details.system
            for item in messages:
                if not isinstance(item, dict) or not isinstance(item.get("content") or "", str):
                    raise BadRequest("each message needs a role and a content string")
                if item.get("images"):
                    raise BadRequest("this model's runtime takes no images")
                role = item.get("role", "user")
                if not isinstance(role, str):
                    raise BadRequest("a message's role must be a string")
                if role in ("system", "developer"):
                    system = item.get("content") or ""
                    continue
                tool_name = item.get("tool_name") or item.get("name") or ""
                if not isinstance(tool_name, str):
                    raise BadRequest("a message's tool_name must be a string")
                try:
                    calls = check_calls(item.get("tool_calls"))
                except ToolError as exc:
                    raise BadRequest(str(exc)) from None
                conversation.append(Message(role, item.get("content") or "", calls, tool_name))
            text = (
                ""
                if not conversation
                else build_prompt(
                    details.template,
                    conversation,
                    system,
                    ready.history,
                    ready.chat_template,
                    offered,
                )
            )
            empty = not conversation
        else:
            if prompt is not None and not isinstance(prompt, str):
                raise BadRequest("prompt must be a string")
            empty = not prompt
            if raw:
                text = prompt or ""
            else:
                text = build_prompt(
                    template or details.template,
                    [Message("user", prompt or "")],
                    system or details.system,
                    ready.history,
                    ready.chat_template,
                    offered,
                )
        size, gpu_size = await asyncio.to_thread(memory_needed, ready, self.settings.num_parallel)
        want = self.loader.want(
            stored,
            ready.runtime.name,
            ready.runtime.module,
            ready.spec,
            ready.options,
            size,
            gpu_size,
        )
        tag = tag_of(template or details.template)
        return Job(name, want, alive, text, ready.options, empty, tuple(offered), tag)

    @staticmethod
    def tool_calls(job: Job, text: str) -> tuple[str, list[dict[str, Any]]]:
        """A whole answer's content and the tool calls in it (Ollama's shape:
        ``{"function": {"name", "arguments"}}``); no tools offered, no calls."""
        parser = job.parser()
        content = parser.add(text)
        rest, calls = parser.finish()
        return content + rest, calls

    async def produce(self, job: Job) -> AsyncGenerator[Chunk, None]:
        inner = self._produce(job)
        try:
            async with contextlib.aclosing(inner):  # its lease ends before this does
                async for chunk in inner:
                    yield chunk
        finally:
            await self.unload_if_deleted(job.want.model)

    async def unload_if_deleted(self, model: str) -> None:
        """A model deleted while it answered is not kept loaded once its requests end."""
        if self.models.tags.find(parse_reference(model)) is None:
            await self.scheduler.stop(model)

    async def _produce(self, job: Job) -> AsyncGenerator[Chunk, None]:
        """The job's chunks under a lease on its model; the last is ``done`` with the
        statistics (``load_duration`` and ``total_duration`` among them)."""
        started = time.monotonic()
        if job.empty and job.keep_alive == 0:  # ``ollama stop``: unload, never load first
            await self.scheduler.stop(job.want.model)
            yield Chunk(done=True, stats={"done_reason": "unload"})
            return
        async with self.scheduler.lease(job.want, job.keep_alive) as lease:
            loaded_in = time.monotonic() - started
            if job.empty:
                yield Chunk(done=True, stats={"load_duration": loaded_in, "done_reason": "load"})
                return
            stats: dict[str, Any] = {}
            # A client gone (this closed) or a runner dead: the runner leaves the model's
            # pool, and the next request starts another (loader.borrowed).
            chunks = generate(lease.loaded, job.prompt, job.options)
            async with contextlib.aclosing(chunks):  # closed at once: its runner stops
                async for chunk in chunks:
                    if chunk.done:
                        stats = dict(chunk.stats)
                    else:
                        yield chunk
            predicted = job.options.get("num_predict")
            count = int(stats.get("eval_count", 0))
            length = isinstance(predicted, int) and predicted > 0 and count >= predicted
            stats.update(
                load_duration=loaded_in,
                total_duration=time.monotonic() - started,
                done_reason="length" if length else "stop",
            )
            for observe in self.observers:
                observe(job.want.model, stats)
            yield Chunk(done=True, stats=stats)

    async def answer(
        self, request: web.Request, data: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        name = self.name_of(data)
        if chat:
            messages = data.get("messages") or []
            if not isinstance(messages, list):
                raise BadRequest("messages must be a list")
            job = await self.job(
                name,
                data.get("options"),
                data.get("format"),
                data.get("keep_alive"),
                messages,
                tools=data.get("tools"),
            )
        else:
            job = await self.job(
                name,
                data.get("options"),
                data.get("format"),
                data.get("keep_alive"),
                prompt=data.get("prompt"),
                system=data.get("system"),
                template=data.get("template"),
                raw=bool(data.get("raw")),
            )
        base = {"model": name, "created_at": stamp(time.time())}

        def piece(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if calls:
                    message["tool_calls"] = calls
                return {"message": message}
            return {"response": text}

        stream = flag(data, "stream", True)
        response: web.StreamResponse | None = None
        if stream:
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            streaming(request, response, "ndjson")
        pieces: list[str] = []
        parser = job.parser()

        async def send(line: dict[str, Any]) -> None:
            assert response is not None
            if not response.prepared:
                await response.prepare(request)
            await response.write(json.dumps(line).encode() + b"\n")

        produced = self.produce(job)
        async with contextlib.aclosing(produced):  # a client gone closes it, and its lease
            async for chunk in produced:
                if chunk.done:
                    rest, calls = parser.finish()
                    if response is None:
                        text = "".join(pieces) + rest
                        final = {**base, **self.final(chunk.stats), **piece(text, calls)}
                        return web.json_response(final)
                    if rest or calls:
                        await send({**base, "done": False, **piece(rest, calls)})
                    await send({**base, **self.final(chunk.stats), **piece("")})
                    await response.write_eof()
                    return response
                text = parser.add(chunk.text)
                if response is None:
                    pieces.append(text)
                elif text:
                    await send({**base, "done": False, **piece(text)})
        raise CairnError("the runner ended without a last chunk")

    @staticmethod
    def final(stats: Mapping[str, Any]) -> dict[str, Any]:
        """The last object's fields, Ollama's durations in nanoseconds."""

        def ns(name: str) -> int:
            return int(float(stats.get(name) or 0) * 1e9)

        final: dict[str, Any] = {"done": True, "done_reason": stats.get("done_reason", "stop")}
        if final["done_reason"] in ("load", "unload"):
            return final
        return {
            **final,
            "total_duration": ns("total_duration"),
            "load_duration": ns("load_duration"),
            "prompt_eval_count": int(stats.get("prompt_eval_count", 0)),
            "prompt_eval_duration": ns("prompt_eval_duration"),
            "eval_count": int(stats.get("eval_count", 0)),
            "eval_duration": ns("eval_duration"),
        }


def _local_refs(schema: Any, depth: int = 0) -> None:
    """A ``format`` schema may refer only within itself (``#/...``): never to a URL."""
    if depth > 64:
        raise BadRequest("a format's JSON schema nests too deep")
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
            raise BadRequest("a format's JSON schema may only $ref within itself (#/...)")
        for value in schema.values():
            _local_refs(value, depth + 1)
    elif isinstance(schema, list):
        for value in schema:
            _local_refs(value, depth + 1)
