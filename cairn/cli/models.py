"""Commands that manage models on this machine: create, list, show, cp, rm, prune, verify."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cairn.cli import examples
from cairn.cli.completion import complete_model
from cairn.cli.output import display_width, human_age, human_size, pad, say, table
from cairn.cli.server import LOCAL_HELP, Use, connect
from cairn.errors import CorruptBlobError, ModelfileError
from cairn.i18n import N_, Phrase, _, localize
from cairn.sanitize import untrusted, untrusted_json

if TYPE_CHECKING:
    from cairn.blobstore import Digest
    from cairn.manifests.models import Models
    from cairn.manifests.reference import Reference
    from cairn.manifests.show import ModelDetails


def _models() -> Models:
    from cairn.manifests.models import Models  # the store loads when a command runs

    return Models.from_environment()


def _emit_json(value: Any) -> None:
    click.echo(untrusted_json(json.dumps(value, indent=2, ensure_ascii=False)))


def _echo_model_text(text: str, nl: bool = True) -> None:
    """Text from a model (it may come from anyone): control characters shown escaped."""
    click.echo(untrusted(text, multiline=True), nl=nl)


def _iso(timestamp: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _quantize_type(value: str | None) -> str | None:
    """``-q`` takes a type: ``-q -f MF`` (the old ``-q`` for quiet) is told so, not
    answered with an "unexpected extra argument"."""
    if value is not None and value.startswith("-"):
        raise click.BadParameter(
            localize(
                Phrase(
                    "{value!r} is not a type: -q is --quantize TYPE, as in Ollama"
                    " (--quiet is spelled out)",
                    value=value,
                )
            )
        )
    return value


@click.command(epilog=examples.CREATE)
@click.argument("name", shell_complete=complete_model)
@click.option(
    "-f",
    "--file",
    "modelfile_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Modelfile (default: ./Modelfile).",
)
@click.option(
    "-q",
    "--quantize",
    metavar="TYPE",
    callback=lambda _ctx, _param, value: _quantize_type(value),
    help="Quantize the weights to TYPE (q8_0, q4_K_M, ...), as Ollama's create -q does.",
)
@click.option("--quiet", is_flag=True, help="Print nothing but errors and warnings.")
def create(name: str, modelfile_path: Path | None, quantize: str | None, quiet: bool) -> None:
    """Create model NAME from a Modelfile.

    FROM names a GGUF file (relative to the Modelfile) or a model in the
    store; TEMPLATE, SYSTEM, PARAMETER, LICENSE, MESSAGE and ADAPTER work as
    in Ollama.
    """
    from cairn.manifests.create import create_model
    from cairn.manifests.reference import parse_reference
    from cairn.modelfile import parse_modelfile
    from cairn.quantize import parse_type

    parse_reference(name)  # a bad name fails before any file is read
    if quantize is not None:
        parse_type(quantize)  # and so does an unknown type
    path = modelfile_path or Path("Modelfile")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if modelfile_path:
            raise ModelfileError("no Modelfile at {path}", path=path) from None
        raise ModelfileError(
            "no Modelfile at {path} (give one with -f, or put a Modelfile here)", path=path
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelfileError("cannot read {path}: {exc}", path=path, exc=exc) from None

    def progress(status: str) -> None:
        if not quiet:
            say(status, err=True)

    def warn(said: str) -> None:
        say(said, err=True, label="warning")

    create_model(_models(), name, parse_modelfile(text), path.parent, progress, quantize, warn)


@click.command("list", epilog=examples.LIST)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--local", is_flag=True, help=LOCAL_HELP)
def list_models(as_json: bool, local: bool) -> None:
    """List the models in the store (NAME, ID, SIZE, MODIFIED)."""
    client = connect(Use.STORE, local)
    if client is not None:  # a server named by $CAIRN_HOST, over another store
        from cairn.cli.on_server import list_on_server

        with client:
            list_on_server(client, as_json)
        return
    from cairn import config

    config.load().store_exists()  # a file, or a CAIRN_MODELS that names nothing: said so
    models = _models()
    found, problems = models.catalog()
    lacking = {m.path: models.missing_blobs(m) for m in found}  # a stat per blob
    if as_json:
        _emit_json(
            {
                "models": [
                    {
                        "name": m.reference.display,
                        "model": str(m.reference),
                        "id": m.id,
                        "digest": str(m.manifest.digest),
                        "size": m.size,
                        "modified_at": _iso(m.modified),
                        "broken": bool(lacking[m.path]),
                        "missing_blobs": [str(d) for d in lacking[m.path]],
                    }
                    for m in found
                ],
                "errors": [{"model": str(p.reference), "error": p.error} for p in problems],
            }
        )
        return
    rows = [
        (
            m.reference.display + (" " + _("(broken)") if lacking[m.path] else ""),
            m.id,
            human_size(m.size),
            human_age(m.modified),
        )
        for m in found
    ]
    click.echo(table((_("NAME"), _("ID"), _("SIZE"), _("MODIFIED")), rows))
    for m in found:
        if lacking[m.path]:
            say(_broken(m.reference, lacking[m.path]), err=True, label="warning")
    for problem in problems:
        say(
            Phrase("{model}: {error}", model=problem.reference.display, error=problem.error),
            err=True,
            label="warning",
        )


@click.command(epilog=examples.SHOW)
@click.argument("name", shell_complete=complete_model)
@click.option("--modelfile", is_flag=True, help="Print a Modelfile for it.")
@click.option("--template", is_flag=True, help="Print its template.")
@click.option("--system", is_flag=True, help="Print its system message.")
@click.option("--parameters", is_flag=True, help="Print its parameters.")
@click.option("--license", "license_", is_flag=True, help="Print its license.")
@click.option("-v", "--verbose", is_flag=True, help="Show all of its metadata, and its tensors.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print it as JSON, as Ollama's /api/show answers."
)
def show(
    name: str,
    modelfile: bool,
    template: bool,
    system: bool,
    parameters: bool,
    license_: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Show what model NAME is: architecture, capabilities, parameters, template, license."""
    from cairn.manifests.show import show_model

    parts = [
        part
        for part, wanted in (
            ("license", license_),
            ("modelfile", modelfile),
            ("parameters", parameters),
            ("system", system),
            ("template", template),
        )
        if wanted
    ]
    if len(parts) > 1:
        raise _OneAtATime(
            _(
                "only one of '--license', '--modelfile', '--parameters', '--system',"
                " or '--template' can be specified"
            )
        )
    models = _models()
    details = show_model(models, name)
    part = parts[0] if parts else None
    if as_json:
        from cairn.server.shown import show_response

        _emit_json(show_response(models, details, verbose))
    elif part == "modelfile":
        _echo_model_text(details.modelfile(models), nl=False)
    elif part == "template":
        _echo_model_text(details.template or "")
    elif part == "system":
        _echo_model_text(details.system or "")
    elif part == "license":
        _echo_model_text("\n".join(details.licenses))
    elif part == "parameters":
        from cairn.server.shown import parameters_text

        _echo_model_text(parameters_text(details.parameters))
    else:
        _echo_model_text(_describe(models, details, verbose))


