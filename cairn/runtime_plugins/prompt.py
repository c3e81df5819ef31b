"""Turning a conversation into the text a model continues, with the model's template.

The template layer is Ollama's Go-template language (``cairn.template``). It
is given ``.System``, ``.Prompt``, ``.Response`` (empty) and ``.Messages``
(the system message, the model's own MESSAGE history, then the
conversation), so both kinds of Ollama template work: the older ones that
use ``.System``/``.Prompt`` and the newer ones that range over
``.Messages``. A model without a template layer but with a Jinja
``tokenizer.chat_template`` in its GGUF is rendered with that (sandboxed,
``add_generation_prompt``); with neither, the prompt goes in as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cairn.template import Template


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    """An assistant's calls, in Ollama's shape: ``{"function": {"name", "arguments"}}``."""
    tool_name: str = ""
    """A ``tool`` message's tool."""


class GoValue(Mapping[str, Any]):
    """A value of Ollama's API as its Go templates see it: fields by their Go names
    (``.Function.Name``), printed as the JSON Ollama's ``String()`` methods give."""

    MAPS = frozenset({"properties", "arguments", "$defs", "defs"})
    """Keys whose values are maps of names the user chose: their keys stay as they are."""

    def __init__(self, raw: Mapping[str, Any], keep_keys: bool = False) -> None:
        self.raw = raw
        self.fields = {
            (key if keep_keys else key[:1].upper() + key[1:]): _go(value, key in self.MAPS)
            for key, value in raw.items()
        }

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __str__(self) -> str:
        return json.dumps(self.raw, ensure_ascii=False, separators=(",", ":"))


def _go(value: Any, keep_keys: bool = False) -> Any:
    if isinstance(value, Mapping):
        return GoValue(value, keep_keys)
    if isinstance(value, list):
        return [_go(v) for v in value]
    return value


def build_prompt(
    template: str | None,
    conversation: list[Message],
    system: str | None = None,
    history: list[Message] | None = None,
    chat_template: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The prompt for the last user message of ``conversation``; ``tools`` (Ollama's
    shape) are the template's ``.Tools``."""
    if not template:
        if chat_template:
            return _jinja(chat_template, conversation, system, history or [], tools)
        return conversation[-1].content if conversation else ""
    messages: list[Message] = []
    if system:
        messages.append(Message("system", system))
    messages += history or []
    messages += conversation
    last_user = next((m.content for m in reversed(conversation) if m.role == "user"), "")
    data: dict[str, Any] = {
        "System": system or "",
        "Prompt": last_user,
        "Response": "",
        "Messages": [_go_message(m) for m in messages],
        "Tools": [_go(t) for t in tools] if tools else None,
    }
    return Template(template).render(data)


def _go_message(message: Message) -> dict[str, Any]:
    shown: dict[str, Any] = {"Role": message.role, "Content": message.content}
    if message.tool_calls:
        shown["ToolCalls"] = [_go(call) for call in message.tool_calls]
    if message.tool_name:
        shown["ToolName"] = message.tool_name
    return shown


def _jinja_message(message: Message) -> dict[str, Any]:
    shown: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        shown["tool_calls"] = [
            {"type": "function", **{k: dict(v) for k, v in call.items()}}
            for call in message.tool_calls
        ]
    if message.tool_name:
        shown["name"] = message.tool_name
    return shown


def _jinja(
    source: str,
    conversation: list[Message],
    system: str | None,
    history: list[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """A GGUF's Jinja chat template, rendered in a bounded sandbox as transformers would."""
    from cairn.template import jinja

    messages = ([Message("system", system)] if system else []) + history + conversation
    return jinja.render(
        source,
        {
            "messages": [_jinja_message(m) for m in messages],
            "tools": [dict(t) for t in tools] if tools else None,
            "add_generation_prompt": True,
            "bos_token": "",
            "eos_token": "",
        },
    )
