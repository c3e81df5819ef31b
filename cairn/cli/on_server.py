"""``run``, ``list`` and ``pull`` through a running server (see :func:`cairn.cli.server.connect`).

The output is what the same command prints when it does the work itself: the
answer streamed, ``--verbose``'s lines, the pull's bars, the list's table, and the
chat's commands (``/show info``, ``/show modelfile``, ``/save``, ``/load``) through
the server's API, as Ollama's CLI asks them of its server.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any

import click

from cairn.cli.output import human_age, human_size, table
from cairn.errors import ModelNotFoundError
from cairn.i18n import _
from cairn.sanitize import untrusted, untrusted_json

if TYPE_CHECKING:
    from collections.abc import Callable

    from cairn.cli.chat import ChatState, ServerSession, Session
    from cairn.runtime_plugins.prompt import Message
    from cairn.server.client import ServerClient, ShownModel


def run_on_server(
    client: ServerClient,
    model: str,
    prompt: str | None,
    overrides: dict[str, Any],
    output_format: str | None,
    insecure: bool,
    verbose: bool,
    raw: bool,
    *,
    keep_alive: str | None = None,
    wrap: bool = True,
) -> None:
    """``cairn run`` through the server: pulled there first if it lacks the model, then
    a chat (``/api/chat``) on a terminal, else one answer (``/api/generate``).
    ``keep_alive`` (``--keepalive``) goes with every request, as Ollama's CLI sends it."""
    from cairn.cli.run import _verbose, _write

    alive = keep_alive_value(keep_alive)
    try:
        shown = client.show(model)
    except ModelNotFoundError:
        pull_on_server(client, model, insecure)
        shown = client.show(model)
    options = dict(overrides)
    if "stop" in options:  # -p stop= adds to the model's stops, as a run here does
        options["stop"] = [*shown.parameter("stop"), *options["stop"]]
    if prompt is None and sys.stdin.isatty():
        from cairn.cli.chat import ServerSession, chat

        session = ServerSession(client, model, options, output_format, alive)
        commands = ServerModel(session, shown)
        chat(
            session,
            options,
            commands.describe,
            raw,
            model=commands,
            system=shown.system or None,
            verbose=verbose,
            wrap=wrap,
        )
        return
    if prompt is None:
        prompt = sys.stdin.read()
    stats: dict[str, Any] = {}
    printed = False
    chunks = client.generate(model, prompt, options, output_format, alive)
    try:
        with contextlib.closing(chunks):  # closed: the server stops the answer
            for chunk in chunks:
                if chunk.done:
                    stats = dict(chunk.stats)
                else:
                    _write(chunk.text if raw else untrusted(chunk.text, multiline=True))
                    printed = True
    except BaseException:
        if printed:
            click.echo()  # what follows goes on a line of its own
        raise
    click.echo()
    if verbose:
        _verbose(float(stats.get("load_duration", 0.0)), stats)


def keep_alive_value(text: str | None) -> float | None:
    """``--keepalive`` (Go's duration syntax, checked already) as the API's ``keep_alive``:
    seconds, -1 (for ever) when negative. A number, which Ollama and ``cairn serve`` both
    read, where the text (``1h30m``) is not read by every server."""
    from cairn.durations import go_duration

    if text is None:
        return None
    seconds = go_duration(text) or 0.0
    if seconds < 0:
        return -1
    return int(seconds) if seconds.is_integer() else seconds


