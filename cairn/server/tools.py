"""Tool calling: the tools a request offers, checked, and the calls found in a model's answer.

The tools go to the model's template as ``.Tools`` (``prompt.build_prompt``);
what the model writes back is read as Ollama reads it: the template's text
right after ``{{ if .ToolCalls }}`` is the tag a call starts with
(``<tool_call>``, ``[TOOL_CALLS]``; ``{`` when the template names none), and
after the tag come JSON objects naming one of the offered tools with its
arguments. Text before the tag is the answer's content and streams as it
comes; from the tag on, the answer is held until it ends. When the tag is
``{`` (a bare JSON object), a call counts only at the start of the answer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

MOST_TOOLS = 128
MOST_TOOL_BYTES = 256 << 10

_TOOL_CALLS = re.compile(r"\{\{-?\s*(?:if|range|with)\b[^}]*\.ToolCalls\b[^}]*?-?\}\}")


class ToolError(ValueError):
    """A request's tools or tool calls are not in the shape asked (a 400)."""


def tag_of(template: str | None) -> str:
    """The text a tool call starts with, as the template writes its ``.ToolCalls``."""
    found = _TOOL_CALLS.search(template or "")
    if found is None:
        return "{"
    after = template[found.end() :] if template else ""
    text = after.split("{{", 1)[0].replace("\r\n", "\n")
    text = text.split("{", 1)[0].strip()
    return text or "{"


def check_tools(raw: Any) -> list[dict[str, Any]]:
    """Ollama's (and OpenAI's) ``tools``: ``[{"type": "function", "function": {"name",
    "description", "parameters"}}]``."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MOST_TOOLS:
        raise ToolError(f"tools must be a list of at most {MOST_TOOLS} tools")
    if len(json.dumps(raw)) > MOST_TOOL_BYTES:
        raise ToolError(f"tools take at most {MOST_TOOL_BYTES} bytes")
    tools = []
    for tool in raw:
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
            or not isinstance(function.get("parameters", {}), dict)
            or not isinstance(function.get("description", ""), str)
        ):
            raise ToolError('each tool must be {"type": "function", "function": {"name": ...}}')
        tools.append({"type": "function", "function": function})
    return tools


def check_calls(raw: Any) -> tuple[dict[str, Any], ...]:
    """An assistant message's ``tool_calls``, as Ollama's (arguments an object) or
    OpenAI's (arguments a JSON string) shape; given back in Ollama's."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ToolError("tool_calls must be a list")
    calls = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolError('each tool call must be {"function": {"name", "arguments"}}')
        arguments = function.get("arguments") or {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise ToolError("a tool call's arguments are not JSON") from None
        if not isinstance(arguments, dict):
            raise ToolError("a tool call's arguments must be an object")
        calls.append({"function": {"name": function["name"], "arguments": arguments}})
    return tuple(calls)


class ToolParser:
    """Splits an answer, fed as it streams, into its content and its tool calls."""

    def __init__(self, tools: list[Mapping[str, Any]], tag: str) -> None:
        self.names = {t["function"]["name"] for t in tools}
        self.tag = tag
        self.buffer = ""
        self.calling = False
        self.done = not tools
        self.said = False
        """Some content came before: a bare-JSON call can no longer start."""

    def add(self, text: str) -> str:
        """The part of ``text`` that is surely content (what may start a call is held)."""
        if self.done or self.calling:
            if self.calling:
                self.buffer += text
                return ""
            return text
        self.buffer += text
        found = self.buffer.find(self.tag)
        if found < 0:
            keep = _partial(self.buffer, self.tag)
            content = self.buffer[: len(self.buffer) - keep]
            self.buffer = self.buffer[len(content) :]
        else:
            content, self.buffer = self.buffer[:found], self.buffer[found:]
        if self.tag in ("{", "[") and (self.said or content.strip()):
            self.done = True
            content, self.buffer = content + self.buffer, ""
            return content
        self.said = self.said or bool(content.strip())
        if found >= 0:
            self.calling = True
        return content

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """What was held back, and the calls in it (Ollama's shape)."""
        held, self.buffer = self.buffer, ""
        if not self.calling:
            return held, []
        calls: list[dict[str, Any]] = []
        rest: list[str] = []
        decoder = json.JSONDecoder()
        position = 0
        text = held if self.tag in ("{", "[") else held.replace(self.tag, " ")
        while position < len(text):
            start = min(
                (i for i in (text.find("{", position), text.find("[", position)) if i >= 0),
                default=-1,
            )
            if start < 0:
                rest.append(text[position:])
                break
            rest.append(text[position:start])
            try:
                value, end = decoder.raw_decode(text, start)
            except ValueError:
                rest.append(text[start])
                position = start + 1
                continue
            found = self._calls(value)
            if found:
                calls += found
            else:
                rest.append(text[start:end])
            position = end
        if not calls:
            return held, []
        left = "".join(rest).strip()
        for closing in _closing_tags(self.tag):
            left = left.replace(closing, "").strip()
        return left, calls

    def _calls(self, value: Any) -> list[dict[str, Any]]:
        if isinstance(value, list):
            return [call for item in value for call in self._calls(item)]
        if not isinstance(value, dict):
            return []
        if isinstance(value.get("function"), dict):
            return self._calls(value["function"])
        name = value.get("name")
        if name not in self.names:
            return []
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return []
        if not isinstance(arguments, dict):
            return []
        return [{"function": {"name": name, "arguments": arguments}}]


def _partial(text: str, tag: str) -> int:
    """How many of ``text``'s last characters could begin ``tag``."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def _closing_tags(tag: str) -> list[str]:
    """``</tool_call>`` for ``<tool_call>``: what closes a call, dropped from the content."""
    if tag.startswith("<") and tag.endswith(">"):
        return ["</" + tag[1:]]
    return []


def call_id() -> str:
    """An id for a call, as OpenAI's and Anthropic's answers carry (``call_...``)."""
    return "call_" + os.urandom(12).hex()
