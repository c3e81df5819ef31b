"""``cairn ps`` and ``cairn stop``, and which running server the other commands go through.

The rule (``docs/cli.md``, "A running server"): ``ps`` and ``stop`` speak to
whatever server answers at ``CAIRN_HOST``; ``run`` goes through a server that
answers when it is the user's (``CAIRN_HOST`` is set, or the server serves
the store at ``CAIRN_MODELS``); ``list`` and ``pull`` go through one only
when ``CAIRN_HOST`` names it and it serves another store (with the same
store, working on the store directly gives the same answer). ``--local`` or
``CAIRN_NO_SERVER=1`` keeps every command off servers.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING

import click

from cairn import config
from cairn.cli import examples
from cairn.cli.completion import complete_model
from cairn.cli.output import human_size, say, table
from cairn.errors import CairnError, ModelNotFoundError, ServerError
from cairn.i18n import N_, Phrase, _
from cairn.sanitize import untrusted

if TYPE_CHECKING:
    from cairn.server.client import RunningModel, ServerClient

LOCAL_HELP = "Work on this machine's store and runners, never through a running server."


class Use(Enum):
    """What a command wants a server for."""

    SERVER = "server"
    """``ps``, ``stop``: only a server knows what it has loaded."""
    RUN = "run"
    """``run``: the server's models and its loaded runners."""
    STORE = "store"
    """``list``, ``pull``: the server's store, when it is not the one here."""


def _no_server() -> bool:
    value = os.environ.get("CAIRN_NO_SERVER", "").strip().lower()
    return value in ("1", "true", "yes", "on")


def connect(use: Use, local: bool = False) -> ServerClient | None:
    """The running server the command goes through, or None to do the work here."""
    if local or _no_server():
        return None
    from cairn.server.client import ServerClient, address, store_identity

    where = address()
    if use is Use.STORE and not where.given:
        return None  # the store at CAIRN_MODELS, unless CAIRN_HOST names a server
    client = ServerClient.from_environment()
    try:
        if not client.answers():
            client.close()
            return None
        if use is Use.SERVER or (use is Use.RUN and where.given):
            return client
        ours = store_identity(config.load().models)
        try:
            theirs = client.version().store
        except CairnError:  # a server that cannot say: not known to be this store
            theirs = None
        same = ours is not None and theirs == ours
        if same if use is Use.RUN else not same:
            return client
    except BaseException:
        client.close()
        raise
    client.close()
    return None


def server_url() -> str:
    from cairn.server.client import address

    return address().url


@click.command(epilog=examples.PS)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ps(as_json: bool) -> None:
    """List the models a running server holds loaded (NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL)."""
    client = connect(Use.SERVER)
    if client is None:
        if not as_json:
            click.echo(table(_headers(), []))
        say(
            Phrase("no server is running at {url}: nothing is loaded", url=server_url()),
            err=True,
        )
        if as_json:
            click.echo(json.dumps({"models": []}, indent=2))
        return
    with client:
        running = client.ps()
    if as_json:
        listed = [
            {
                "name": m.name,
                "digest": m.digest,
                "size": m.size,
                "size_vram": m.size_vram,
                "context_length": m.context_length,
                "expires_at": m.expires_at.isoformat().replace("+00:00", "Z")
                if m.expires_at
                else None,
            }
            for m in running
        ]
        click.echo(json.dumps({"models": listed}, indent=2, ensure_ascii=False))
        return
    click.echo(table(_headers(), [_row(m) for m in running]))


def _headers() -> tuple[str, ...]:
    return (_("NAME"), _("ID"), _("SIZE"), _("PROCESSOR"), _("CONTEXT"), _("UNTIL"))


def _row(model: RunningModel) -> tuple[str, ...]:
    return (
        untrusted(model.name),
        untrusted(model.digest[:12]),
        human_size(model.size),
        _processor(model.size, model.size_vram),
        str(model.context_length) if model.context_length else "-",
        human_until(model.expires_at),
    )


def _processor(size: int, vram: int) -> str:
    """Where the weights are, as ``ollama ps`` says it."""
    if vram == 0:
        return _("100% CPU")
    if vram == size:
        return _("100% GPU")
    if vram > size or size == 0:
        return _("Unknown")
    cpu = round((size - vram) / size * 100)
    return _("{cpu}%/{gpu}% CPU/GPU").format(cpu=cpu, gpu=100 - cpu)


FOREVER_SECONDS = 5 * 365 * 86400
"""Further off than this is for ever (the server says ten years for "kept for ever")."""


def human_until(then: datetime | None, now: float | None = None) -> str:
    """``4 minutes from now``, ``Forever``, ``Stopping...``: ``ollama ps``'s UNTIL."""
    if then is None:
        return _("Forever")
    seconds = then.timestamp() - (time.time() if now is None else now)
    if seconds > FOREVER_SECONDS:
        return _("Forever")
    if seconds < 0:
        return _("Stopping...")
    if seconds < 1:
        return _("Less than a second from now")
    for limit, unit, one, many in _UNTIL:
        if seconds < limit:
            count = int(round(seconds / unit) if unit >= 3600 else seconds // unit)
            return _(one) if count == 1 else _(many).format(count=count)
    raise AssertionError("unreachable")


_UNTIL = (  # (below, unit, one of them, several), as Ollama's format.HumanTime
    (60, 1, N_("1 second from now"), N_("{count} seconds from now")),
    (3600, 60, N_("About a minute from now"), N_("{count} minutes from now")),
    (86400 * 2, 3600, N_("About an hour from now"), N_("{count} hours from now")),
    (float("inf"), 86400, N_("1 day from now"), N_("{count} days from now")),
)


@click.command(epilog=examples.STOP)
@click.argument("model", shell_complete=complete_model)
def stop(model: str) -> None:
    """Unload MODEL from the running server now (as ollama stop does)."""
    client = connect(Use.SERVER)
    if client is None:
        raise ServerError(
            "no server is running at {url}: there is nothing to stop (start one with"
            " 'cairn serve')",
            url=server_url(),
        )
    with client:
        if not any(_same_model(model, m.name) for m in client.ps()):
            try:  # not loaded: nothing to do, unless there is no such model at all
                client.show(model)
            except ModelNotFoundError:
                raise ModelNotFoundError(
                    "couldn't find model {name!r} to stop", name=model
                ) from None
            return
        client.stop(model)


def _same_model(asked: str, listed: str) -> bool:
    from cairn.errors import InvalidReferenceError
    from cairn.manifests.reference import parse_reference

    try:
        return parse_reference(asked) == parse_reference(listed)
    except InvalidReferenceError:
        return asked == listed


COMMANDS = (ps, stop)