class ServerModel:
    """The chat's ``/show``, ``/show info``, ``/show modelfile``, ``/save`` and ``/load``
    through the server: what ``/api/show`` says, ``/api/create`` as Ollama's ``/save``
    sends it (``from``, ``system``, ``parameters``, ``messages``)."""

    def __init__(self, session: ServerSession, shown: ShownModel) -> None:
        self.session = session
        self.shown = shown

    def describe(self) -> str:
        """``/show``: the model's parameters and the session's, then the template."""
        lines = [f"  {line}" for line in self.shown.parameters.splitlines()]
        lines += [f"  {k}: {v}" for k, v in sorted(self.session.options.items())]
        return "\n".join([_("Parameters:"), *lines, _("Template:"), self.shown.template])

    def info(self) -> str:
        """``/show info``: the sections ``cairn show`` prints, from ``/api/show``."""
        from cairn.cli.models import show_sections

        shown = self.shown
        return show_sections(
            [(key, value) for key, value in shown.summary],
            shown.capabilities,
            dict(shown.projector) if shown.projector else None,
            shown.parameters,
            shown.system,
            shown.license,
            [
                (d.media_type, d.name or d.digest.removeprefix("sha256:")[:12], d.size)
                for d in shown.layers
            ],
        )

    def modelfile(self, state: ChatState) -> str:
        """``/show modelfile``: FROM the session's model, its parameters and those set,
        the system message, its messages and the conversation."""
        from cairn.modelfile import Message as Said
        from cairn.modelfile import render_modelfile

        return render_modelfile(
            self.session.model,
            system=state.system,
            parameters={**self._parameters(), **state.changed},
            messages=[Said(m.role, m.content) for m in self._messages(state)],
            strict=True,
        )

    def save(self, name: str, state: ChatState) -> None:
        self.session.client.create(
            name, self.session.model, state.system, state.changed, self._messages(state)
        )

    def load(self, name: str) -> tuple[Session, dict[str, Any], Callable[[], str]]:
        from cairn.cli.chat import ServerSession

        old = self.session
        shown = old.client.show(name)  # a model the server lacks: an error, nothing changed
        self.session = ServerSession(old.client, name, {}, old.output_format, old.keep_alive)
        self.shown = shown
        return self.session, self.session.options, self.describe

    def _messages(self, state: ChatState) -> list[Message]:
        return [*self.shown.messages, *state.conversation]

    def _parameters(self) -> dict[str, Any]:
        """The model's parameters, typed, from ``/api/show``'s text (one a line, strings
        quoted); a name cairn does not know (from Ollama) is left out."""
        from cairn.errors import CairnError
        from cairn.modelfile import PARAMETER_TYPES, convert_parameter

        def typed(key: str, value: str) -> Any:
            with contextlib.suppress(ValueError, OverflowError):
                number = float(value)  # Go writes a float64: 1e+06 for num_ctx 1000000
                if number.is_integer() and PARAMETER_TYPES.get(key) is int:
                    value = str(int(number))
            return convert_parameter(key, value)

        values: dict[str, Any] = {}
        keys = dict.fromkeys(line.split(" ", 1)[0] for line in self.shown.parameters.splitlines())
        for key in keys:
            for value in self.shown.parameter(key):
                with contextlib.suppress(CairnError):
                    found = typed(key, value)
                    values[key] = [*values.get(key, []), *found] if key == "stop" else found
        return values


def pull_on_server(
    client: ServerClient, name: str, insecure: bool, as_json: bool = False, quiet: bool = False
) -> None:
    """The server pulls ``name``; its progress shown as a pull here shows its own."""
    from cairn.cli.progress import Reporter

    reporter = Reporter(as_json, quiet)
    try:
        for event in client.pull(name, insecure):
            reporter(event)
    finally:
        reporter.close()


def list_on_server(client: ServerClient, as_json: bool) -> None:
    """``cairn list`` of the server's store."""
    from cairn.errors import InvalidReferenceError
    from cairn.manifests.reference import parse_reference

    found = client.tags()
    if as_json:

        def full(name: str) -> str:
            try:
                return str(parse_reference(name))
            except InvalidReferenceError:
                return name

        listed = [
            {
                "name": m.name,
                "model": full(m.name),
                "id": m.digest[:12],
                "digest": f"sha256:{m.digest}",
                "size": m.size,
                "modified_at": m.modified_at.isoformat().replace("+00:00", "Z")
                if m.modified_at
                else None,
            }
            for m in found
        ]
        text = json.dumps({"models": listed, "errors": []}, indent=2, ensure_ascii=False)
        click.echo(untrusted_json(text))
        return
    rows = [
        (
            untrusted(m.name),
            untrusted(m.digest[:12]),
            human_size(m.size),
            human_age(m.modified_at.timestamp()) if m.modified_at else "-",
        )
        for m in found
    ]
    click.echo(table((_("NAME"), _("ID"), _("SIZE"), _("MODIFIED")), rows))
