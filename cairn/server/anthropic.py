"""Anthropic's Messages API (``POST /v1/messages``) over the scheduler.

What it takes and gives follows Anthropic's API as Ollama serves it
(``anthropic/anthropic.go``, ``middleware/anthropic.go``): a request becomes
an Ollama chat (``system`` first, each message's text blocks joined,
``tool_use`` blocks as an assistant's ``tool_calls``, ``tool_result`` blocks
as ``tool`` messages; ``max_tokens`` as ``num_predict``, ``stop_sequences``
as ``stop``); the answer is a ``message`` object, or with ``"stream": true``
Anthropic's server-sent events::

    message_start, content_block_start, ping, content_block_delta...,
    content_block_stop, message_delta (stop_reason, usage), message_stop

Errors under ``/v1/messages`` are Anthropic's
``{"type": "error", "error": {"type", "message"}}`` (see :func:`error_body`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from aiohttp import web

from cairn.errors import CairnError
from cairn.server.fields import BadRequest, streaming

if TYPE_CHECKING:
    from cairn.server.api import Api, Job


PATH = "/v1/messages"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object, its ``type`` chosen by the HTTP status as Anthropic does."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def routes(api: Api) -> list[web.AbstractRouteDef]:
    return [web.post(PATH, Messages(api).create)]


@dataclass(frozen=True)
class Request:
    """A Messages request, checked and turned into what :meth:`Api.job` takes."""

    model: str
    messages: list[dict[str, Any]]
    """Ollama's chat messages, the ``system`` prompt first."""
    options: dict[str, Any]
    stop_sequences: tuple[str, ...]
    tools: list[dict[str, Any]] = field(default_factory=list)
    """Ollama's tools: ``{"type": "function", "function": {...}}``."""
    stream: bool = False

    @classmethod
    def from_body(cls, data: Mapping[str, Any]) -> Request:
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required")
        max_tokens = data.get("max_tokens")
        if not _integer(max_tokens) or max_tokens < 1:
            raise BadRequest("max_tokens is required and must be a positive integer")
        options: dict[str, Any] = {"num_predict": max_tokens}
        for key in ("temperature", "top_p", "top_k"):
            value = data.get(key)
            if value is None:
                continue
            if key == "top_k" and not _integer(value):
                raise BadRequest("top_k must be an integer")
            if not _number(value):
                raise BadRequest(f"{key} must be a number")
            options[key] = value
        stops = data.get("stop_sequences")
        if stops is not None:
            if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
                raise BadRequest("stop_sequences must be a list of non-empty strings")
            if stops:
                options["stop"] = list(stops)
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("stream must be true or false")
        tools = _tools(data.get("tools"), data.get("tool_choice"))
        return cls(
            model,
            _system(data.get("system")) + _messages(data.get("messages")),
            options,
            tuple(stops or ()),
            tools,
            stream,
        )


