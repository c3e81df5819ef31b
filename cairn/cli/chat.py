"""The interactive chat of ``cairn run MODEL`` on a terminal, in the manner of ``ollama run``:
with a runner of its own, or through a running server."""

from __future__ import annotations

import codecs
import contextlib
import shutil
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
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
  /set                        set a parameter, the system message, the format, ...
  /show                       show the model's parameters and template (/show info, ...)
  /load NAME                  load another model (the conversation stays)
  /save NAME                  save the session as a new model
  /clear                      forget the conversation
  /bye                        exit
  /?, /help                   this help
Use \"\"\" to begin a multi-line message, and \"\"\" again to end it."""

SET_HELP = """Available /set commands:
  /set parameter NAME VALUE   set a parameter (temperature, num_predict, stop, ...)
  /set system TEXT            set the system message
  /set format json            answer in JSON
  /set noformat               answer in free text again
  /set verbose                show timings after each answer
  /set quiet                  show no timings"""

SHOW_HELP = """Available /show commands:
  /show info                  the model: architecture, parameters, capabilities
  /show modelfile             a Modelfile that recreates the session's model
  /show parameters            the parameters in use
  /show system                the system message
  /show template              the prompt template"""


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
    """Answers from a running server's ``/api/chat`` (it keeps the model loaded for
    ``keep_alive``, sent with every request as Ollama's CLI sends it; None: the server's
    default)."""

    def __init__(
        self,
        client: ServerClient,
        model: str,
        options: dict[str, Any],
        output_format: str | None,
        keep_alive: float | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.options = options
        self.output_format = output_format
        self.keep_alive = keep_alive

    def start(self) -> None:
        self.client.load(self.model, self.options, self.keep_alive)

    def answer(
        self, conversation: list[Message], options: dict[str, Any]
    ) -> Generator[Chunk, None, None]:
        # Closing this closes the connection, and the server stops the answer.
        yield from self.client.chat(
            self.model, conversation, options, self.output_format, self.keep_alive
        )

    def interrupt(self) -> None:
        pass  # the closed stream was enough

    def close(self) -> None:
        pass  # the model stays loaded for its keep_alive, as after `ollama run`


class ModelCommands(Protocol):
    """What ``/show info``, ``/show modelfile``, ``/save`` and ``/load`` need of the model."""

    def info(self) -> str:
        """``/show info``: the model's sections, as ``cairn show`` prints them."""

    def modelfile(self, state: ChatState) -> str:
        """``/show modelfile``: a Modelfile that recreates the session's model."""

    def save(self, name: str, state: ChatState) -> None:
        """``/save NAME``: a new model from this one, with the session's system message,
        parameters and messages."""

    def load(self, name: str) -> tuple[Session, dict[str, Any], Callable[[], str]]:
        """``/load NAME``: the session, options and ``/show`` text of another model."""


@dataclass
class ChatState:
    """What the chat's commands change: the conversation, and how answers are asked for."""

    options: dict[str, Any]
    conversation: list[Message] = field(default_factory=list)
    system: str | None = None
    verbose: bool = False
    changed: dict[str, Any] = field(default_factory=dict)
    """The parameters set with ``/set parameter`` (what ``/save`` writes)."""


def _set(session: Session, state: ChatState, command: str) -> None:
    """``/set ...``: Ollama's subcommands; a wrong one is answered with the list."""
    parts = command.split(maxsplit=2)
    what = parts[1] if len(parts) > 1 else ""
    if what == "parameter":
        parts = command.split(maxsplit=3)
        if len(parts) != 4:
            click.echo(_("Usage: /set parameter NAME VALUE"))
            return
        try:
            value = convert_parameter(parts[2], parts[3])
        except CairnError as exc:
            say(exc, label="Error")
            return
        state.options[parts[2]] = value
        state.changed[parts[2]] = value
        click.echo(_("Set parameter '{name}' to '{value}'").format(name=parts[2], value=parts[3]))
    elif what == "system" and len(parts) == 3:
        text = parts[2].strip()
        if text.startswith('"""') and text.endswith('"""') and len(text) >= 6:
            text = text[3:-3]
        state.system = text
        message = Message("system", text)
        if state.conversation and state.conversation[-1].role == "system":
            state.conversation[-1] = message
        else:
            state.conversation.append(message)
        click.echo(_("Set system message."))
    elif what == "format" and len(parts) == 3 and parts[2].strip() == "json":
        _set_format(session, state, "json")
        click.echo(_("Set format to '{format}' mode.").format(format="json"))
    elif what == "noformat" and len(parts) == 2:
        _set_format(session, state, None)
        click.echo(_("Disabled format."))
    elif what in ("verbose", "quiet") and len(parts) == 2:
        state.verbose = what == "verbose"
        click.echo(_("Set 'verbose' mode.") if state.verbose else _("Set 'quiet' mode."))
    else:
        shown = " ".join(command.split()[:2])
        click.echo(_("Unknown command '{command}'.").format(command=shown))
        click.echo(_(SET_HELP))


def _set_format(session: Session, state: ChatState, value: str | None) -> None:
    if isinstance(session, ServerSession):
        session.output_format = value
    elif value is None:
        state.options.pop("format", None)
    else:
        state.options["format"] = value


def _show(
    command: str, state: ChatState, describe: Callable[[], str], model: ModelCommands
) -> None:
    """``/show`` and its subcommands; a wrong one is answered with the list."""
    parts = command.split()
    what = parts[1] if len(parts) == 2 else ("" if len(parts) == 1 else None)
    if what == "":
        click.echo(describe())
    elif what == "info":
        click.echo(model.info())
    elif what == "modelfile":
        try:
            click.echo(model.modelfile(state), nl=False)
        except CairnError as exc:
            say(exc, label="Error")
    elif what == "parameters":
        lines = [f"  {k}: {v}" for k, v in sorted(state.options.items())]
        click.echo("\n".join([_("Parameters:"), *lines]))
    elif what == "system":
        click.echo(state.system or _("No system message was specified for this model."))
    elif what == "template":
        text = describe()
        click.echo(text.partition(_("Template:") + "\n")[2] or text)
    else:
        click.echo(_("Unknown command '{command}'.").format(command=" ".join(parts[:2])))
        click.echo(_(SHOW_HELP))


def _print_stats(stats: dict[str, Any]) -> None:
    from cairn.cli.run import _verbose

    _verbose(float(stats.get("load_duration", 0.0)), stats)


def chat(
    session: Session,
    options: dict[str, Any],
    describe: Callable[[], str],
    raw: bool = False,
    *,
    model: ModelCommands,
    system: str | None = None,
    verbose: bool = False,
    wrap: bool = True,
) -> None:
    """Read, generate, print, until /bye or end of input.

    The answer is shown with escape sequences neutralised (``\x1b`` shown, not
    obeyed) unless ``raw``; the conversation keeps it as generated. ``model``
    serves ``/show info``, ``/show modelfile``, ``/save`` and ``/load``.
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
    state = ChatState(options, system=system, verbose=verbose)
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
            conversation = state.conversation
            kept = len(conversation)
            try:  # whatever the line asked, Ctrl-C stops it and the chat goes on
                command = text.strip()
                word = command.split()[0] if command else ""
                if not command:
                    continue
                if command in ("/bye", "/exit"):
                    return
                if command in ("/?", "/help"):
                    click.echo(_(HELP))
                    continue
                if command == "/clear":
                    conversation.clear()
                    if state.system:
                        conversation.append(Message("system", state.system))
                    click.echo(_("Cleared session context"))
                    continue
                if word == "/show":
                    _show(command, state, describe, model)
                    continue
                if word == "/set":
                    _set(session, state, command)
                    continue
                if word in ("/save", "/load"):
                    parts = command.split()
                    if len(parts) != 2:
                        click.echo(_("Usage: {command} NAME").format(command=word))
                    elif word == "/save":
                        try:
                            model.save(parts[1], state)
                        except CairnError as exc:
                            say(exc, label="Error")
                            continue
                        click.echo(_("Created new model '{name}'").format(name=parts[1]))
                    else:
                        click.echo(_("Loading model '{name}'").format(name=parts[1]))
                        try:
                            loaded = model.load(parts[1])
                        except CairnError as exc:
                            say(exc, label="Error")
                            continue
                        session.close()
                        session, state.options, describe = loaded
                        state.changed.clear()
                        session.start()
                    continue
                if command.startswith("/"):
                    click.echo(
                        _("Unknown command '{command}'. Type /? for help").format(command=word)
                    )
                    continue
                conversation.append(Message("user", text))
                answer = []
                stats: dict[str, Any] = {}
                columns = shutil.get_terminal_size().columns if wrap else 10**9
                wrapper = WordWrapper(columns)
                chunks = session.answer(conversation, state.options)
                with contextlib.closing(chunks):
                    for chunk in chunks:
                        if chunk.done:
                            stats = dict(chunk.stats)
                        else:
                            answer.append(chunk.text)
                            shown = chunk.text if raw else untrusted(chunk.text, multiline=True)
                            click.echo(wrapper.feed(shown), nl=False)
                            sys.stdout.flush()
                click.echo(wrapper.finish(), nl=False)
                click.echo("\n")
                conversation.append(Message("assistant", "".join(answer)))
                if state.verbose:
                    _print_stats(stats)
            except KeyboardInterrupt:
                session.interrupt()
                click.echo()
                del conversation[kept:]
                continue
    finally:
        session.close()
