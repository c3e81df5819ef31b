"""Signatures kept beside their model in the local store, as OCI referrers.

A signature is an OCI artifact manifest, as cosign keeps a Sigstore bundle:
``artifactType`` the bundle's media type, the empty config, one layer (the
bundle blob) and ``subject`` the model's manifest. It is kept by digest in the
model's repository folder (``manifests/<host>/<ns>/<name>/.by-digest/``),
where a manifest pushed by digest alone lands, so ``cairn registry serve``
lists it in its referrers API, a push can send it after the model's
manifest, and a collection keeps its blobs while it is there.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cairn.blobstore import Digest
from cairn.blobstore.digest import from_filename
from cairn.errors import CairnError, ManifestError
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import Descriptor, Manifest, parse_manifest
from cairn.manifests.models import LocalModel, Models
from cairn.manifests.tagstore import BY_DIGEST, TagStore
from cairn.signing import MAX_BUNDLE_SIZE

BUNDLE_MEDIA_TYPE = mt.SIGSTORE_BUNDLE
BUNDLE_MEDIA_TYPES = mt.SIGSTORE_BUNDLES

CREATED = "org.opencontainers.image.created"


@dataclass(frozen=True)
class StoredSignature:
    """One signature of a model: its referrer manifest, and the bundle (None when the
    bundle blob is missing from the store)."""

    digest: Digest
    manifest: Manifest
    bundle: bytes | None

    @property
    def created(self) -> str | None:
        return self.manifest.annotations.get(CREATED)


def signature_manifest(model: LocalModel, bundle: Descriptor, created: str) -> Manifest:
    """The referrer that carries ``bundle`` (a stored blob) for ``model``."""
    subject = Descriptor(
        model.manifest.content_type, model.manifest.digest, len(model.manifest.to_bytes())
    )
    empty = Descriptor(mt.OCI_EMPTY, Digest.parse(mt.OCI_EMPTY_DIGEST), 2)
    return Manifest(
        config=empty,
        layers=(bundle,),
        media_type=mt.OCI_MANIFEST,
        artifact_type=BUNDLE_MEDIA_TYPE,
        subject=subject,
        annotations={CREATED: created},
    )


def save_signature(models: Models, model: LocalModel, bundle: bytes) -> Digest:
    """Keep ``bundle`` as a referrer of ``model``'s manifest; the referrer's digest."""
    created = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    with models.blobs.writing():
        blob = models.blobs.put_bytes(bundle)
        models.blobs.put_bytes(b"{}")  # the empty config, so a push finds it
        layer = Descriptor(BUNDLE_MEDIA_TYPE, blob.digest, blob.size)
        manifest = signature_manifest(model, layer, created)
        models.tags.write_by_digest(model.reference, manifest.digest, manifest.to_bytes())
    return manifest.digest


def signatures(models: Models, model: LocalModel) -> list[StoredSignature]:
    """The signatures kept for ``model``'s manifest in its repository, oldest first."""
    found: list[tuple[float, StoredSignature]] = []
    for referrer in models.referrers(model):
        manifest = referrer.manifest
        if not isinstance(manifest, Manifest) or manifest.artifact_type not in BUNDLE_MEDIA_TYPES:
            continue
        if len(manifest.layers) != 1:
            continue
        try:
            modified = referrer.path.stat().st_mtime
        except OSError:
            continue
        bundle = None
        with (
            contextlib.suppress(OSError, CairnError),
            models.blobs.open(manifest.layers[0].digest) as f,
        ):
            bundle = f.read(MAX_BUNDLE_SIZE + 1)
        digest = from_filename(referrer.path.name) or Digest.of(referrer.data)
        found.append((modified, StoredSignature(digest, manifest, bundle)))
    found.sort(key=lambda item: item[0])
    return [signature for _, signature in found]


def orphaned_referrers(tags: TagStore, grace: float) -> list[Path]:
    """Referrers (of any kind: signatures, SBOMs) kept by digest whose subject is no
    longer a manifest of their repository, older than ``grace`` seconds: what a
    collection removes, so that the blobs only they mention are freed. A referrer may
    arrive before its subject (a push in that order), hence the grace period."""
    orphans: list[Path] = []
    now = time.time()
    for folder, dirs, _ in os.walk(tags.dir):
        if BY_DIGEST not in dirs:
            continue
        repository = Path(folder)
        present: set[Digest] = set()
        kept: list[tuple[Path, bytes]] = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(repository):
                if entry.is_file():
                    with contextlib.suppress(OSError):
                        present.add(Digest.of(Path(entry.path).read_bytes()))
            for entry in os.scandir(repository / BY_DIGEST):
                if entry.is_file():
                    with contextlib.suppress(OSError):
                        data = Path(entry.path).read_bytes()
                        present.add(from_filename(entry.name) or Digest.of(data))
                        kept.append((Path(entry.path), data))
        for path, data in kept:
            try:
                subject = parse_manifest(data).subject
                age = now - path.stat().st_mtime
            except (ManifestError, OSError):
                continue
            if subject is not None and subject.digest not in present and age >= grace:
                orphans.append(path)
    return orphans
