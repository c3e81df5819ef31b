"""``cairn serve``: Ollama's API over the store (``/api/*``), through the scheduler.

Request and response shapes follow Ollama's ``api/types.go``: errors are
``{"error": "..."}`` with the status Ollama uses (404 for an unknown model,
400 for a bad request); ``/api/generate`` and ``/api/chat`` stream NDJSON
unless ``"stream": false``, the last object carrying ``done``,
``done_reason`` and the durations in nanoseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cairn import __version__
from cairn.errors import CairnError, ModelNotFoundError, ServerBusyError
from cairn.manifests.models import Models
from cairn.server.loader import RunnerLoader, generate
from cairn.server.scheduler import FOREVER, Scheduler

OLLAMA_VERSION = "0.12.0"
"""The version of Ollama's API that cairn answers as (``/api/version``)."""
MAX_BODY = 32 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Settings:
    models: Models
    keep_alive: float = 300.0
    max_loaded: int = 3
    num_parallel: int = 1
    max_queue: int = 512


class BadRequest(Exception):
    """A request Ollama would answer with 400."""


def duration(text: Any, default: float) -> float:
    """Seconds from Ollama's ``keep_alive``: a number of seconds, or "5m", "1h", "-1"."""
    if text is None:
        return default
    if isinstance(text, bool):
        raise BadRequest(f"keep_alive {text!r} is not a duration")
    if isinstance(text, (int, float)):
        return float(text) if text >= 0 else FOREVER
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    value = str(text).strip()
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            try:
                number = float(value[: -len(unit)])
            except ValueError:
                break
            return number * units[unit] if number >= 0 else FOREVER
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"keep_alive {text!r:.40} is not a duration") from None
    return number if number >= 0 else FOREVER


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class Api:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models = settings.models
        self.loader = RunnerLoader()
        self.scheduler = Scheduler(
            self.loader,
            max_loaded=settings.max_loaded,
            num_parallel=settings.num_parallel,
            max_queue=settings.max_queue,
            keep_alive=settings.keep_alive,
        )
        self.names: dict[str, str] = {}
        """Loaded model (the store's name) to the name a client asked for."""

    # -- plumbing -------------------------------------------------------------

    @staticmethod
    async def body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not valid JSON") from None
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
        return web.json_response({"version": OLLAMA_VERSION, "cairn": __version__})

    def entry(self, model: Any) -> dict[str, Any]:
        from cairn.manifests.show import show_model

        name = model.reference.display
        details: dict[str, Any] = {"format": "gguf", "parent_model": ""}
        try:
            shown = show_model(self.models, str(model.reference))
            summary = shown.summary()
            family = summary.get("architecture") or ""
            details.update(
                family=family,
                families=[family] if family else None,
                parameter_size=summary.get("parameters") or "",
                quantization_level=summary.get("quantization") or "",
            )
        except CairnError:
            pass
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

        data = await self.body(request)
        name = self.name_of(data)
        self.local(name)
        shown = await asyncio.to_thread(show_model, self.models, name)
        entry = self.entry(shown.model)
        info = dict(shown.gguf.metadata) if shown.gguf else {}
        model_info = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))}
        parameters = "\n".join(
            f"{key} {item}"
            for key, value in shown.parameters.items()
            for item in (value if isinstance(value, list) else [value])
        )
        return web.json_response(
            {
                "modelfile": shown.modelfile(self.models),
                "parameters": parameters,
                "template": shown.template or "",
                "system": shown.system or "",
                "details": entry["details"],
                "model_info": model_info,
                "capabilities": ["completion"],
                "modified_at": entry["modified_at"],
            }
        )

    async def ps(self, request: web.Request) -> web.StreamResponse:
        now, wall = time.monotonic(), time.time()
        listed = []
        for status in self.scheduler.status():
            model = self.local(status.model)
            entry = self.entry(model)
            expires = wall + (status.expires - now) if status.expires is not None else wall
            if status.expires is None and status.active == 0:
                expires = wall + 10 * 365 * 86400  # kept for ever
            listed.append(
                {**entry, "expires_at": stamp(expires), "size_vram": 0, "context_length": 0}
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

    async def answer(
        self, request: web.Request, data: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        from cairn.modelfile import check_parameters
        from cairn.running import plan
        from cairn.runtime_plugins.prompt import Message, build_prompt

        name = self.name_of(data)
        model = self.local(name)
        stored = str(model.reference)
        options = check_parameters(data.get("options") or {}, "options: ")
        if data.get("format") == "json":
            options["format"] = "json"
        elif data.get("format") not in (None, ""):
            raise BadRequest('format must be "json" (JSON schemas are not supported yet)')
        ready = await asyncio.to_thread(plan, self.models, stored, options)
        keep_alive = duration(data.get("keep_alive"), self.settings.keep_alive)
        if chat:
            raw_messages = data.get("messages") or []
            if not isinstance(raw_messages, list):
                raise BadRequest("messages must be a list")
            conversation = []
            system = ready.details.system
            for item in raw_messages:
                if not isinstance(item, dict) or not isinstance(item.get("content", ""), str):
                    raise BadRequest("each message needs a role and a content string")
                if item.get("images"):
                    raise BadRequest("this model's runtime takes no images")
                role = str(item.get("role", "user"))
                if role == "system":
                    system = item.get("content") or ""
                    continue
                conversation.append(Message(role, item.get("content") or ""))
            empty = not conversation
            prompt = (
                ""
                if empty
                else build_prompt(
                    ready.details.template, conversation, system, ready.history, ready.chat_template
                )
            )
        else:
            text = data.get("prompt") or ""
            if not isinstance(text, str):
                raise BadRequest("prompt must be a string")
            empty = not text
            template = data.get("template") or ready.details.template
            system = data.get("system") or ready.details.system
            if data.get("raw"):
                prompt = text
            else:
                prompt = build_prompt(
                    template, [Message("user", text)], system, ready.history, ready.chat_template
                )
        want = self.loader.want(
            stored, ready.runtime.name, ready.runtime.module, ready.spec, ready.options, 0
        )
        started = time.monotonic()
        stream = data.get("stream", True) is not False
        async with self.scheduler.lease(want, keep_alive) as lease:
            loaded_in = time.monotonic() - started
            base = {"model": name, "created_at": stamp(time.time())}
            if empty:  # Ollama: an empty prompt loads (or, keep_alive 0, unloads) the model
                done: dict[str, Any] = {**base, "done": True, "done_reason": "load"}
                if chat:
                    done["message"] = {"role": "assistant", "content": ""}
                else:
                    done["response"] = ""
                return web.json_response(done)
            chunks = generate(lease.loaded, prompt, ready.options)
            response: web.StreamResponse | None = None
            if stream:
                response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
                await response.prepare(request)
            pieces: list[str] = []
            stats: dict[str, Any] = {}
            try:
                async for chunk in chunks:
                    if chunk.done:
                        stats = dict(chunk.stats)
                        continue
                    if response is None:
                        pieces.append(chunk.text)
                        continue
                    line = dict(base, done=False)
                    if chat:
                        line["message"] = {"role": "assistant", "content": chunk.text}
                    else:
                        line["response"] = chunk.text
                    await response.write(json.dumps(line).encode() + b"\n")
            except (asyncio.CancelledError, ConnectionResetError):
                lease.died()  # its runner was stopped mid-token
                raise
            except CairnError:
                lease.died()
                raise
            final = self.final(base, stats, ready.options, started, loaded_in)
            if chat:
                final["message"] = {"role": "assistant", "content": "".join(pieces)}
            else:
                final["response"] = "".join(pieces)
            if response is None:
                return web.json_response(final)
            await response.write(json.dumps(final).encode() + b"\n")
            await response.write_eof()
            return response

    @staticmethod
    def final(
        base: dict[str, Any],
        stats: dict[str, Any],
        options: dict[str, Any],
        started: float,
        loaded_in: float,
    ) -> dict[str, Any]:
        def ns(seconds: Any) -> int:
            return int(float(seconds or 0) * 1e9)

        predicted = options.get("num_predict")
        count = int(stats.get("eval_count", 0))
        length = isinstance(predicted, int) and predicted > 0 and count >= predicted
        return {
            **base,
            "done": True,
            "done_reason": "length" if length else "stop",
            "total_duration": ns(time.monotonic() - started),
            "load_duration": ns(loaded_in),
            "prompt_eval_count": int(stats.get("prompt_eval_count", 0)),
            "prompt_eval_duration": ns(stats.get("prompt_eval_duration")),
            "eval_count": count,
            "eval_duration": ns(stats.get("eval_duration")),
        }


@web.middleware
async def ollama_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except ModelNotFoundError as exc:
        return web.json_response({"error": str(exc)}, status=404)
    except ServerBusyError as exc:
        return web.json_response({"error": str(exc)}, status=503)
    except CairnError as exc:
        return web.json_response({"error": str(exc)}, status=500)


def make_app(settings: Settings) -> web.Application:
    api = Api(settings)
    app = web.Application(middlewares=[ollama_errors], client_max_size=MAX_BODY)
    app["api"] = api
    app.add_routes(
        [
            web.get("/", api.root),
            web.get("/api/version", api.version),
            web.get("/api/tags", api.tags),
            web.post("/api/show", api.show),
            web.get("/api/ps", api.ps),
            web.post("/api/copy", api.copy),
            web.delete("/api/delete", api.delete),
            web.post("/api/generate", api.generate),
            web.post("/api/chat", api.chat),
        ]
    )

    async def close(_: web.Application) -> None:
        await api.scheduler.close()

    app.on_cleanup.append(close)
    return app


def settings_from_environment(models: Models) -> Settings:
    def number(name: str, default: float) -> float:
        text = os.environ.get(name)
        if not text:
            return default
        try:
            return float(text)
        except ValueError:
            from cairn.errors import ConfigError

            raise ConfigError("{name}={value!r} is not a number", name=name, value=text) from None

    keep = os.environ.get("CAIRN_KEEP_ALIVE")
    try:
        keep_alive = duration(keep, 300.0)
    except BadRequest:
        from cairn.errors import ConfigError

        raise ConfigError("CAIRN_KEEP_ALIVE={value!r} is not a duration", value=keep) from None
    return Settings(
        models,
        keep_alive=keep_alive,
        max_loaded=int(number("CAIRN_MAX_LOADED_MODELS", 3)),
        num_parallel=int(number("CAIRN_NUM_PARALLEL", 1)),
        max_queue=int(number("CAIRN_MAX_QUEUE", 512)),
    )
