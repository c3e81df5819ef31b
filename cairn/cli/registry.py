"""Commands that talk to registries: pull, push, login, logout."""

from __future__ import annotations

import re
import sys

import click

from cairn.cli import examples
from cairn.cli.completion import complete_model
from cairn.cli.output import parse_size, say
from cairn.cli.server import LOCAL_HELP, Use, connect
from cairn.errors import AuthenticationError, ConfigError, InvalidReferenceError
from cairn.i18n import Phrase, _
from cairn.manifests.reference import parse_reference
from cairn.registry.clients import (  # httpx and the rest load when a command runs
    credential_store,
    make_client,
    pull_configured,
)
from cairn.sanitize import untrusted


@click.command(epilog=examples.PULL)
@click.argument("name")
@click.option("--insecure", is_flag=True, help="Use plain HTTP (no TLS), as Ollama's --insecure.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print progress as NDJSON lines.")
@click.option(
    "--limit-rate",
    metavar="RATE",
    help="At most this many bytes per second (K, M, G suffixes; 0: no limit).",
)
@click.option("--local", is_flag=True, help=LOCAL_HELP)
def pull(
    name: str, insecure: bool, quiet: bool, as_json: bool, limit_rate: str | None, local: bool
) -> None:
    """Pull model NAME from its registry into the store.

    NAME is [HOST[:PORT]/][NAMESPACE/]MODEL[:TAG], or MODEL@sha256:DIGEST for
    exactly that manifest; without a host it comes from registry.ollama.ai.
    """
    from cairn.cli.progress import Reporter

    ref = parse_reference(name)
    client = connect(Use.STORE, local)
    if client is not None:  # a server named by $CAIRN_HOST, over another store
        from cairn.cli.on_server import pull_on_server

        with client:
            if rate(limit_rate):
                raise ConfigError(
                    "--limit-rate applies to a pull cairn makes itself, not to one the"
                    " server at {url} makes (--local pulls into the store here)",
                    url=client.url,
                )
            pull_on_server(client, name, insecure, as_json, quiet)
        return
    reporter = Reporter(as_json, quiet)

    limit = rate(limit_rate)  # a bad rate is an error before anything is shown

    async def run() -> None:
        from cairn.manifests.models import Models

        await pull_configured(Models.from_environment(), ref, insecure, reporter, limit)

    try:
        import asyncio

        asyncio.run(run())
    finally:
        reporter.close()


@click.command(epilog=examples.PUSH)
@click.argument("source", shell_complete=complete_model)
@click.argument("destination", required=False)
@click.option("--insecure", is_flag=True, help="Use plain HTTP (no TLS), as Ollama's --insecure.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ollama", "oci"]),
    default="ollama",
    help="Ollama's manifest (default) or an OCI artifact that skopeo and oras read.",
)
@click.option(
    "--chunk-size",
    default="64M",
    metavar="SIZE",
    help="Upload large blobs in chunks of this size.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print progress as NDJSON lines.")
@click.option(
    "--limit-rate",
    metavar="RATE",
    help="At most this many bytes per second (K, M, G suffixes; 0: no limit).",
)
def push(
    source: str,
    destination: str | None,
    insecure: bool,
    fmt: str,
    chunk_size: str,
    quiet: bool,
    as_json: bool,
    limit_rate: str | None,
) -> None:
    """Push model SOURCE to a registry, as DESTINATION (default: SOURCE's own name).

    DESTINATION needs a host: HOST[:PORT]/NAMESPACE/NAME[:TAG]. A name without
    one means registry.ollama.ai.
    """
    from cairn.cli.progress import Reporter
    from cairn.manifests.models import Models
    from cairn.registry.push import push as do_push

    models = Models.from_environment()
    if destination is not None and _bare_registry(destination):
        # "127.0.0.1:5055" parses as the model 127.0.0.1, tag 5055, of registry.ollama.ai:
        # a push there was never what the user meant.
        raise InvalidReferenceError(
            "{destination} is a registry, not a model name: push to a repository on it,"
            " as in {destination}/library/{name}",
            destination=untrusted(destination),
            name=models.get(source).reference.display.rpartition("/")[2],
        )
    dest = parse_reference(destination) if destination else models.get(source).reference
    limit = rate(limit_rate)
    reporter = Reporter(as_json, quiet)

    async def run() -> str:
        async with make_client(dest, insecure, limit) as client:
            return await do_push(
                models, source, dest, client, fmt, parse_size(chunk_size), reporter
            )

    try:
        import asyncio

        digest = asyncio.run(run())
    finally:
        reporter.close()
    if not as_json and not quiet:
        say(Phrase("pushed {model} {digest}", model=dest.display, digest=digest))


