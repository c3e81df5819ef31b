"""``run``, ``list`` and ``pull`` through a running server (see :func:`cairn.cli.server.connect`).

The output is what the same command prints when it does the work itself: the
answer streamed, ``--verbose``'s lines, the pull's bars, the list's table.
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
    from cairn.server.client import ServerClient


def run_on_server(
    client: ServerClient,
    model: str,
    prompt: str | None,
    overrides: dict[str, Any],
    output_format: str | None,
    insecure: bool,
    verbose: bool,
    raw: bool,
) -> None:
    """``cairn run`` through the server: pulled there first if it lacks the model, then
    a chat (``/api/chat``) on a terminal, else one answer (``/api/generate``)."""
    from cairn.cli.run import _verbose, _write

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

        def describe() -> str:
            lines = [f"  {line}" for line in shown.parameters.splitlines()]
            lines += [f"  {k}: {v}" for k, v in sorted(options.items())]
            return "\n".join([_("Parameters:"), *lines, _("Template:"), shown.template])

        chat(ServerSession(client, model, options, output_format), options, describe, raw)
        return
    if prompt is None:
        prompt = sys.stdin.read()
    stats: dict[str, Any] = {}
    printed = False
    chunks = client.generate(model, prompt, options, output_format)
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
