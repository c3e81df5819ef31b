"""Turning a conversation into the text a model continues, with the model's template.

The template layer is Ollama's Go-template language (``cairn.template``). It
is given ``.System``, ``.Prompt``, ``.Response`` (empty) and ``.Messages``
(the system message, the model's own MESSAGE history, then the
conversation), so both kinds of Ollama template work: the older ones that
use ``.System``/``.Prompt`` and the newer ones that range over
``.Messages``. A model without a template gets the prompt as it is.
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
) -> str:
    """The prompt for the last user message of ``conversation``."""
    if not template:
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
