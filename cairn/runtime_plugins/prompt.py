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

from dataclasses import dataclass
from typing import Any

from cairn.template import Template


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def build_prompt(
    template: str | None,
    conversation: list[Message],
    system: str | None = None,
    history: list[Message] | None = None,
    chat_template: str | None = None,
) -> str:
    """The prompt for the last user message of ``conversation``."""
    if not template:
        if chat_template:
            return _jinja(chat_template, conversation, system, history or [])
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
        "Messages": [{"Role": m.role, "Content": m.content} for m in messages],
        "Tools": None,
    }
    return Template(template).render(data)


def _jinja(
    source: str, conversation: list[Message], system: str | None, history: list[Message]
) -> str:
    """A GGUF's Jinja chat template, rendered in a bounded sandbox as transformers would."""
    from cairn.template import jinja

    messages = ([Message("system", system)] if system else []) + history + conversation
    return jinja.render(
        source,
        {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "add_generation_prompt": True,
            "bos_token": "",
            "eos_token": "",
        },
    )
