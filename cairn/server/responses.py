"""OpenAI's Responses API (``POST /v1/responses``), stateless as Ollama offers it.

A request's ``input`` (a string, or a list of message, ``function_call`` and
``function_call_output`` items) and ``instructions`` become a chat for
:meth:`Api.job`; the answer is a ``response`` object whose ``output`` holds a
``message`` item of ``output_text`` and a ``function_call`` item per tool call, or,
streamed, the server-sent events OpenAI sends (``response.created`` ...
``response.completed``), each with its ``sequence_number``. Nothing is stored:
``previous_response_id`` and ``conversation`` are refused with a 400.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cairn.errors import CairnError
from cairn.server.fields import BadRequest, flag, object_field
from cairn.server.tools import call_id

if TYPE_CHECKING:
    from cairn.server.api import Api, Job

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
STATELESS = (
    "{field} is not supported: cairn's /v1/responses stores nothing (it is stateless, "
    "as Ollama's is); send the whole conversation in input"
)


def routes(api: Api) -> list[web.AbstractRouteDef]:
    async def create(request: web.Request) -> web.StreamResponse:
        return await respond(api, request)

    return [web.post("/v1/responses", create)]


# -- the request --------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of ``input_text``/``output_text`` parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of content parts")
    pieces = []
    for index, given in enumerate(content):
        kind = given.get("type") if isinstance(given, dict) else None
        if kind in TEXT_PARTS and isinstance(given.get("text"), str):
            pieces.append(given["text"])
        elif kind == "input_image":
            raise BadRequest("this model's runtime takes no images")
        elif kind == "input_file":
            raise BadRequest("file inputs are not supported")
        else:
            raise BadRequest(
                f"{where}.content[{index}] must be an input_text or output_text part "
                f"with a text string (got type {kind!r:.40})"
            )
    return "".join(pieces)


def messages_of(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as Ollama's chat messages: ``function_call`` items
    become an assistant's ``tool_calls``, ``function_call_output`` items ``tool`` messages."""
    messages: list[dict[str, Any]] = []
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("instructions must be a string")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    given = data.get("input")
    if isinstance(given, str):
        items: list[Any] = [{"role": "user", "content": given}] if given else []
    elif isinstance(given, list):
        items = given
    else:
        raise BadRequest("input must be a string or a list of input items")
    names: dict[str, str] = {}  # call_id: the function it called
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "reasoning":
            continue  # a reasoning model's earlier thoughts: nothing to replay here
        if kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments") or "{}"
            if not isinstance(name, str) or not isinstance(arguments, str):
                raise BadRequest(f"{where}: a function_call needs a name and arguments (JSON)")
            names[str(item.get("call_id") or "")] = name
            call = {"function": {"name": name, "arguments": arguments}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            text = _text(output, where) if isinstance(output, list) else output
            if not isinstance(text, str):
                raise BadRequest(f"{where}.output must be a string or a list of text parts")
            name = names.get(str(item.get("call_id") or ""), "")
            messages.append({"role": "tool", "content": text, "tool_name": name})
        elif kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}")
            messages.append({"role": role, "content": _text(item.get("content", ""), where)})
        else:
            raise BadRequest(
                f"{where} has an unknown type {kind!r:.40} "
                "(message, function_call, function_call_output)"
            )
    if not any(m["role"] in ("user", "assistant", "tool") for m in messages):
        raise BadRequest("input is required: a string, or a list with a user message")
    return messages