def _integer(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        text = "".join(_text_block(block, "system") for block in system)
        return [{"role": "system", "content": text}] if text else []
    raise BadRequest("system must be a string or a list of text blocks")


def _text_block(block: Any, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise BadRequest(f"{where} must be a string or a list of text blocks")
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"a text block's text must be a string (in {where})")
    return text


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages is required: a non-empty list")
    converted: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> tool name, for the tool_result that answers it
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(f'messages[{index}].role must be "user" or "assistant"')
        converted.extend(_message(role, message.get("content"), f"messages[{index}]", names))
    return converted


def _message(role: str, content: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """One Anthropic message as Ollama's: its text, its ``tool_calls``, and a ``tool``
    message for each ``tool_result`` (before the text for a user, as Ollama orders them)."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of content blocks")
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(_text_block(block, at))
        elif kind in ("image", "document"):
            raise BadRequest(f"{at}: {kind} blocks are not supported: this runtime takes text only")
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"{at}: a tool_use block needs an id")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{at}: a tool_use block needs a name")
            if not isinstance(arguments, dict):
                raise BadRequest(f"{at}: a tool_use block's input must be an object")
            names[call_id] = name
            calls.append({"function": {"name": name, "arguments": arguments}})
        elif kind == "tool_result":
            answered = block.get("tool_use_id")
            if not isinstance(answered, str):
                raise BadRequest(f"{at}: a tool_result block needs a tool_use_id")
            result = {"role": "tool", "content": _result_text(block.get("content"), at)}
            if answered in names:
                result["tool_name"] = names[answered]
            results.append(result)
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier thoughts: not shown to it again, as Ollama
        else:
            raise BadRequest(f"{at}: content blocks of type {kind!r:.40} are not supported")
    converted: list[dict[str, Any]] = []
    if text or calls or not results:
        turn: dict[str, Any] = {"role": role, "content": "".join(text)}
        if calls:
            turn["tool_calls"] = calls
        converted.append(turn)
    return [*results, *converted] if role == "user" else [*converted, *results]


def _result_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") in ("image", "document"):
                raise BadRequest(f"{where}: images are not supported: this runtime takes text only")
        return "".join(_text_block(block, f"{where}.content") for block in content)
    raise BadRequest(f"{where}: a tool_result's content must be a string or text blocks")


def _tools(tools: Any, choice: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    if choice is not None and (not isinstance(choice, dict) or "type" not in choice):
        raise BadRequest('tool_choice must be an object with a "type"')
    converted = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{index}] must be an object")
        kind, name = tool.get("type", "custom"), tool.get("name")
        if kind not in ("custom", None):
            raise BadRequest(f"tools[{index}]: server tools ({kind!r:.40}) are not supported")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{index}].name is required")
        schema = tool.get("input_schema", {})
        description = tool.get("description", "")
        if not isinstance(schema, dict) or not isinstance(description, str):
            raise BadRequest(f"tools[{index}]: input_schema must be an object")
        function = {"name": name, "description": description, "parameters": schema}
        converted.append({"type": "function", "function": function})
    if isinstance(choice, dict) and choice.get("type") == "none":
        return []  # the tools are described, but none may be called: leave them out
    return converted


def _message_id() -> str:
    return f"msg_{os.urandom(12).hex()}"


@dataclass
class Answer:
    """What a finished generation says, in Anthropic's terms."""

    text: str
    calls: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, int]

    def blocks(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": self.text}] if self.text else []
        return blocks + [_tool_use(call) for call in self.calls]


def _tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or {}
    return {
        "type": "tool_use",
        "id": call.get("id") or f"toolu_{os.urandom(12).hex()}",
        "name": function.get("name", ""),
        "input": arguments if isinstance(arguments, dict) else {},
    }


class Messages:
    def __init__(self, api: Api) -> None:
        self.api = api

    async def create(self, request: web.Request) -> web.StreamResponse:
        asked = Request.from_body(await self.api.body(request))
        job = await self._job(asked)
        if asked.stream:
            return await self.stream(request, asked, job)
        texts: list[str] = []
        produced = self.api.produce(job)
        async with contextlib.aclosing(produced):  # a client gone closes it, and its lease
            async for chunk in produced:
                if not chunk.done:
                    texts.append(chunk.text)
                    continue
                content, calls = self.api.tool_calls(job, "".join(texts))
                answer = self._answer(asked, content, calls, chunk.stats)
                return web.json_response(
                    {
                        **self._message(asked),
                        "content": answer.blocks(),
                        "stop_reason": answer.stop_reason,
                        "stop_sequence": answer.stop_sequence,
                        "usage": answer.usage,
                    }
                )
        raise CairnError("the runner ended without a last chunk")

    async def _job(self, asked: Request) -> Job:
        return await self.api.job(
            asked.model, asked.options, None, None, asked.messages, tools=asked.tools or None
        )

    def _message(self, asked: Request) -> dict[str, Any]:
        return {"id": _message_id(), "type": "message", "role": "assistant", "model": asked.model}

    def _answer(
        self, asked: Request, text: str, calls: list[dict[str, Any]], stats: Mapping[str, Any]
    ) -> Answer:
        matched = stats.get("stop_sequence")
        stop_sequence = matched if matched in asked.stop_sequences else None
        if calls:
            reason = "tool_use"
        elif stop_sequence is not None:
            reason = "stop_sequence"
        elif stats.get("done_reason") == "length":
            reason = "max_tokens"
        else:
            reason = "end_turn"
        usage = {
            "input_tokens": int(stats.get("prompt_eval_count", 0)),
            "output_tokens": int(stats.get("eval_count", 0)),
        }
        return Answer(text, calls, reason, stop_sequence, usage)

    async def stream(self, request: web.Request, asked: Request, job: Job) -> web.StreamResponse:
        """Anthropic's events as the text comes. With tools, text that may start a call
        is held (``tools.ToolParser``): the calls come at the end as ``tool_use`` blocks."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        streaming(request, response, "anthropic")
        started = False
        block = -1  # the index of the open content block; -1: none open yet
        parser = job.parser()  # no tools offered: every piece is text

        async def send(event: dict[str, Any]) -> None:
            if not response.prepared:
                await response.prepare(request)
            data = json.dumps(event, ensure_ascii=False)
            await response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())

        async def start() -> None:
            nonlocal started
            if not started:
                started = True
                estimate = len(job.prompt) // 4  # the true count comes in message_delta
                message = {**self._message(asked), "content": [], "stop_reason": None}
                message["stop_sequence"] = None
                message["usage"] = {"input_tokens": estimate, "output_tokens": 0}
                await send({"type": "message_start", "message": message})

        async def text(piece: str) -> None:
            nonlocal block
            await start()
            if block < 0:
                block = 0
                start_block = {"type": "text", "text": ""}
                await send(
                    {"type": "content_block_start", "index": 0, "content_block": start_block}
                )
                await send({"type": "ping"})
            delta = {"type": "text_delta", "text": piece}
            await send({"type": "content_block_delta", "index": block, "delta": delta})

        produced = self.api.produce(job)
        try:
            async with contextlib.aclosing(produced):
                async for chunk in produced:
                    if not chunk.done:
                        piece = parser.add(chunk.text)
                        if piece:
                            await text(piece)
                        continue
                    rest, calls = parser.finish()
                    answer = self._answer(asked, rest, calls, chunk.stats)
                    await start()
                    if rest:
                        await text(rest)
                    if block < 0:
                        await send({"type": "ping"})
                    else:
                        await send({"type": "content_block_stop", "index": block})
                    for call in answer.calls:
                        block += 1
                        use = _tool_use(call)
                        arguments = json.dumps(use["input"], ensure_ascii=False)
                        use["input"] = {}
                        delta = {"type": "input_json_delta", "partial_json": arguments}
                        for event in (
                            {"type": "content_block_start", "index": block, "content_block": use},
                            {"type": "content_block_delta", "index": block, "delta": delta},
                            {"type": "content_block_stop", "index": block},
                        ):
                            await send(event)
                    stop = {
                        "stop_reason": answer.stop_reason,
                        "stop_sequence": answer.stop_sequence,
                    }
                    await send({"type": "message_delta", "delta": stop, "usage": answer.usage})
                    await send({"type": "message_stop"})
                    await response.write_eof()
                    return response
        except (CairnError, BadRequest) as exc:
            if not response.prepared:
                raise  # nothing sent yet: the error is the answer, with its status
            await send(error_body(500, str(exc)))  # Anthropic's error event mid-stream
            await response.write_eof()
            return response
        raise CairnError("the runner ended without a last chunk")
