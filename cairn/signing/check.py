"""Signing a stored model, and checking a signature against its current layers.

The digests a signature lists are the layers' own sha256 digests, taken from
the manifest: signing hashes nothing, and checking rehashes the blobs only
when asked (``rehash``), as ``cairn verify`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cairn.blobstore import Digest
from cairn.errors import CairnError, SignatureError
from cairn.manifests.manifest import Descriptor
from cairn.manifests.models import LocalModel, Models
from cairn.signing import names, oms, store

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec


def files_of(model: LocalModel) -> list[tuple[str, Descriptor]]:
    """The model's files as a signature names them (see :mod:`cairn.signing.names`)."""
    named = names.file_names(model.manifest.layers)
    for name, layer in named:
        if layer.digest.algorithm != "sha256":
            raise SignatureError(
                "file {name} of {model} has a {algorithm} digest; signatures list sha256",
                name=name,
                model=model.reference.display,
                algorithm=layer.digest.algorithm,
            )
    return named


def statement_of(model: LocalModel) -> oms.Statement:
    return oms.Statement.of(
        model.reference.name, [(name, layer.digest.hex) for name, layer in files_of(model)]
    )


def sign_model(
    models: Models,
    model: LocalModel,
    key: ec.EllipticCurvePrivateKey,
    certificates: Sequence[x509.Certificate] = (),
) -> tuple[Digest, bytes, int]:
    """Sign ``model`` and keep the signature as a referrer of its manifest: the
    referrer's digest, the bundle, and how many files it lists."""
    statement = statement_of(model)
    bundle = oms.sign(statement, key, certificates)
    return store.save_signature(models, model, bundle), bundle, len(statement.resources)


def attach(models: Models, model: LocalModel, bundle: bytes) -> tuple[Digest, int]:
    """Keep a signature made elsewhere (``model_signing sign``) as a referrer of ``model``,
    once it parses and lists exactly the model's files; who signed it is for verify to
    check. The referrer's digest and the count of files."""
    statement = oms.Statement.from_bytes(oms.Bundle.from_bytes(bundle).payload)
    count = check_files(models, model, statement)
    return store.save_signature(models, model, bundle), count


def _listed(found: Sequence[str]) -> str:
    shown = ", ".join(found[:5])
    return shown + (f" (+{len(found) - 5})" if len(found) > 5 else "")


def check_files(
    models: Models, model: LocalModel, statement: oms.Statement, rehash: bool = False
) -> int:
    """Raise :class:`SignatureError` naming the files unless the model's layers are
    exactly the signed files (and, with ``rehash``, their blobs hash right); the count."""
    display = model.reference.display
    # Every layer counts, even one named like a path the statement ignores (``.git/...``):
    # model_signing leaves such files of a directory out, but a model's layers are all
    # read by the runner, and one left out of the comparison would ride unsigned.
    have = dict(files_of(model))
    signed = {resource.name: resource.digest for resource in statement.resources}
    changed = sorted(
        name for name in have.keys() & signed.keys() if have[name].digest.hex != signed[name]
    )
    if changed:
        raise SignatureError(
            "{model} does not match the signature: changed since signing: {files}",
            model=display,
            files=_listed(changed),
        )
    if missing := sorted(signed.keys() - have.keys()):
        raise SignatureError(
            "{model} does not match the signature: signed but not in the model: {files}",
            model=display,
            files=_listed(missing),
        )
    if extra := sorted(have.keys() - signed.keys()):
        raise SignatureError(
            "{model} does not match the signature: not signed: {files}",
            model=display,
            files=_listed(extra),
        )
    blobs = models.blobs
    for name, layer in sorted(have.items()):
        if not blobs.has(layer.digest):
            raise SignatureError(
                "file {name} of {model}: blob {digest} is missing from the store",
                name=name,
                model=display,
                digest=layer.digest,
            )
        if rehash and not blobs.verify(layer.digest):
            raise SignatureError(
                "file {name} of {model} is corrupt: blob {digest} no longer hashes to its"
                " digest (cairn verify --repair, then pull or create the model again)",
                name=name,
                model=display,
                digest=layer.digest,
            )
    return len(have)


@dataclass(frozen=True)
class Checked:
    """One signature checked: where it came from, who signed it, and the outcome."""

    source: str
    signer: str | None
    files: int
    error: CairnError | None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_bundle(
    models: Models,
    model: LocalModel,
    source: str,
    bundle: bytes | None,
    key: tuple[Path, ec.EllipticCurvePublicKey] | None,
    roots: Sequence[x509.Certificate],
    rehash: bool,
) -> Checked:
    """Verify one bundle (by ``key``, or by a certificate leading to ``roots``) and then
    the model's files against it."""
    signer: str | None = None
    try:
        if bundle is None:
            raise SignatureError("the signature's bundle blob is missing from the store")
        parsed = oms.Bundle.from_bytes(bundle)
        if key is not None:
            path, public = key
            statement = parsed.verify_with_key(public)
            signer = f"{path} (sha256 {oms.key_hint(public)[:12]})"
        else:
            statement, signer = parsed.verify_with_ca(roots)
        files = check_files(models, model, statement, rehash)
    except CairnError as exc:
        return Checked(source, signer, 0, exc)
    return Checked(source, signer, files, None)