class _OneAtATime(click.ClickException):
    """A usage error said in one line (click's own add the usage text), exit status 2."""

    exit_code = 2


def _columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows as ``ollama show`` aligns them: indented four, columns four apart."""
    if not rows:
        return ""
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "    " + "    ".join([*(pad(c, w) for c, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def _describe(models: Models, details: ModelDetails, verbose: bool) -> str:
    """``ollama show``'s sections, headings and names in the user's language."""
    from cairn.server import shown

    summary = [
        (key, str(value))
        for key, value in details.summary().items()
        if key != "capabilities"  # a section of its own, as Ollama's
    ]
    middle: list[str] = []
    if verbose and details.gguf is not None:
        metadata = details.gguf.metadata
        rows: list[tuple[str, ...]] = [
            (untrusted(key), untrusted(_metadata_value(metadata[key])))
            for key in sorted(metadata)
            if key not in shown.NOT_INFO
        ]
        if rows:
            middle.append(f"  {_('Metadata')}\n" + _columns(rows))
        tensors = shown.tensors(models, details)
        if tensors:
            rows = [
                (untrusted(t["name"]), t["type"], "[" + " ".join(map(str, t["shape"])) + "]")
                for t in tensors
            ]
            middle.append(f"  {_('Tensors')}\n" + _columns(rows))
    tail: list[str] = []
    signed = shown.signatures(models, details)
    if signed:
        rows = [(s["digest"][:19] + "…", s["created"], _signer(s)) for s in signed]
        tail.append(f"  {_('Signatures')}\n" + _columns(rows))
    return show_sections(
        summary,
        shown.capabilities(details),
        shown.projector_info(models, details, verbose=True),
        shown.parameters_text(details.parameters) if details.parameters else "",
        details.system or "",
        "\n".join(details.licenses),
        [(d.media_type, d.name or d.digest.short, d.size) for d in details.other_layers],
        middle,
        tail,
    )


def show_sections(
    summary: Sequence[tuple[str, str]],
    capabilities: Sequence[str],
    projector: dict[str, Any] | None,
    parameters: str,
    system: str,
    license_text: str,
    layers: Sequence[tuple[str, str, int]],
    middle: Sequence[str] = (),
    tail: Sequence[str] = (),
) -> str:
    """``cairn show``'s text, the same for a model here and one a server describes
    (``/show info`` in a chat through ``cairn serve``): Model, Capabilities, Projector,
    Parameters, then ``middle`` (``-v``'s Metadata and Tensors), System, License, Layers
    (media type, name, size), then ``tail`` (Signatures)."""
    sections = [f"  {_('Model')}\n" + _columns([(_(k), untrusted(v)) for k, v in summary])]
    if capabilities:
        listed = [(untrusted(c),) for c in capabilities]
        sections.append(f"  {_('Capabilities')}\n" + _columns(listed))
    if projector:
        sections.append(f"  {_('Projector')}\n" + _columns(_projector_rows(projector)))
    if parameters:
        pairs = (line.partition(" ") for line in parameters.split("\n"))
        rows: list[tuple[str, ...]] = [
            (untrusted(key), untrusted(value.strip())) for key, _s, value in pairs
        ]
        sections.append(f"  {_('Parameters')}\n" + _columns(rows))
    sections += middle
    if system:
        sections.append(f"  {_('System')}\n" + _indent_head(system))
    if license_text:
        sections.append(f"  {_('License')}\n" + _indent_head(license_text))
    if layers:
        rows = [
            (untrusted(media_type.rpartition(".")[2]), untrusted(name), human_size(size))
            for media_type, name, size in layers
        ]
        sections.append(f"  {_('Layers')}\n" + _columns(rows))
    sections += tail
    return "\n\n".join(sections) + "\n"


def _signer(listed: dict[str, str]) -> str:
    """Who a signature says signed it, as ``show`` lists it (unverified: ``verify --key``)."""
    if "problem" in listed:
        return _("damaged: {problem}").format(problem=untrusted(listed["problem"])[:120])
    if "certificate" in listed:
        return _("certificate {subject}").format(subject=untrusted(listed["certificate"]))
    if "key_hint" in listed:
        return _("key {hint}").format(hint=untrusted(listed["key_hint"])[:16] + "…")
    return _("key (no hint)")


def _projector_rows(info: dict[str, Any]) -> list[tuple[str, ...]]:
    """``ollama show``'s Projector section: architecture, embedding length, dimensions."""
    from cairn.server.shown import go_plain

    arch = info.get("general.architecture")
    rows: list[tuple[str, ...]] = []
    if isinstance(arch, str) and arch:
        rows.append((_("architecture"), untrusted(arch)))
    for suffix, label in (
        ("embedding_length", N_("embedding length")),
        ("projection_dim", N_("dimensions")),
    ):
        for modality in ("vision", "audio"):
            value = info.get(f"{arch}.{modality}.{suffix}")
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append((_(label), go_plain(value)))
                break
    return rows or [(_("architecture"), "")]


def _metadata_value(value: Any) -> str:
    """A metadata value as ``ollama show -v`` prints it; a long array as its first items
    and how many more (``[<pad> <eos> ...+262142 more]``)."""
    from cairn.gguf import ArrayValue
    from cairn.server.shown import go_plain, info_value

    if not isinstance(value, ArrayValue):
        return go_plain(info_value(value, verbose=True))
    items = [_metadata_value(v) for v in value.values or ()]
    shown, width = 0, 1
    for i, item in enumerate(items):
        more = display_width(item) + (2 if i else 0)
        if width + more > 10 and i:
            break
        width += more
        shown += 1
    if shown < value.length:
        return "[" + " ".join(items[:shown]) + f" ...+{value.length - shown} more]"
    return "[" + " ".join(items) + "]"


def _indent_head(text: str, lines: int = 2) -> str:
    """The first non-blank lines, trimmed, and ``...`` when there are more (as Ollama's)."""
    filled = [line.strip() for line in text.splitlines() if line.strip()]
    head = [f"    {line}" for line in filled[:lines]]
    return "\n".join(head + (["    ..."] if len(filled) > lines else []))


@click.command(epilog=examples.CP)
@click.argument("source", shell_complete=complete_model)
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copy SOURCE to DESTINATION: a new name for the same model, no data copied."""
    model = _models().copy(source, destination)
    say(
        Phrase(
            "copied {source!r} to {destination!r}",
            source=source,
            destination=model.reference.display,
        )
    )


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``1h`` or ``2d``."""
    text = value.strip().lower()
    scale = _UNITS.get(text[-1:])
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1.0)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise click.BadParameter(
            localize(Phrase("{value!r} is not a duration (like 90s, 30m, 1h or 0)", value=value))
        )
    return seconds


