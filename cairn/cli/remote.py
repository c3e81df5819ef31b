"""skopeo's remote commands: ``inspect`` (a model's manifest and config on its registry)
and ``tags`` (a repository's tags), read without pulling anything into the store."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from cairn.cli.output import display_width, human_size, pad
from cairn.errors import (
    DigestMismatchError,
    InvalidReferenceError,
    ManifestError,
    RegistryError,
    RemoteNotFoundError,
    TransferError,
)
from cairn.i18n import Phrase, _
from cairn.manifests.reference import Reference, parse_reference
from cairn.sanitize import untrusted, untrusted_json

if TYPE_CHECKING:
    from cairn.blobstore import Digest
    from cairn.manifests.manifest import Descriptor, Index, Manifest
    from cairn.registry.client import RegistryClient

CONFIG_LIMIT = 4 << 20
"""The largest config blob ``inspect`` reads (a model's config is a few hundred bytes)."""

INSECURE_HELP = "Use plain HTTP (no TLS), as Ollama's --insecure."


@dataclass(frozen=True)
class Remote:
    """What ``inspect`` read of a model on its registry."""

    ref: Reference
    index: Index | None
    """The index the reference named, when it named one; ``manifest`` is its model."""
    manifest: Manifest
    config: bytes
    """The config blob's bytes."""


def _name(ref: Reference) -> str:
    """``host/namespace/name``, as skopeo names a repository."""
    return f"{ref.host}/{ref.repository}"


def _model(ref: Reference) -> str:
    """``namespace/name:tag`` (or ``@digest``): the model as its registry knows it."""
    return ref.repository + (f"@{ref.digest}" if ref.digest else f":{ref.tag_or_default}")


def _checked(data: bytes, expected: Digest | None) -> None:
    """Raise DigestMismatchError when ``data`` does not hash to ``expected``."""
    from cairn.blobstore import Digest

    if expected is not None and Digest.of(data, expected.algorithm) != expected:
        raise DigestMismatchError(str(expected), str(Digest.of(data, expected.algorithm)))


async def fetch_served(client: RegistryClient, ref: Reference) -> tuple[bytes, str | None]:
    """The manifest bytes ``ref`` names, exactly as served, and their Content-Type;
    checked against the digest ``ref`` names or the registry sent."""
    from cairn.registry.pull import check_manifest, header_digest

    reference = str(ref.digest) if ref.digest else ref.tag_or_default
    try:
        served, served_type, header = await client.get_manifest(ref.repository, reference)
    except RemoteNotFoundError:
        raise RemoteNotFoundError(
            "model {model} not found on {host}", model=_model(ref), host=ref.host, status=404
        ) from None
    check_manifest(served, ref.digest or header_digest(header))
    return served, served_type


async def fetch(client: RegistryClient, ref: Reference) -> Remote:
    """The model ``ref`` names (an index followed to its model, as ``pull`` does) and its
    config blob."""
    from cairn.manifests.manifest import Index, parse_manifest
    from cairn.registry.pull import follow_index

    served, served_type = await fetch_served(client, ref)
    parsed = parse_manifest(served, served_type)
    index = parsed if isinstance(parsed, Index) else None
    model = await follow_index(client, ref.repository, parsed)
    config = await read_config(client, ref, model.config)
    return Remote(ref, index, model, config)


async def read_config(client: RegistryClient, ref: Reference, descriptor: Descriptor) -> bytes:
    """The config blob, at most :data:`CONFIG_LIMIT` bytes, checked against its digest."""
    import httpx

    from cairn.registry.client import (
        SMALL_BODY,
        BodyTooLargeError,
        read_capped,
        undecoded_headers,
    )

    if descriptor.size > CONFIG_LIMIT:
        raise RegistryError(
            "the config of {model} has {size} bytes; cairn reads a config of at most {limit}",
            model=_model(ref),
            size=descriptor.size,
            limit=CONFIG_LIMIT,
        )
    what = Phrase("blob {digest}", digest=descriptor.digest)
    try:
        response = await client.request(
            "GET",
            f"/v2/{ref.repository}/blobs/{descriptor.digest}",
            scope=f"repository:{ref.repository}:pull",
            stream=True,
        )
        try:
            if response.status_code != 200:
                try:  # the registry's message, read with a cap like any other
                    said = await read_capped(response, SMALL_BODY, what, client.retry)
                except BodyTooLargeError:
                    said = b""
                client.check(
                    httpx.Response(
                        response.status_code,
                        headers=undecoded_headers(response.headers.raw),
                        content=said,
                        request=response.request,
                    ),
                    str(what),
                )
            try:
                body = await read_capped(response, CONFIG_LIMIT, what, client.retry)
            except BodyTooLargeError:
                raise RegistryError(
                    "the config of {model} is larger than {limit} bytes; cairn reads a"
                    " config of at most that",
                    model=_model(ref),
                    limit=CONFIG_LIMIT,
                ) from None
        finally:
            await response.aclose()
    except httpx.TransportError as exc:
        raise TransferError("reading {what}: {reason}", what=what, reason=str(exc)) from exc
    _checked(body, descriptor.digest)
    if len(body) != descriptor.size:
        raise ManifestError(
            "the manifest says blob {digest} has {declared} bytes; the registry sent {size}",
            digest=descriptor.digest,
            declared=descriptor.size,
            size=len(body),
        )
    return body


def _refuse_registry(text: str) -> None:
    """A bare ``host:port`` names no repository: refused as ``push`` refuses it."""
    from cairn.cli.registry import _bare_registry

    if _bare_registry(text):
        raise InvalidReferenceError(
            "{text} is a registry: name a repository on it, as in {text}/library/NAME",
            text=untrusted(text),
        )


def _run(work: Any) -> Any:
    import asyncio

    return asyncio.run(work)


def _emit_json(value: Any) -> None:
    """JSON as skopeo prints it: four spaces of indent, UTF-8 kept, controls escaped."""
    click.echo(_writable(untrusted_json(json.dumps(value, indent=4, ensure_ascii=False))))


def _writable(text: str) -> str:
    """``text`` with each lone surrogate (which JSON's ``"\\ud800"`` decodes to, and UTF-8
    cannot encode) written as its escape, ``\\ud800``: in a JSON string that is the same
    JSON, and in text it shows as the other escapes do."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


INSPECT_EXAMPLES = """\b
Examples:
  $ cairn inspect 127.0.0.1:5000/lab/gemma3:270m --insecure
  $ cairn inspect --json ghcr.io/lab/gemma3:270m
  $ cairn inspect --raw ghcr.io/lab/gemma3:270m | jq .layers
  $ cairn inspect --config ghcr.io/lab/gemma3@sha256:<digest>"""


@click.command(epilog=INSPECT_EXAMPLES)
@click.argument("ref", metavar="REF")
@click.option("--insecure", is_flag=True, help=INSECURE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--raw", is_flag=True, help="Print the manifest exactly as the registry serves it.")
@click.option("--config", "config_only", is_flag=True, help="Print the config blob's bytes.")
def inspect(ref: str, insecure: bool, as_json: bool, raw: bool, config_only: bool) -> None:
    """Show model REF on its registry (manifest, config, layers) without pulling it.

    An index is followed to the model in it, as a pull does.
    """
    from cairn.registry.clients import make_client

    if as_json and (raw or config_only):
        raise click.UsageError(_("--json prints the summary: leave out --raw and --config"))
    _refuse_registry(ref)
    parsed = parse_reference(ref)  # a host no URL can hold: refused by the client

    async def served() -> bytes:
        async with make_client(parsed, insecure) as client:
            data, _type = await fetch_served(client, parsed)
            return data

    async def model() -> Remote:
        async with make_client(parsed, insecure) as client:
            return await fetch(client, parsed)

    if raw and not config_only:
        _write_bytes(_run(served()))
        return
    remote: Remote = _run(model())
    if config_only:
        _write_bytes(remote.config)
    elif as_json:
        _emit_json(_summary(remote))
    else:
        click.echo(_writable(_describe(remote)), nl=False)


def _write_bytes(data: bytes) -> None:
    """Bytes exactly as the registry sent them (as skopeo's ``--raw``: no newline added).

    On a terminal, control characters are shown escaped (``\\x1b``), as in all other text
    from a registry: a terminal would obey them (retitle the window, write the clipboard,
    erase lines). A pipe or a file gets the bytes themselves."""
    if sys.stdout.isatty():
        text = data.decode("utf-8", errors="backslashreplace")
        click.echo(untrusted(text, multiline=True), nl=False)
        return
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _config_fields(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return fields if isinstance(fields, dict) else None


def _summary(remote: Remote) -> dict[str, Any]:
    """The summary as JSON, in skopeo's style of keys."""
    manifest = remote.manifest
    ref = remote.ref
    summary: dict[str, Any] = {
        "Name": _name(ref),
        "Tag": None if ref.digest else ref.tag_or_default,
        "Digest": str(manifest.digest),
        "MediaType": manifest.media_type or manifest.content_type,
        "ArtifactType": manifest.artifact_type,
    }
    if remote.index is not None:
        summary["Index"] = {
            "Digest": str(remote.index.digest),
            "MediaType": remote.index.content_type,
        }
    summary["Annotations"] = dict(manifest.annotations)
    summary["Size"] = manifest.size
    summary["Config"] = _descriptor(manifest.config)
    summary["ConfigData"] = _config_fields(remote.config)
    summary["Layers"] = [_descriptor(d) for d in manifest.layers]
    return summary


def _descriptor(descriptor: Descriptor) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "MediaType": descriptor.media_type,
        "Digest": str(descriptor.digest),
        "Size": descriptor.size,
    }
    if descriptor.title is not None:
        shown["Title"] = descriptor.title
    if descriptor.annotations:
        shown["Annotations"] = dict(descriptor.annotations)
    return shown


def _section(title: str, rows: list[tuple[str, str]]) -> str:
    width = max((display_width(key) for key, _value in rows), default=0)
    lines = [f"    {pad(key, width)}    {value}".rstrip() for key, value in rows]
    return f"  {title}\n" + "\n".join(lines)


def _describe(remote: Remote) -> str:
    """Sections as ``cairn show`` prints them: the manifest, its config, its layers."""
    manifest = remote.manifest
    ref = remote.ref
    shown = _name(ref) + (f"@{ref.digest}" if ref.digest else f":{ref.tag_or_default}")
    rows = [
        (_("name"), untrusted(shown)),
        (_("digest"), str(manifest.digest)),
        (_("media type"), untrusted(manifest.media_type or manifest.content_type)),
    ]
    if manifest.artifact_type:
        rows.append((_("artifact type"), untrusted(manifest.artifact_type)))
    if remote.index is not None:
        rows.append((_("index"), str(remote.index.digest)))
    rows.append((_("size"), human_size(manifest.size)))
    for key, value in manifest.annotations.items():
        rows.append((untrusted(key), untrusted(value)))
    sections = [_section(_("Manifest"), rows)]
    config = manifest.config
    rows = [
        (_("media type"), untrusted(config.media_type)),
        (_("digest"), str(config.digest)),
        (_("size"), human_size(config.size)),
    ]
    fields = _config_fields(remote.config)
    for key, value in (fields or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        rows.append((untrusted(str(key)), untrusted(text)))
    sections.append(_section(_("Config"), rows))
    if manifest.layers:
        layers = [
            (
                untrusted(d.media_type),
                human_size(d.size),
                str(d.digest),
                untrusted(d.title or ""),
            )
            for d in manifest.layers
        ]
        widths = [max(display_width(row[i]) for row in layers) for i in range(3)]
        lines = [
            f"    {pad(kind, widths[0])}    {pad(size, widths[1])}    {pad(digest, widths[2])}"
            f"    {title}".rstrip()
            for kind, size, digest, title in layers
        ]
        sections.append(f"  {_('Layers')}\n" + "\n".join(lines))
    return "\n\n".join(sections) + "\n"


TAGS_EXAMPLES = """\b
Examples:
  $ cairn tags 127.0.0.1:5000/lab/gemma3 --insecure
  $ cairn tags --json ghcr.io/lab/gemma3"""


@click.command(epilog=TAGS_EXAMPLES)
@click.argument("repository", metavar="REPO")
@click.option("--insecure", is_flag=True, help=INSECURE_HELP)
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"Repository", "Tags"} as skopeo does.'
)
def tags(repository: str, insecure: bool, as_json: bool) -> None:
    """List every tag of repository REPO on its registry, one per line."""
    from cairn.registry.clients import make_client
    from cairn.registry.mirror.sync import list_tags

    _refuse_registry(repository)
    bare = repository.partition("@")[0]
    head, slash, last = bare.rpartition("/")
    if bare != repository or ":" in last:
        raise InvalidReferenceError(
            "{repository} names a tag or digest: cairn tags takes a repository, as in {bare}",
            repository=untrusted(repository),
            bare=untrusted(head + slash + last.partition(":")[0]),
        )
    ref = parse_reference(repository)

    async def run() -> list[str]:
        async with make_client(ref, insecure) as client:
            try:
                return await list_tags(client, ref.repository)
            except RemoteNotFoundError:
                raise RemoteNotFoundError(
                    "repository {repository} not found on {host}",
                    repository=ref.repository,
                    host=ref.host,
                    status=404,
                ) from None

    found: list[str] = _run(run())
    if as_json:
        _emit_json({"Repository": _name(ref), "Tags": found})
    else:
        for tag in found:
            click.echo(tag)


COMMANDS = (inspect, tags)