@click.command(epilog=examples.LOGIN)
@click.argument("host")
@click.option("-u", "--username", metavar="USER", help="The user name (asked for when not given).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--insecure", is_flag=True, help="Check the credentials over plain HTTP.")
def login(host: str, username: str | None, password_stdin: bool, insecure: bool) -> None:
    """Store credentials for HOST (in $CAIRN_HOME/auth.json, mode 0600), after checking them."""
    if password_stdin and username is None:
        raise ConfigError("--password-stdin needs the user name too: give it with -u USER")
    if not password_stdin and not sys.stdin.isatty():
        # click would read the answers from the pipe, or wait on it for ever.
        raise ConfigError(
            "no terminal to ask for the password on: pipe it in with --password-stdin"
            " (and give the user with -u USER)"
        )
    if username is None:
        username = click.prompt(_("Username"))
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(_("Password"), hide_input=True)

    from cairn.registry.auth import Credentials

    credentials = Credentials(username, password)

    async def check() -> None:
        ref = parse_reference(f"{host}/library/x")
        client = make_client(ref, insecure)
        client.credentials = credentials
        async with client:
            response = await client.request("GET", "/v2/", scope="*")
            if response.status_code in (401, 403):
                raise AuthenticationError(
                    "{host} refused the credentials for {username}", host=host, username=username
                )
            client.check(response, Phrase("{host} is not an OCI registry", host=host))

    import asyncio

    asyncio.run(check())
    credential_store().save(host, credentials)
    say(Phrase("Login Succeeded"))


@click.command(epilog=examples.LOGOUT)
@click.argument("host")
def logout(host: str) -> None:
    """Forget the stored credentials for HOST."""
    if not credential_store().remove(host):
        raise ConfigError("not logged in to {host}", host=host)
    say(Phrase("Removed login credentials for {host}", host=host))


COMMANDS = (pull, push, login, logout)


_ZERO = re.compile(r"0+(\.0*)?\s*([kmg]i?)?b?", re.IGNORECASE)


def rate(text: str | None) -> int | None:
    """``--limit-rate``: bytes per second, or None for no limit (not given, or 0 as curl
    and wget read it)."""
    if text is None or _ZERO.fullmatch(text.strip()):
        return None
    return parse_size(text)


_HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::(?P<port>[0-9]{1,5}))?")
_IPV4 = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}")


def _bare_registry(text: str) -> bool:
    """A destination that names only a registry (``127.0.0.1:5055``, ``localhost:5000``,
    ``registry.example.com:443``), no model.

    It reads as docker and skopeo read it: an IPv4 or IPv6 address, ``localhost``, or a
    dotted name whose last label is a word (a domain), with a port unless it is
    ``localhost``. ``qwen2.5:7`` or ``llama3.1:8`` stay model names.
    """
    text = text.removeprefix("http://").removeprefix("https://").rstrip("/")
    found = _HOST_PORT.fullmatch(text)
    if found is None:
        return False
    host, port = found.group("host"), found.group("port")
    if host.casefold() == "localhost" or host.startswith("["):
        return True
    domain = "." in host and host.rpartition(".")[2].isalpha()
    return port is not None and (_IPV4.fullmatch(host) is not None or domain)
