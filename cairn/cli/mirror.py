"""Commands that carry models across a gap: export and import (OCI layouts and bundles)."""

from __future__ import annotations

import click

from cairn.cli import examples
from cairn.cli.output import say
from cairn.errors import BundleError
from cairn.i18n import Phrase
from cairn.sanitize import untrusted


@click.command("export", epilog=examples.EXPORT)
@click.argument("names", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="PATH",
    help="A directory, a .tar or .tar.zst file, or - for standard output.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ollama", "oci"]),
    default="ollama",
    help="Keep Ollama's manifests (default) or convert them to OCI artifacts skopeo reads.",
)
@click.option(
    "--level", type=click.IntRange(-7, 22), metavar="LEVEL", help="zstd's level for .tar.zst (3)."
)
@click.option("--no-referrers", is_flag=True, help="Leave out signatures and other referrers.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print progress as NDJSON lines.")
def export_models(
    names: tuple[str, ...],
    output: str,
    fmt: str,
    level: int | None,
    no_referrers: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Write models NAMES to an OCI image layout or bundle, for cairn import elsewhere."""
    from cairn.cli.progress import Reporter
    from cairn.manifests.models import Models
    from cairn.registry.mirror.bundle import export

    reporter = Reporter(as_json, quiet, to_stderr=output == "-")
    try:
        done = export(
            Models.from_environment(),
            list(names),
            output,
            fmt,
            referrers=not no_referrers,
            level=level,
            report=reporter,
        )
    finally:
        reporter.close()
    if not as_json and not quiet:
        say(
            Phrase(
                "exported {count} models ({blobs} blobs written) to {path}",
                count=len(done.models),
                blobs=done.blobs,
                path=output,
            ),
            err=True,
        )


@click.command("import", epilog=examples.IMPORT)
@click.argument("path")
@click.option(
    "--name",
    metavar="NAME",
    help="The name for the one model of a layout whose entry has none.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print progress as NDJSON lines.")
def import_models(path: str, name: str | None, quiet: bool, as_json: bool) -> None:
    """Import the models of an OCI layout or bundle at PATH (- for standard input)."""
    from cairn.cli.progress import Reporter
    from cairn.manifests.models import Models
    from cairn.registry.mirror.bundle import import_layout

    reporter = Reporter(as_json, quiet)
    try:
        done = import_layout(Models.from_environment(), path, name, reporter)
    finally:
        reporter.close()
    if not quiet and not as_json:
        for skipped in done.skipped:
            say(Phrase("skipped {entry}: not a named model", entry=skipped), err=True)
    if done.refused:
        model, why = done.refused[0]
        raise BundleError(
            "{count} of {total} models refused; {model}: {why}",
            count=len(done.refused),
            total=len(done.refused) + len(done.imported),
            model=untrusted(model),
            why=why,
        )
    if not done.imported:
        raise BundleError("{path} holds no model to import", path=path)


COMMANDS = (export_models, import_models)
