"""Signed models: ``cairn sign``, and ``cairn verify --key/--ca/--signature`` (docs/signing.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cairn.cli import examples
from cairn.cli.completion import complete_model
from cairn.cli.output import say
from cairn.errors import CairnError, SignatureError
from cairn.i18n import Phrase, localize
from cairn.sanitize import untrusted_json

if TYPE_CHECKING:
    from cairn.manifests.models import Models

_FILE = click.Path(dir_okay=False, path_type=Path)


def _models() -> Models:
    from cairn.manifests.models import Models  # the store loads when a command runs

    return Models.from_environment()


@click.command(epilog=examples.SIGN)
@click.argument("name", shell_complete=complete_model)
@click.option(
    "--key",
    "key_path",
    type=_FILE,
    help="The private key to sign with (PEM, unencrypted; EC P-256, P-384 or P-521).",
)
@click.option(
    "--cert",
    "cert_path",
    type=_FILE,
    help="The key's signing certificate (PEM): the signature carries it, for --ca to check.",
)
@click.option(
    "--chain",
    "chain_paths",
    type=_FILE,
    multiple=True,
    help="A certificate (PEM) between --cert and the CA; repeat for each.",
)
@click.option(
    "--attach",
    type=_FILE,
    help="Keep this signature file (such as model_signing writes) instead of signing;"
    " it must list the model's files.",
)
@click.option(
    "-o",
    "--output",
    type=_FILE,
    help="Also write the signature to this file (a bundle model_signing can verify).",
)
def sign(
    name: str,
    key_path: Path,
    cert_path: Path | None,
    chain_paths: tuple[Path, ...],
    attach: Path | None,
    output: Path | None,
) -> None:
    """Sign model NAME (OpenSSF Model Signing) and keep the signature beside it.

    The signature lists every file of the model with the digest the manifest
    already records, so nothing is hashed again.
    """
    from cairn.signing import check, oms

    if chain_paths and cert_path is None:
        raise click.UsageError(localize(Phrase("--chain goes with --cert")))
    if (key_path is None) == (attach is None):
        raise click.UsageError(localize(Phrase("give --key to sign, or --attach FILE")))
    models = _models()
    model = models.get(name)
    if attach is not None:
        digest, count = check.attach(models, model, _read_signature(attach))
        say(
            Phrase(
                "kept {path} as a signature of {model} ({count} files): {digest}",
                path=attach,
                model=model.reference.display,
                count=count,
                digest=digest,
            )
        )
        return
    assert key_path is not None
    key = oms.load_private_key(key_path)
    certificates = oms.load_certificates([cert_path, *chain_paths]) if cert_path else []
    digest, bundle, count = check.sign_model(models, model, key, certificates)
    if output is not None:
        try:
            output.write_bytes(bundle)
        except OSError as exc:
            raise SignatureError(
                "cannot write the signature to {path}: {reason}", path=output, reason=exc.strerror
            ) from None
    say(
        Phrase(
            "signed {model} ({count} files) with key {key}: signature {digest}",
            model=model.reference.display,
            count=count,
            key=f"{key_path} (sha256 {oms.key_hint(key.public_key())[:12]})",
            digest=digest,
        )
    )


def _read_signature(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureError(
            "cannot read the signature {path}: {reason}", path=path, reason=exc.strerror
        ) from None


def verify_signatures(
    names: tuple[str, ...],
    key_path: Path | None,
    ca_paths: tuple[Path, ...],
    signature: Path | None,
    rehash: bool,
    as_json: bool,
) -> None:
    """``cairn verify`` with --key, --ca or --signature: the models' signatures, checked."""
    from cairn.signing import check, oms, store

    if key_path is None and not ca_paths:
        raise click.UsageError(
            localize(Phrase("--signature and --rehash check signatures: give --key or --ca"))
        )
    if key_path is not None and ca_paths:
        raise click.UsageError(localize(Phrase("give --key or --ca, not both")))
    if not names:
        raise click.UsageError(localize(Phrase("name the model whose signatures to check")))
    key = (key_path, oms.load_public_key(key_path)) if key_path is not None else None
    roots = oms.load_certificates(ca_paths)
    detached = _read_signature(signature) if signature is not None else None
    models = _models()
    report: list[dict[str, Any]] = []
    failed: CairnError | None = None
    for name in names:
        model = models.get(name)
        display = model.reference.display
        if detached is not None:
            results = [
                check.check_bundle(models, model, str(signature), detached, key, roots, rehash)
            ]
        else:
            stored = store.signatures(models, model)
            if not stored:
                failed = failed or SignatureError(
                    "{model} has no signature (cairn sign makes one; --signature checks a"
                    " signature file)",
                    model=display,
                )
                report.append({"model": display, "ok": False, "signatures": []})
                continue
            results = [
                check.check_bundle(models, model, str(s.digest), s.bundle, key, roots, rehash)
                for s in stored
            ]
        good = [r for r in results if r.ok]
        for result in results:
            if as_json:
                continue
            if result.ok:
                say(
                    Phrase(
                        "{model}: signature {source} by {signer}: {count} files verified",
                        model=display,
                        source=result.source,
                        signer=result.signer,
                        count=result.files,
                    )
                )
            elif len(results) > 1:  # one alone is said as the error
                say(
                    Phrase(
                        "{model}: signature {source}: {error}",
                        model=display,
                        source=result.source,
                        error=result.error,
                    ),
                    err=True,
                )
        report.append(
            {
                "model": display,
                "ok": bool(good),
                "signatures": [
                    {
                        "signature": r.source,
                        "signer": r.signer,
                        "ok": r.ok,
                        "files": r.files,
                        **({"error": str(r.error)} if r.error else {}),
                    }
                    for r in results
                ],
            }
        )
        if not good:
            first = results[0].error
            failed = failed or (
                first
                if len(results) == 1 and first is not None
                else SignatureError(
                    "none of the {count} signatures of {model} verifies with this key",
                    count=len(results),
                    model=display,
                )
            )
    if as_json:
        click.echo(untrusted_json(json.dumps(report, indent=2, ensure_ascii=False)))
        if failed is not None:
            sys.exit(1)
    if failed is not None:
        raise failed


COMMANDS = (sign,)
