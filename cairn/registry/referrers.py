"""A manifest's referrers on a registry (its signatures), found and sent as OCI 1.1 says.

The referrers API (``GET /v2/<name>/referrers/<digest>``) where the registry has it;
where it answers 404 (docker-registry 2.8 and other registries before OCI 1.1), the
tag fallback: an image index tagged ``sha256-<hex>`` of the subject, listing its
referrers, which the pusher keeps up to date.

What is fetched is checked like anything else: a referrer manifest by its digest, its
blobs by theirs, and it must name the model's manifest as its subject.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence

import httpx

from cairn.blobstore import Digest
from cairn.errors import CairnError, ManifestError, RegistryError, RemoteNotFoundError
from cairn.i18n import Phrase
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Index,
    Manifest,
    parse_manifest,
)
from cairn.manifests.models import Models
from cairn.manifests.reference import Reference
from cairn.registry.client import BodyTooLargeError, RegistryClient, read_capped
from cairn.registry.fetch import fetch_blob
from cairn.registry.pull import check_manifest

MAX_REFERRERS = 64
"""Referrers fetched for one model at most: a registry cannot make a pull fetch without end."""
MAX_REFERRER_BYTES = 17 << 20
"""The blobs of one referrer together, at most: a signature bundle (16 MiB at most) and
its config. Refused by the sizes the referrer declares, before a byte is fetched: a
"signature" must not make a pull download gigabytes."""
MAX_REFERRERS_BYTES = 64 << 20
"""The blobs of all the referrers fetched for one model, at most."""
FALLBACK_TRIES = 5
FALLBACK_SETTLE = 0.2
"""Seconds (and up to as many again, at random) to wait after writing the fallback index
before reading it back: long enough for another push's write to land first."""


def fallback_tag(subject: Digest) -> str:
    """The tag of the fallback index: ``sha256-<hex>``."""
    return f"{subject.algorithm}-{subject.hex}"


NO_API = (404, 405, 501)
"""What a registry without the referrers API answers (one with it never says 404)."""


async def list_referrers(
    client: RegistryClient,
    repository: str,
    subject: Digest,
    artifact_types: Sequence[str] | None = None,
    api: bool = True,
) -> tuple[list[Descriptor], bool]:
    """The referrers of ``subject`` (those with one of ``artifact_types``, when given), and
    whether the registry has the referrers API (False: they came from the fallback tag).
    ``api=False``: the fallback tag alone (a registry known to lack the API)."""
    if not api:
        return await _from_fallback(client, repository, subject, artifact_types), False
    response = await client.request(
        "GET",
        f"/v2/{repository}/referrers/{subject}",
        scope=f"repository:{repository}:pull",
        headers={"Accept": mt.OCI_INDEX},
        stream=True,
    )
    what = Phrase("referrers of {digest}", digest=subject)
    try:
        if response.status_code in NO_API:
            return await _from_fallback(client, repository, subject, artifact_types), False
        if response.status_code != 200:
            await response.aread()
        client.check(response, str(what))
        body = await read_capped(response, MAX_MANIFEST_SIZE, what, client.retry)
    except BodyTooLargeError:
        raise ManifestError(
            "{what}: larger than the {limit} byte limit", what=what, limit=MAX_MANIFEST_SIZE
        ) from None
    except httpx.TransportError as exc:
        raise ManifestError("{what}: {reason}", what=what, reason=str(exc)) from exc
    finally:
        await response.aclose()
    return _of_types(_index(body, what), artifact_types), True


async def _from_fallback(
    client: RegistryClient,
    repository: str,
    subject: Digest,
    artifact_types: Sequence[str] | None,
) -> list[Descriptor]:
    index = await fallback_index(client, repository, subject)
    return [] if index is None else _of_types(index, artifact_types)


async def fallback_index(client: RegistryClient, repository: str, subject: Digest) -> Index | None:
    """The index tagged ``sha256-<hex>`` of ``subject``, None when there is none."""
    try:
        data, _, _ = await client.get_manifest(
            repository, fallback_tag(subject), accept=(mt.OCI_INDEX,)
        )
    except RemoteNotFoundError:
        return None
    return _index(data, Phrase("the referrers tag of {digest}", digest=subject))


def _index(body: bytes, what: object) -> Index:
    try:
        return Index.from_bytes(body)
    except (CairnError, ValueError, json.JSONDecodeError) as exc:
        raise ManifestError(
            "{what}: not an image index ({reason})", what=what, reason=exc
        ) from None


def _of_types(index: Index, artifact_types: Sequence[str] | None) -> list[Descriptor]:
    wanted = [
        d for d in index.manifests if artifact_types is None or d.artifact_type in artifact_types
    ]
    return wanted[:MAX_REFERRERS]


