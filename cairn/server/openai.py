"""OpenAI's API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Answers are OpenAI's objects (``chat.completion``, ``text_completion``,
``model``); ``stream`` is server-sent events ending in ``data: [DONE]``, with
a last chunk of ``usage`` when ``stream_options.include_usage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cairn.errors import CairnError
from cairn.server.fields import BadRequest, Handler, flag, object_field, streaming
from cairn.server.tools import call_id

if TYPE_CHECKING:
    from cairn.server.api import Api


Endpoint = Callable[["Api", web.Request], Awaitable[web.StreamResponse]]


def routes(api: Api) -> list[web.AbstractRouteDef]:
    def bound(endpoint: Endpoint) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await endpoint(api, request)

        return handle

    return [
        web.get("/v1/models", bound(models)),
        web.get("/v1/models/{model:.+}", bound(model)),
        web.post("/v1/chat/completions", bound(chat)),
        web.post("/v1/completions", bound(completions)),
    ]


async def models(api: Api, request: web.Request) -> web.StreamResponse:
    found, _problems = await asyncio.to_thread(api.models.catalog)
    return web.json_response({"object": "list", "data": [model_object(m) for m in found]})


async def model(api: Api, request: web.Request) -> web.StreamResponse:
    model = await asyncio.to_thread(api.local, request.match_info["model"])
    return web.json_response(model_object(model))


async def chat(api: Api, request: web.Request) -> web.StreamResponse:
    return await answer(api, request, chat=True)


async def completions(api: Api, request: web.Request) -> web.StreamResponse:
    return await answer(api, request, chat=False)


async def answer(api: Api, request: web.Request, chat: bool) -> web.StreamResponse:
    data = await api.body(request)
    name = api.name_of(data)
    options = options_of(data)
    response_format = object_field(data, "response_format")
    output_format = openai_format(response_format)
    if chat:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        job = await api.job(
            name,
            options,
            output_format,
            None,
            openai_messages(messages),
            tools=data.get("tools"),
        )
    else:
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        job = await api.job(name, options, output_format, None, prompt=prompt, raw=True)
    kind = "chat.completion" if chat else "text_completion"
    base = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{os.urandom(6).hex()}",
        "created": int(time.time()),
        "model": name,
        "system_fingerprint": "fp_cairn",
    }
    usage_wanted = bool(object_field(data, "stream_options").get("include_usage"))

    def choice(
        text: str | None,
        finish: str | None,
        whole: bool,
        calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        said: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            said["tool_calls"] = [
                {
                    **({} if whole else {"index": number}),
                    "id": call_id(),
                    "type": "function",
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": json.dumps(call["function"]["arguments"]),
                    },
                }
                for number, call in enumerate(calls)
            ]
        if whole:
            return {"index": 0, "message": said, "finish_reason": finish}
        delta = said if text is not None or calls else {}
        return {"index": 0, "delta": delta, "finish_reason": finish}

    def usage(stats: Mapping[str, Any]) -> dict[str, int]:
        prompt_tokens = int(stats.get("prompt_eval_count", 0))
        completion_tokens = int(stats.get("eval_count", 0))
        total = prompt_tokens + completion_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total,
        }

    stream = flag(data, "stream", False)
    response: web.StreamResponse | None = None
    if stream:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        streaming(request, response, "openai")
    pieces: list[str] = []

    async def send(event: dict[str, Any] | str) -> None:
        assert response is not None
        if not response.prepared:
            await response.prepare(request)
        text = event if isinstance(event, str) else json.dumps(event)
        await response.write(f"data: {text}\n\n".encode())

    parser = job.parser()
    produced = api.produce(job)
    async with contextlib.aclosing(produced):
        async for chunk in produced:
            if not chunk.done:
                text = parser.add(chunk.text)
                if response is None:
                    pieces.append(text)
                elif text:
                    piece = {**base, "object": f"{kind}.chunk"}
                    await send({**piece, "choices": [choice(text, None, False)]})
                continue
            rest, calls = parser.finish()
            finish = "length" if chunk.stats.get("done_reason") == "length" else "stop"
            finish = "tool_calls" if calls else finish
            if response is None:
                whole = {**base, "object": kind}
                whole["choices"] = [choice("".join(pieces) + rest, finish, True, calls)]
                whole["usage"] = usage(chunk.stats)
                return web.json_response(whole)
            last = {**base, "object": f"{kind}.chunk"}
            if rest or calls:
                await send({**last, "choices": [choice(rest, None, False, calls)]})
            await send({**last, "choices": [choice(None if chat else "", finish, False)]})
            if usage_wanted:
                await send({**last, "choices": [], "usage": usage(chunk.stats)})
            await send("[DONE]")
            await response.write_eof()
            return response
    raise CairnError("the runner ended without a last chunk")


def model_object(model: Any) -> dict[str, Any]:
    return {
        "id": model.reference.display,
        "object": "model",
        "created": int(model.modified),
        "owned_by": model.reference.namespace,
    }


_OPENAI_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
}


def openai_format(response_format: Mapping[str, Any]) -> Any:
    """OpenAI's ``response_format`` as Ollama's ``format``: ``"json"``, a schema, or None."""
    kind = response_format.get("type", "text")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        wanted = response_format.get("json_schema")
        schema = wanted.get("schema") if isinstance(wanted, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format json_schema needs json_schema.schema, an object")
        return schema
    if kind != "text":
        raise BadRequest(
            f"response_format {kind!r:.40} is not supported (text, json_object, json_schema)"
        )
    return None


def openai_messages(messages: list[Any]) -> list[Any]:
    """OpenAI's messages as Ollama's: content parts joined to text, a ``tool`` message's
    ``tool_call_id`` kept as its name when it has none."""
    converted = []
    for item in messages:
        if not isinstance(item, dict):
            raise BadRequest("each message must be an object")
        content = item.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict):
                    raise BadRequest("a message's content parts must be objects")
                if part.get("type") in ("text", "input_text", "output_text"):
                    texts.append(str(part.get("text") or ""))
                elif part.get("type") in ("image_url", "input_image"):
                    raise BadRequest("this model's runtime takes no images")
                else:
                    raise BadRequest(f"content part {part.get('type')!r:.40} is not supported")
            content = "".join(texts)
        converted.append({**item, "content": content})
    return converted


def options_of(data: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's sampling fields as Ollama's options (typed and ranged later)."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise BadRequest(f"{key} must be a positive integer")
    options = {
        ours: data[theirs]
        for theirs, ours in _OPENAI_OPTIONS.items()
        if data.get(theirs) is not None
    }
    stop = data.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else stop
    return options
