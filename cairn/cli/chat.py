"""The interactive chat of ``cairn run MODEL`` on a terminal, in the manner of ``ollama run``:
with a runner of its own, or through a running server."""

from __future__ import annotations

import codecs
import contextlib
import shutil
import sys
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

import click

from cairn.cli.output import WordWrapper, say
from cairn.errors import CairnError, ConfigError
from cairn.i18n import _
from cairn.modelfile import convert_parameter
from cairn.runtime_plugins.prompt import Message, build_prompt
from cairn.runtime_plugins.runner import Runner
from cairn.runtime_plugins.runtime import Chunk
from cairn.sanitize import untrusted

if TYPE_CHECKING:
    from cairn.server.client import ServerClient

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


class Session(Protocol):
    """Where the chat's answers come from: a runner of its own, or a running server."""

    def start(self) -> None:
        """Load the model before the first message, so that a failure shows at once."""

    def answer(
        self, conversation: list[Message], options: dict[str, Any]
    ) -> Generator[Chunk, None, None]:
        """The answer to the conversation so far, streamed; closed early on Ctrl-C."""

    def interrupt(self) -> None:
        """Ctrl-C during an answer: whatever generates it stops now."""

    def close(self) -> None:
        """The chat is over."""


class LocalSession:
    """Answers from a runner this process starts (and restarts after a Ctrl-C)."""

    def __init__(
        self,
        start: Callable[[], Runner],
        template: str | None,
        system: str | None,
        history: list[Message],
        chat_template: str | None = None,
    ) -> None:
        self._start = start
        self.template = template
        self.system = system
        self.history = history
        self.chat_template = chat_template
        self.runner: Runner | None = None

    def start(self) -> None:
        if self.runner is None:
            self.runner = self._start()

    def answer(
        self, conversation: list[Message], options: dict[str, Any]
    ) -> Generator[Chunk, None, None]:
        self.start()  # after a Ctrl-C stopped the last one
        assert self.runner is not None
        prompt = build_prompt(
            self.template, conversation, self.system, self.history, self.chat_template
        )
        yield from self.runner.generate(prompt, options)

    def interrupt(self) -> None:
        if self.runner is not None:
            self.runner.stop()  # the only way to stop native code mid-token
        self.runner = None  # a new one starts with the next message: the prompt is back now

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


class ServerSession:
    """Answers from a running server's ``/api/chat`` (it keeps the model loaded)."""

    def __init__(
        self, client: ServerClient, model: str, options: dict[str, Any], output_format: str | None
    ) -> None:
        self.client = client
        self.model = model
        self.options = options
        self.output_format = output_format

    def start(self) -> None:
        self.client.load(self.model, self.options)

    def answer(
        self, conversation: list[Message], options: dict[str, Any]
    ) -> Generator[Chunk, None, None]:
        # Closing this closes the connection, and the server stops the answer.
        yield from self.client.chat(self.model, conversation, options, self.output_format)

    def interrupt(self) -> None:
        pass  # the closed stream was enough

    def close(self) -> None:
        pass  # the model stays loaded for its keep_alive, as after `ollama run`


def chat(
    session: Session,
    options: dict[str, Any],
    describe: Callable[[], str],
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
    session.start()
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
                wrapper = WordWrapper(shutil.get_terminal_size().columns)
                chunks = session.answer(conversation, options)
                with contextlib.closing(chunks):
                    for chunk in chunks:
                        if not chunk.done:
                            answer.append(chunk.text)
                            shown = chunk.text if raw else untrusted(chunk.text, multiline=True)
                            click.echo(wrapper.feed(shown), nl=False)
                            sys.stdout.flush()
                click.echo(wrapper.finish(), nl=False)
                click.echo("\n")
                conversation.append(Message("assistant", "".join(answer)))
            except KeyboardInterrupt:
                session.interrupt()
                click.echo()
                del conversation[kept:]
                continue
    finally:
        session.close()
