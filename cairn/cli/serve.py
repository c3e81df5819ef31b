"""``cairn serve`` (Ollama's API over the store) and ``cairn registry serve`` (the store as
an OCI registry)."""

from __future__ import annotations

from pathlib import Path

import click

from cairn import config
from cairn.cli import examples
from cairn.cli.output import say
from cairn.i18n import Phrase


@click.group(epilog=examples.REGISTRY)
def registry() -> None:
    """Run an OCI registry over the store."""


@registry.command(epilog=examples.REGISTRY_SERVE)
@click.option(
    "--addr",
    default="127.0.0.1:5000",
    show_default=True,
    metavar="HOST:PORT",
    help="HOST:PORT to listen on.",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="The store to serve (default: $CAIRN_MODELS).",
)
@click.option(
    "--default-host",
    default=config.DEFAULT_HOST,
    metavar="HOST",
    show_default=True,
    help="The store host that ns/name repositories map to.",
)
@click.option("--read-only", is_flag=True, help="Refuse every write.")
@click.option(
    "--htpasswd",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Require Basic auth (bcrypt entries) for writes, and reads too.",
)
@click.option("--public-read", is_flag=True, help="With --htpasswd: let anyone pull.")
@click.option(
    "--ollama-keys",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Ollama public keys (ssh-ed25519 lines, as in ~/.ollama/id_ed25519.pub) whose"
    " signed token requests are taken: Ollama's own login, beside --htpasswd.",
)
@click.option(
    "--public-url",
    "public_urls",
    multiple=True,
    metavar="URL",
    help="A URL clients reach this server by (repeatable; default: the --addr). With"
    " --ollama-keys, the only origins a signed login may name.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Serve HTTPS with this certificate (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The certificate's private key (PEM).",
)
@click.option("--json-logs", is_flag=True, help="One JSON access-log line per request.")
@click.option(
    "--quota",
    metavar="SIZE",
    help="Most bytes of blobs to hold (K, M, G suffixes); uploads past it fail.",
)
@click.option(
    "--upload-expiry",
    type=float,
    metavar="SECONDS",
    default=3600.0,
    show_default=True,
    help="Seconds after which an idle upload session and its file go.",
)
@click.option(
    "--protect-upstream",
    is_flag=True,
    help="Refuse a push through a name mapped onto --default-host (ns/name) that would replace"
    " a tag the store holds with other content.",
)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="URL",
    help="Fetch a model the store lacks from this registry (http(s)://HOST[:PORT]; repeatable,"
    " the first that has it wins) and keep it: a pull-through cache. Pushes are refused.",
)
@click.option(
    "--upstream-ttl",
    default="5m",
    metavar="DURATION",
    show_default=True,
    help="How long a tag checked against the upstream is served before it is checked again"
    " (30s, 5m, 1h; 0: every time).",
)
@click.option(
    "--upstream-timeout",
    default="30s",
    metavar="DURATION",
    show_default=True,
    help="How long a client waits on an upstream that does not answer, before the stored"
    " tag is served or the client gets a 502.",
)
def serve(
    addr: str,
    root: Path | None,
    default_host: str,
    read_only: bool,
    htpasswd: Path | None,
    public_read: bool,
    ollama_keys: Path | None,
    public_urls: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
    json_logs: bool,
    quota: str | None,
    upload_expiry: float,
    protect_upstream: bool,
    upstreams: tuple[str, ...],
    upstream_ttl: str,
    upstream_timeout: str,
) -> None:
    """Serve the store over the OCI Distribution API (pull, push, tags, referrers)."""
    import logging

    from aiohttp import web

    from cairn.cli.output import parse_size
    from cairn.errors import ConfigError
    from cairn.registry.origins import origin_of
    from cairn.registry.server.app import Options, load_htpasswd, make_app
    from cairn.registry.server.listen import bind, split_address, tls_context, url_host
    from cairn.registry.server.tokens import load_keys
    from cairn.registry.server.upstream import parse_duration, parse_upstream

    host, port = split_address(addr, "--addr")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if public_read and not (htpasswd or ollama_keys):
        raise ConfigError(
            "--public-read needs --htpasswd (or --ollama-keys): without a login anyone may"
            " pull and push already (--read-only refuses every write)"
        )
    scheme = "https" if tls_cert else "http"
    if not public_urls:
        if host in ("127.0.0.1", "localhost", "::1"):
            loopback = ("127.0.0.1", "localhost") if host != "::1" else ("[::1]", "localhost")
            public_urls = tuple(f"{scheme}://{name}:{port}" for name in loopback)
        elif host not in ("", "0.0.0.0", "::"):
            public_urls = (f"{scheme}://{url_host(host)}:{port}",)
        elif ollama_keys:
            raise ConfigError(
                "--ollama-keys on every address ({addr}) needs --public-url: the URL Ollama"
                " reaches this server by, the only one its signed login may name",
                addr=addr,
            )
    for url in public_urls:
        origin_of(url)  # a RegistryError naming it when it is not an http(s) URL
    for url in upstreams:
        parse_upstream(url)  # a ConfigError naming it when it is not http(s)://HOST[:PORT]
    options = Options(
        root=root or config.load().models,
        default_host=default_host,
        read_only=read_only,
        users=load_htpasswd(htpasswd) if htpasswd else {},
        public_read=public_read,
        ollama_keys=load_keys(ollama_keys) if ollama_keys else {},
        public_urls=public_urls,
        json_logs=json_logs,
        quota=parse_size(quota) if quota else None,
        upload_expiry=upload_expiry,
        protect_upstream=protect_upstream,
        upstreams=upstreams,
        upstream_ttl=parse_duration(upstream_ttl),
        upstream_timeout=_positive(parse_duration(upstream_timeout), "--upstream-timeout"),
    )
    context = tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
    sockets = bind(host, port, "--addr")  # a port in use is an error before "serving"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the upstream client's requests
    url = f"{scheme}://{url_host(host)}:{port}"
    say(Phrase("serving {root} on {url}", root=options.root, url=url), err=True)
    # No handler_cancellation here (unlike `cairn serve`): an upload's append runs in a
    # thread under its session's lock, and a cancelled request would release the lock
    # while that thread still writes.
    web.run_app(make_app(options), sock=sockets, ssl_context=context, print=None, access_log=None)


