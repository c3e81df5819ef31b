"""The interactive chat of ``cairn run MODEL`` on a terminal, in the manner of ``ollama run``."""

from __future__ import annotations

import codecs
import contextlib
import shutil
import sys
from collections.abc import Callable
from typing import Any

import click

from cairn.cli.output import WordWrapper, say
from cairn.errors import CairnError, ConfigError
from cairn.i18n import _
from cairn.modelfile import convert_parameter
from cairn.runtime_plugins.prompt import Message, build_prompt
from cairn.runtime_plugins.runner import Runner
from cairn.sanitize import untrusted

HELP = """Available commands:
  /set parameter NAME VALUE   set a parameter (temperature, num_predict, stop, ...)
  /show                       show the model's parameters and template
  /clear                      forget the conversation
  /bye                        exit
  /?, /help                   this help
Use \"\"\" to begin a multi-line message, and \"\"\" again to end it."""


def _read(prompt: str) -> str:
    """One message: a line, or lines between triple quotes."""
    line = input(prompt)
    if not line.lstrip().startswith('"""'):
        return line
    text = line.lstrip()[3:]
    while not text.rstrip().endswith('"""'):
        text += "\n" + input("... ")
    return text.rstrip()[:-3]


def chat(
    start: Callable[[], Runner],
    template: str | None,
    system: str | None,
    history: list[Message],
    options: dict[str, Any],
    describe: Callable[[], str],
    chat_template: str | None = None,
    raw: bool = False,
) -> None:
    """Read, generate, print, until /bye or end of input.

    The answer is shown with escape sequences neutralised (``\x1b`` shown, not
    obeyed) unless ``raw``; the conversation keeps it as generated.
    """
    for stream in (sys.stdin, sys.stdout):
        if codecs.lookup(getattr(stream, "encoding", None) or "ascii").name != "utf-8":
            raise ConfigError(
                "the terminal's encoding is {encoding}, not UTF-8: Korean and other"
                " non-ASCII text would be garbled; use a UTF-8 locale"
                " (LANG=ko_KR.UTF-8 or LANG=C.UTF-8)",
                encoding=stream.encoding or "unknown",
            )
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()
    runner: Runner | None = start()
    conversation: list[Message] = []
    try:
        while True:
            try:
                text = _read(_(">>> "))
            except EOFError:
                click.echo()
                return
            except KeyboardInterrupt:
                click.echo("\n" + _("Use Ctrl + d or /bye to exit."))
                continue
            kept = len(conversation)
            try:  # whatever the line asked, Ctrl-C stops it and the chat goes on
                command = text.strip()
                if not command:
                    continue
                if command in ("/bye", "/exit"):
                    return
                if command in ("/?", "/help"):
                    click.echo(_(HELP))
                    continue
                if command == "/clear":
                    conversation.clear()
                    click.echo(_("Cleared session context"))
                    continue
                if command == "/show":
                    click.echo(describe())
                    continue
                if command.startswith("/set parameter"):
                    parts = command.split(maxsplit=3)
                    if len(parts) != 4:
                        click.echo(_("Usage: /set parameter NAME VALUE"))
                        continue
                    try:
                        value = convert_parameter(parts[2], parts[3])
                    except CairnError as exc:
                        say(exc, label="Error")
                        continue
                    options[parts[2]] = value
                    click.echo(
                        _("Set parameter '{name}' to '{value}'").format(
                            name=parts[2], value=parts[3]
                        )
                    )
                    continue
                if command.startswith("/"):
                    click.echo(
                        _("Unknown command '{command}'. Type /? for help").format(
                            command=command.split()[0]
                        )
                    )
                    continue
                conversation.append(Message("user", text))
                answer = []
                if runner is None:  # stopped by the last Ctrl-C
                    runner = start()
                prompt = build_prompt(template, conversation, system, history, chat_template)
                wrapper = WordWrapper(shutil.get_terminal_size().columns)
                for chunk in runner.generate(prompt, options):
                    if not chunk.done:
                        answer.append(chunk.text)
                        shown = chunk.text if raw else untrusted(chunk.text, multiline=True)
                        click.echo(wrapper.feed(shown), nl=False)
                        sys.stdout.flush()
                click.echo(wrapper.finish(), nl=False)
                click.echo("\n")
                conversation.append(Message("assistant", "".join(answer)))
            except KeyboardInterrupt:
                if runner is not None:
                    runner.stop()  # the only way to stop native code mid-token
                runner = None  # a new one starts with the next message: the prompt is back now
                click.echo()
                del conversation[kept:]
                continue
    finally:
        if runner is not None:
            runner.close()
