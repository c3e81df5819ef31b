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
    """A GGUF's Jinja chat template, rendered in a sandbox as transformers would."""
    try:
        from jinja2 import TemplateError as JinjaError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # jinja2 comes with llama-cpp-python; without it, the prompt as is
        return conversation[-1].content if conversation else ""

    from cairn.errors import TemplateError

    messages = ([Message("system", system)] if system else []) + history + conversation

    def fail(message: str) -> None:
        raise TemplateError("the GGUF chat template says: {said}", said=message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = fail
    try:
        return environment.from_string(source).render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            bos_token="",
            eos_token="",
        )
    except JinjaError as exc:
        raise TemplateError("the GGUF chat template failed: {exc}", exc=exc) from None