def tools_of(data: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Responses' function tools (``{"type": "function", "name", "parameters"}``) in
    Ollama's shape (``{"type": "function", "function": {...}}``); none for
    ``tool_choice: "none"``."""
    given = data.get("tools")
    if given is None or data.get("tool_choice") == "none":
        return None
    if not isinstance(given, list):
        raise BadRequest("tools must be a list")
    tools = []
    for index, tool in enumerate(given):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise BadRequest(f"tools[{index}] type {kind!r:.40} is not supported (function)")
        function = {key: tool[key] for key in ("name", "description", "parameters") if key in tool}
        if function.get("description") is None:
            function.pop("description", None)
        if function.get("parameters") is None:
            function.pop("parameters", None)
        tools.append({"type": "function", "function": function})
    return tools


def options_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """``temperature``, ``top_p`` and ``max_output_tokens`` as Ollama's options."""
    options: dict[str, Any] = {}
    for key in ("temperature", "top_p"):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(f"{key} must be a number")
        options[key] = value
    most = data.get("max_output_tokens")
    if most is not None:
        if isinstance(most, bool) or not isinstance(most, int) or most < 1:
            raise BadRequest("max_output_tokens must be a positive integer")
        options["num_predict"] = most
    return options


def format_of(data: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """``text.format`` as given (echoed back) and as :meth:`Api.job`'s output format:
    ``"json"`` for ``json_object``, the schema for ``json_schema``."""
    text = object_field(dict(data), "text")
    given = text.get("format") or {"type": "text"}
    if not isinstance(given, dict):
        raise BadRequest("text.format must be an object")
    kind = given.get("type")
    if kind == "text":
        return given, None
    if kind == "json_object":
        return given, "json"
    if kind == "json_schema":
        schema = given.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("text.format.schema must be a JSON schema object")
        return given, schema
    raise BadRequest(
        f"text.format type {kind!r:.40} is not supported (text, json_object, json_schema)"
    )


def check_stateless(data: Mapping[str, Any]) -> None:
    for key in ("previous_response_id", "conversation"):
        if data.get(key) not in (None, ""):
            raise BadRequest(STATELESS.format(field=key))
    if data.get("background"):
        raise BadRequest("background is not supported: answers come on the request's connection")


# -- the answer ---------------------------------------------------------------------


@dataclass
class Reply:
    """One response under way: what the request asked, and what is known so far."""

    data: Mapping[str, Any]
    text_format: dict[str, Any]
    id: str = field(default_factory=lambda: f"resp_{os.urandom(12).hex()}")
    item_id: str = field(default_factory=lambda: f"msg_{os.urandom(12).hex()}")
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        stats: Mapping[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The ``response`` object, its fields as OpenAI's (and Ollama's) answer them."""
        data = self.data
        usage = None
        if stats is not None:
            prompt_tokens = int(stats.get("prompt_eval_count", 0))
            output_tokens = int(stats.get("eval_count", 0))
            usage = {
                "input_tokens": prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt_tokens + output_tokens,
            }
        ended = status in ("completed", "incomplete", "failed")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "model": data["model"],
            "previous_response_id": None,
            "instructions": data.get("instructions") or None,
            "output": output,
            "error": error,
            "tools": data.get("tools") or [],
            "tool_choice": data.get("tool_choice") or "auto",
            "truncation": data.get("truncation") or "disabled",
            "parallel_tool_calls": True,
            "text": {"format": self.text_format},
            "top_p": data.get("top_p"),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": data.get("temperature"),
            "reasoning": None,
            "usage": usage if ended else None,
            "max_output_tokens": data.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": False,
            "service_tier": "default",
            "metadata": data.get("metadata") or {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def message(self, text: str, status: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [],
        }
        if status != "in_progress":
            item["content"] = [part(text)]
        return item

    @staticmethod
    def call(call: Mapping[str, Any]) -> dict[str, Any]:
        """A ``function_call`` output item from a call in Ollama's shape."""
        return {
            "id": f"fc_{os.urandom(12).hex()}",
            "type": "function_call",
            "status": "completed",
            "call_id": call_id(),
            "name": call["function"]["name"],
            "arguments": json.dumps(call["function"]["arguments"]),
        }


def part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def status_of(stats: Mapping[str, Any], calls: list[dict[str, Any]]) -> str:
    """``incomplete`` when ``max_output_tokens`` cut the answer short (and no call was
    made of it), else ``completed``."""
    if stats.get("done_reason") == "length" and not calls:
        return "incomplete"
    return "completed"


async def respond(api: Api, request: web.Request) -> web.StreamResponse:
    data = await api.body(request)
    name = api.name_of(data)
    check_stateless(data)
    text_format, output_format = format_of(data)
    messages = messages_of(data)
    tools = tools_of(data)
    job = await api.job(name, options_of(data), output_format, None, messages, tools=tools)
    reply = Reply({**data, "model": name}, text_format)
    if flag(data, "stream", False):
        return await Events(api, request, reply, job).run()
    pieces: list[str] = []
    produced = api.produce(job)
    async with contextlib.aclosing(produced):  # a client gone closes it, and its lease
        async for chunk in produced:
            if not chunk.done:
                pieces.append(chunk.text)
                continue
            content, calls = api.tool_calls(job, "".join(pieces))
            status = status_of(chunk.stats, calls)
            output = [reply.message(content, status)] if content or not calls else []
            output += [reply.call(call) for call in calls]
            return web.json_response(reply.response(status, output, chunk.stats))
    raise CairnError("the runner ended without a last chunk")


class Events:
    """A streamed answer: OpenAI's server-sent events, numbered in order. Text streams
    as it comes; what may be a tool call is held until the answer ends, and its calls
    then come as ``function_call`` items."""

    def __init__(self, api: Api, request: web.Request, reply: Reply, job: Job) -> None:
        self.api, self.request, self.reply, self.job = api, request, reply, job
        self.stream = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        self.sequence = 0
        self.pieces: list[str] = []
        self.opened = False
        """The message item was announced (``output_item.added``)."""
        self.output: list[dict[str, Any]] = []
        """The items finished so far."""
        self.where = {"item_id": reply.item_id, "output_index": 0, "content_index": 0}

    async def send(self, kind: str, **fields: Any) -> None:
        if not self.stream.prepared:
            await self.stream.prepare(self.request)
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        await self.stream.write(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())

    async def start(self) -> None:
        """The stream's opening, sent once the model answers (an error before that,
        such as a full queue, is still an HTTP error)."""
        for kind in ("response.created", "response.in_progress"):
            await self.send(kind, response=self.reply.response("in_progress", []))

    async def say(self, text: str) -> None:
        if not self.opened:
            self.opened = True
            item = self.reply.message("", "in_progress")
            await self.send("response.output_item.added", output_index=0, item=item)
            await self.send("response.content_part.added", **self.where, part=part(""))
        if text:
            self.pieces.append(text)
            await self.send("response.output_text.delta", **self.where, delta=text, logprobs=[])

    async def run(self) -> web.StreamResponse:
        parser = self.job.parser()
        produced = self.api.produce(self.job)
        try:
            async with contextlib.aclosing(produced):  # a client gone closes it
                async for chunk in produced:
                    if self.sequence == 0:
                        await self.start()
                    if not chunk.done:
                        text = parser.add(chunk.text)
                        if text:
                            await self.say(text)
                        continue
                    rest, calls = parser.finish()
                    await self.finish(rest, calls, chunk.stats)
                    return self.stream
        except CairnError as exc:
            if self.sequence == 0:
                raise  # nothing sent yet: an HTTP error in OpenAI's shape
            error = {"code": "server_error", "message": str(exc)}
            if self.opened:
                self.output.append(self.reply.message("".join(self.pieces), "incomplete"))
            failed = self.reply.response("failed", self.output, {}, error)
            await self.send("response.failed", response=failed)
            await self.stream.write_eof()
            return self.stream
        raise CairnError("the runner ended without a last chunk")

    async def finish(
        self, rest: str, calls: list[dict[str, Any]], stats: Mapping[str, Any]
    ) -> None:
        status = status_of(stats, calls)
        if rest or not calls:
            await self.say(rest)  # an empty answer is still an (empty) message
        if self.opened:
            text = "".join(self.pieces)
            item = self.reply.message(text, status)
            await self.send("response.output_text.done", **self.where, text=text, logprobs=[])
            await self.send("response.content_part.done", **self.where, part=part(text))
            await self.send("response.output_item.done", output_index=0, item=item)
            self.output.append(item)
        for call in calls:
            item, index = self.reply.call(call), len(self.output)
            await self.send(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            at = {"item_id": item["id"], "output_index": index}
            await self.send("response.function_call_arguments.delta", **at, delta=item["arguments"])
            await self.send(
                "response.function_call_arguments.done", **at, arguments=item["arguments"]
            )
            await self.send("response.output_item.done", output_index=index, item=item)
            self.output.append(item)
        last = self.reply.response(status, self.output, stats)
        await self.send(f"response.{status}", response=last)
        await self.stream.write_eof()
