"""``cairn sync``: models from registries to a registry, a directory or a bundle."""

from __future__ import annotations

import json

import click

from cairn.cli import examples
from cairn.cli.output import say
from cairn.errors import RegistryError
from cairn.i18n import Phrase


@click.command(epilog=examples.SYNC)
@click.argument("source")
@click.argument("destination")
@click.option(
    "--insecure",
    is_flag=True,
    help="Reach the source registries over plain HTTP (skopeo's --src-tls-verify=false).",
)
@click.option(
    "--dest-insecure",
    is_flag=True,
    help="Reach the destination registry over plain HTTP (skopeo's --dest-tls-verify=false).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be copied; write nothing.")
@click.option(
    "--keep-going",
    is_flag=True,
    help="Go on after an image fails; the exit status still says it failed.",
)
@click.option(
    "--level",
    type=click.IntRange(1, 22),
    metavar="LEVEL",
    help="The zstd level of a .tar.zst destination.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print progress as NDJSON lines, then a summary."
)
def sync(
    source: str,
    destination: str,
    insecure: bool,
    dest_insecure: bool,
    dry_run: bool,
    keep_going: bool,
    level: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Copy models from SOURCE to DESTINATION, skipping what is there already.

    SOURCE is a YAML file in the shape of skopeo sync's, or a repository
    (HOST/ns/name: every tag; HOST/ns/name:tag: one). DESTINATION is a registry
    (HOST[:PORT][/prefix]), or a directory, a .tar or .tar.zst file, or - for
    standard output (an OCI image layout).
    """
    import asyncio
    from pathlib import Path

    from cairn.cli.progress import Reporter
    from cairn.manifests.reference import parse_reference
    from cairn.registry.client import RegistryClient
    from cairn.registry.clients import make_client
    from cairn.registry.locations import BlobLocations
    from cairn.registry.mirror.sync import Sync, load_sync_file, parse_source, parse_target

    if source.lower().endswith((".yaml", ".yml")) or Path(source).is_file():
        sources = load_sync_file(Path(source), insecure)
    else:
        sources = [parse_source(source, insecure)]
    target = parse_target(destination, dest_insecure, level)
    to_stdout = target.path == "-"
    reporter = Reporter(as_json and not to_stdout, quiet or to_stdout)

    def connect(host: str, plain: bool) -> RegistryClient:
        return make_client(parse_reference(f"{host}/library/x"), plain)

    engine = Sync(target, connect, reporter, dry_run, keep_going, BlobLocations.from_environment())
    try:
        summary = asyncio.run(engine.run(sources))
    finally:
        reporter.close()
    if as_json:
        click.echo(json.dumps(summary.to_json()), err=to_stdout)
    elif not quiet:  # each image had its line as it went: the totals
        say(
            Phrase(
                "{copied} copied, {skipped} skipped, {failed} failed; blobs: {blobs} copied"
                " ({size} bytes), {mounted} mounted, {present} there already",
                copied=len(summary.copied),
                skipped=len(summary.skipped),
                failed=len(summary.failed),
                blobs=summary.blobs_copied,
                size=summary.bytes_copied,
                mounted=summary.blobs_mounted,
                present=summary.blobs_present,
            ),
            err=to_stdout,
        )
    if summary.failed:
        name, first = summary.failed[0]
        raise RegistryError(
            "{failed} of {total} images failed to sync; the first, {image}: {error}",
            failed=len(summary.failed),
            total=len(summary.failed) + len(summary.copied) + len(summary.skipped),
            image=name,
            error=first,
        )


COMMANDS = (sync,)