@click.command("serve", epilog=examples.SERVE)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve an address other machines reach with no API key (CAIRN_API_KEYS unset).",
)
def serve_api(insecure_no_auth: bool) -> None:
    """Serve Ollama's, OpenAI's and Anthropic's APIs over the store on $CAIRN_HOST (default
    127.0.0.1:11434)."""
    import logging
    import os

    from aiohttp import web

    from cairn.manifests.models import Models
    from cairn.registry.server.listen import bind, split_address, url_host
    from cairn.server.app import make_app, settings_from_environment
    from cairn.server.guard import check_exposure, is_loopback

    host, port = split_address(serve_address(os.environ.get("CAIRN_HOST")), "CAIRN_HOST")
    settings = settings_from_environment(Models.from_environment())
    settings.insecure_no_auth = insecure_no_auth
    settings.loopback_only = is_loopback(host)
    check_exposure(host or "0.0.0.0", settings)  # no key on a non-loopback address: refused
    sockets = bind(host, port, "CAIRN_HOST")  # a port in use is an error before "serving"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    url = f"http://{url_host(host)}:{port}"
    say(Phrase("serving {root} on {url}", root=settings.models.root, url=url), err=True)
    web.run_app(
        make_app(settings),
        sock=sockets,
        print=None,
        access_log=None,
        handler_cancellation=True,  # a client gone stops its answer, streamed or not
        shutdown_timeout=5,
    )


def _positive(seconds: float, option: str) -> float:
    from cairn.errors import ConfigError

    if seconds <= 0:
        raise ConfigError("{option} must be more than 0 seconds", option=option)
    return seconds


def serve_address(setting: str | None) -> str:
    """``CAIRN_HOST`` as ``HOST:PORT``, read as Ollama reads ``OLLAMA_HOST``: a scheme is
    dropped and a missing port is 11434 (``0.0.0.0``, ``[::1]``, ``http://example:80``);
    nothing at all is 127.0.0.1:11434, and ``:8080`` every interface, as ``--addr`` reads it."""
    text = (setting or "").strip()
    for scheme in ("http://", "https://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if not text:
        return "127.0.0.1:11434"
    bracketed = text.startswith("[")
    has_port = text.rpartition("]")[2].startswith(":") if bracketed else ":" in text
    if not has_port:
        text += ":11434"
    return text