async def fetch_referrers(
    client: RegistryClient,
    models: Models,
    ref: Reference,
    subject: Digest,
    listed: Sequence[Descriptor],
    save_as: Reference,
) -> list[Digest]:
    """Fetch the ``listed`` referrers of ``subject`` (manifests and blobs, each checked)
    and keep them by digest in ``save_as``'s repository; their digests."""
    kept: list[Digest] = []
    fetched = 0
    for descriptor in listed:
        data, content_type, _ = await client.get_manifest(
            ref.repository, str(descriptor.digest), accept=(mt.OCI_MANIFEST,)
        )
        check_manifest(data, descriptor.digest)
        manifest = parse_manifest(data, content_type)
        if not isinstance(manifest, Manifest) or manifest.subject is None:
            raise ManifestError(
                "referrer {digest} is not a manifest with a subject", digest=descriptor.digest
            )
        if manifest.subject.digest != subject:
            raise ManifestError(
                "referrer {digest} names another subject ({other}, not {subject})",
                digest=descriptor.digest,
                other=manifest.subject.digest,
                subject=subject,
            )
        blobs = {d.digest: d for d in manifest.blobs}.values()
        size = sum(max(blob.size, 0) for blob in blobs)
        if size > MAX_REFERRER_BYTES:
            raise ManifestError(
                "referrer {digest}: its blobs come to {size} bytes, larger than the {limit}"
                " byte limit of a referrer",
                digest=descriptor.digest,
                size=size,
                limit=MAX_REFERRER_BYTES,
            )
        fetched += size
        if fetched > MAX_REFERRERS_BYTES:
            raise ManifestError(
                "the referrers of {subject}: their blobs come to more than the {limit} byte limit",
                subject=subject,
                limit=MAX_REFERRERS_BYTES,
            )
        with models.blobs.writing():
            for blob in blobs:
                if not models.blobs.has(blob.digest):
                    await fetch_blob(client, ref.repository, blob, models.blobs)
            models.tags.write_by_digest(save_as, descriptor.digest, data)
        kept.append(descriptor.digest)
    return kept


def for_subject(referrer: Manifest, subject: Descriptor) -> Manifest:
    """``referrer`` pointing at ``subject``: a signature of a model goes with the model
    converted to an OCI artifact (the bundle lists layers, which the formats share)."""
    return Manifest(
        referrer.config,
        referrer.layers,
        referrer.media_type,
        referrer.artifact_type,
        subject,
        referrer.annotations,
    )


async def push_referrers(
    client: RegistryClient,
    models: Models,
    repository: str,
    subject: Descriptor,
    referrers: Sequence[Manifest],
) -> int:
    """Push ``referrers`` (their blobs, then each manifest by digest) for ``subject``, a
    manifest already on the registry; where the registry has no referrers API, add
    them to the fallback index too. How many were pushed."""
    from cairn.registry.push import upload_blob

    if not referrers:
        return 0
    pushed: list[tuple[Manifest, bytes]] = []
    for referrer in referrers:
        moved = for_subject(referrer, subject)
        for blob in {d.digest: d for d in moved.blobs}.values():
            if await client.blob_size(repository, str(blob.digest), push=True) is None:
                await upload_blob(client, repository, models.blobs, blob)
        data = moved.to_bytes()
        await client.put_manifest(repository, str(moved.digest), data, moved.content_type)
        pushed.append((moved, data))
    _, has_api = await list_referrers(client, repository, subject.digest, ())
    if not has_api:
        listed = [
            Descriptor(
                manifest.content_type,
                manifest.digest,
                len(data),
                annotations=dict(manifest.annotations),
                artifact_type=manifest.artifact_type,
            )
            for manifest, data in pushed
        ]
        await add_to_fallback(client, repository, subject.digest, listed)
    return len(pushed)


async def add_to_fallback(
    client: RegistryClient, repository: str, subject: Digest, added: Sequence[Descriptor]
) -> None:
    """The fallback index of ``subject`` with ``added`` in it (what it listed stays).

    A registry has no compare-and-swap for a tag: two pushes that read the index before
    either writes it would each write back their own referrer alone, and one would be
    lost. So the index is read back after a short wait, and written again while what was
    added is missing from it (another push wrote over it); the other push does the same.
    """
    for tried in range(FALLBACK_TRIES + 1):
        index = await fallback_index(client, repository, subject)
        listed = list(index.manifests) if index is not None else []
        have = {d.digest for d in listed}
        new = [d for d in added if d.digest not in have]
        if not new:
            return
        if tried == FALLBACK_TRIES:
            break
        updated = Index((*listed, *new), mt.OCI_INDEX)
        await client.put_manifest(
            repository, fallback_tag(subject), updated.to_bytes(), mt.OCI_INDEX
        )
        await asyncio.sleep(FALLBACK_SETTLE * (1 + random.random()))
    raise RegistryError(
        "the referrers tag {tag} of {repository} lost what this push added {count} times:"
        " another push writes it at the same time; push again",
        tag=fallback_tag(subject),
        repository=repository,
        count=FALLBACK_TRIES,
    )