GRACE_HELP = (
    "Keep unused blobs that arrived less than this long ago (another tool may be"
    " about to write their manifest)."
)
grace_option = click.option(
    "--grace",
    default="1h",
    show_default=True,
    callback=_duration,
    metavar="DURATION",
    help=GRACE_HELP,
)


@click.command(epilog=examples.RM)
@click.argument("names", nargs=-1, required=True, shell_complete=complete_model)
@grace_option
def rm(names: tuple[str, ...], grace: float) -> None:
    """Remove models; their blobs go when no other model uses them."""
    report = _models().remove(names, grace=grace)
    for ref in report.removed:
        say(Phrase("deleted {model!r}", model=ref.display))
    if report.freed:
        say(Phrase("freed {count} blob(s)", count=len(report.freed)), err=True)
    if report.young:
        say(
            Phrase(
                "kept {count} unused blob(s) that changed within the grace period;"
                " 'cairn prune' removes them later",
                count=len(report.young),
            ),
            err=True,
        )


@click.command(epilog=examples.PRUNE)
@click.option("-n", "--dry-run", is_flag=True, help="Say what would go, remove nothing.")
@grace_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prune(dry_run: bool, grace: float, as_json: bool) -> None:
    """Remove blobs no model uses and temp files of transfers that died."""
    report = _models().prune(dry_run=dry_run, grace=grace)
    if as_json:
        _emit_json(
            {
                "dry_run": dry_run,
                "blobs": [str(d) for d in report.blobs],
                "blob_bytes": report.blob_bytes,
                "partials": [str(p) for p in report.partials],
                "partial_bytes": report.partial_bytes,
                "in_use": [str(p) for p in report.in_use],
                "young": [str(d) for d in report.young],
            }
        )
        return
    for digest in report.blobs:
        say(
            Phrase(
                "would remove blob {digest}" if dry_run else "removed blob {digest}", digest=digest
            )
        )
    for path in report.partials:
        say(
            Phrase(
                "would remove partial file {path}" if dry_run else "removed partial file {path}",
                path=path,
            )
        )
    for path in report.in_use:
        say(Phrase("kept {path} (a transfer in progress holds it)", path=path))
    if report.young:
        say(
            Phrase(
                "kept {count} unused blob(s) younger than the grace period"
                " (--grace 0 removes them too)",
                count=len(report.young),
            )
        )
    size = human_size(report.blob_bytes + report.partial_bytes)
    summary = Phrase(
        "would remove {blobs} blobs and {partials} partial files ({size})"
        if dry_run
        else "removed {blobs} blobs and {partials} partial files ({size})",
        blobs=len(report.blobs),
        partials=len(report.partials),
        size=size,
    )
    say(summary, err=True)


@click.command(epilog=examples.VERIFY)
@click.argument("names", nargs=-1, shell_complete=complete_model)
@click.option(
    "--repair", is_flag=True, help="Delete the corrupt blobs, so they can be fetched again."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check the models' signatures instead: signed by this public key (PEM).",
)
@click.option(
    "--ca",
    "ca_paths",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help="Check the models' signatures instead: by a certificate this CA (PEM) issued.",
)
@click.option(
    "--signature",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check this signature file (an OMS bundle) rather than the stored signatures.",
)
@click.option(
    "--rehash", is_flag=True, help="With --key or --ca: rehash the signed files' blobs too."
)
def verify(
    names: tuple[str, ...],
    repair: bool,
    as_json: bool,
    key_path: Path | None,
    ca_paths: tuple[Path, ...],
    signature: Path | None,
    rehash: bool,
) -> None:
    """Rehash the blobs of the named models (every blob when none is named).

    With --key or --ca, check the models' signatures against their files instead.
    """
    if key_path is not None or ca_paths or signature is not None or rehash:
        from cairn.cli.signing import verify_signatures

        verify_signatures(names, key_path, ca_paths, signature, rehash, as_json)
        return
    report = _models().verify(names, repair=repair)
    if as_json:
        _emit_json(
            {
                "checked": report.checked,
                "ok": report.ok,
                "corrupt": [str(d) for d in report.corrupt],
                "removed": [str(d) for d in report.corrupt] if repair else [],
                "missing": [{"model": str(r), "digest": str(d)} for r, d in report.missing],
                "damaged_manifests": [
                    {"model": str(p.reference), "error": p.error} for p in report.bad_manifests
                ],
                "broken": [
                    {"model": str(r), "missing_blobs": [str(d) for d in lacking]}
                    for r, lacking in report.broken
                ],
            }
        )
    else:
        for digest in report.corrupt:
            say(
                Phrase(
                    "corrupt blob {digest} (removed)" if repair else "corrupt blob {digest}",
                    digest=digest,
                )
            )
        for ref, digest in report.missing:
            say(Phrase("missing blob {digest} of {model}", digest=digest, model=ref.display))
        for problem in report.bad_manifests:
            say(
                Phrase(
                    "damaged manifest {model}: {error}",
                    model=problem.reference.display,
                    error=problem.error,
                )
            )
        for ref, lacking in report.broken:
            say(_broken(ref, lacking))
        if report.ok:
            say(Phrase("{count} blobs checked, all intact", count=report.checked))
    if not report.ok:
        if as_json:
            sys.exit(1)
        raise CorruptBlobError(
            "the store is damaged: {corrupt} corrupt, {missing} missing blobs,"
            " {manifests} damaged manifests; {advice}",
            corrupt=len(report.corrupt),
            missing=len(report.missing),
            manifests=len(report.bad_manifests),
            advice=Phrase(
                "run with --repair"
                if report.corrupt and not repair
                else "pull or create the affected models again"
            ),
        )


def _broken(ref: Reference, lacking: Sequence[Digest]) -> Phrase:
    """The line that says a model lacks blobs, and the command that brings them back."""
    return Phrase(
        "{model} is broken ({count} blob(s) missing): pull it again with `cairn pull {model}`",
        model=ref.display,
        count=len(lacking),
    )


COMMANDS = (create, list_models, show, cp, rm, prune, verify)
