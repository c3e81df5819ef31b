"""``cairn pull``: a model from a registry into the local store.

The manifest is fetched with an Accept header naming every format cairn
reads and checked against its digest whenever one is known (pulled by
digest, or sent as ``Docker-Content-Digest``); an index is resolved to the
model manifest in it. Missing blobs are fetched concurrently (see
``fetch.py``), each verified before it enters the store, and the manifest is
written last, so a model appears only when whole. Blobs already in the store
are not fetched again. Where the blobs were seen is remembered
(``locations.py``), so that a later push to that registry mounts them.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from cairn.blobstore import Digest
from cairn.config import Mirror
from cairn.errors import (
    CairnError,
    DigestMismatchError,
    InvalidDigestError,
    ManifestError,
    PolicyError,
)
from cairn.i18n import Phrase
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import Descriptor, Index, Manifest, parse_manifest
from cairn.manifests.models import LocalModel, Models
from cairn.manifests.platform import architecture
from cairn.manifests.reference import Reference
from cairn.registry.client import RegistryClient
from cairn.registry.events import Event, Report, quiet
from cairn.registry.fetch import fetch_blob
from cairn.registry.locations import BlobLocations
from cairn.sanitize import untrusted

if TYPE_CHECKING:
    from cairn.signing.policy import Policy

CONCURRENT_BLOBS = 3
_PINNED_TAG = re.compile(r"sha256-([0-9a-f]{64})", re.IGNORECASE)  # tags match in any case
"""The tag a model pulled by digest is kept under: a remote tag of that form must match it."""


def check_manifest(data: bytes, expected: Digest | None) -> None:
    actual = Digest.of(data, expected.algorithm if expected else "sha256")
    if expected is not None and actual != expected:
        raise DigestMismatchError(Phrase("manifest {expected}", expected=expected), str(actual))


def header_digest(value: str | None) -> Digest | None:
    if not value:
        return None
    try:
        return Digest.parse(value)
    except InvalidDigestError:
        return None  # an algorithm the store does not keep: the bytes are checked as kept


def choose_from_index(index: Index) -> Descriptor:
    """The index entry that is a model: an artifact, else this machine's platform."""
    manifests = [d for d in index.manifests if d.media_type in mt.MANIFEST_TYPES]
    arch = architecture()
    preferences: tuple[Callable[[Descriptor], bool], ...] = (
        lambda d: d.artifact_type is not None or d.platform is None,
        lambda d: (d.platform or {}).get("architecture") == arch,
        lambda d: (d.platform or {}).get("os") in ("linux", None),
    )
    for wanted in preferences:
        for descriptor in manifests:
            if wanted(descriptor):
                return descriptor
    kinds = ", ".join(sorted({d.media_type for d in index.manifests})) or "none"
    raise ManifestError("the index holds no model manifest (its entries: {kinds})", kinds=kinds)


async def follow_index(
    client: RegistryClient, repository: str, parsed: Manifest | Index
) -> Manifest:
    """``parsed`` itself, or the model manifest the index ``parsed`` lists (checked against
    the digest the index gives it)."""
    if isinstance(parsed, Manifest):
        return parsed
    entry = choose_from_index(parsed)
    data, content_type, _ = await client.get_manifest(repository, str(entry.digest))
    check_manifest(data, entry.digest)
    model = parse_manifest(data, content_type)
    if not isinstance(model, Manifest):
        raise ManifestError("an index inside an index is not a model")
    return model


async def resolve(client: RegistryClient, ref: Reference) -> Manifest:
    """Fetch and check the manifest ``ref`` names, following an index to its model."""
    reference = str(ref.digest) if ref.digest else ref.tag_or_default
    data, content_type, header = await client.get_manifest(ref.repository, reference)
    check_manifest(data, ref.digest or header_digest(header))
    parsed = await follow_index(client, ref.repository, parse_manifest(data, content_type))
    sizes: dict[Digest, int] = {}
    for descriptor in parsed.blobs:
        if sizes.setdefault(descriptor.digest, descriptor.size) != descriptor.size:
            raise ManifestError(
                "the manifest lists blob {digest} twice, with sizes {one} and {other}",
                digest=descriptor.digest,
                one=sizes[descriptor.digest],
                other=descriptor.size,
            )
    return parsed


async def pull(
    models: Models,
    ref: Reference,
    client: RegistryClient,
    report: Report = quiet,
    save_as: Reference | None = None,
    locations: BlobLocations | None = None,
    policy: Policy | None = None,
) -> LocalModel:
    """Pull ``ref`` into ``models`` (under ``save_as``, for a mirror); return the model.

    ``locations``: where the blobs are remembered to be (default: the user's cache).
    ``policy``: the trust policy the model must meet before it is tagged (default:
    ``$CAIRN_HOME/policy.json``); its signatures are fetched either way.
    """
    report(Event(Phrase("pulling manifest")))
    if client.notice is None:
        client.notice = lambda said: report(Event(said))
    manifest = await resolve(client, ref)
    pinned = _PINNED_TAG.fullmatch((save_as or ref).tag or "")
    if pinned and pinned.group(1).lower() != manifest.digest.hex:
        # cairn keeps a model pulled by digest under this very tag: a remote
        # tag of the same spelling must not replace it with other content.
        raise DigestMismatchError("sha256:" + pinned.group(1).lower(), str(manifest.digest))
    unique = list({d.digest: d for d in manifest.blobs}.values())
    with models.blobs.writing():
        missing = [d for d in unique if not models.blobs.has(d.digest)]
        for descriptor in unique:
            if (
                descriptor not in missing
                and models.blobs.size(descriptor.digest) != descriptor.size
            ):
                raise ManifestError(
                    "the manifest says blob {digest} has {declared} bytes; the stored blob of"
                    " that digest has {size}",
                    digest=descriptor.digest,
                    declared=descriptor.size,
                    size=models.blobs.size(descriptor.digest),
                )
        for descriptor in unique:
            if descriptor not in missing:
                report(
                    Event(
                        Phrase("pulling {digest}", digest=descriptor.digest.short),
                        str(descriptor.digest),
                        descriptor.size,
                        descriptor.size,
                    )
                )
        limit = asyncio.Semaphore(CONCURRENT_BLOBS)

        async def one(descriptor: Descriptor) -> None:
            async with limit:
                done = 0
                seen: tuple[int | None, int | None] = (None, None)
                lock = threading.Lock()  # progress comes from the streams' threads

                def progress(count: int) -> None:
                    nonlocal done
                    with lock:
                        done += count
                        completed = done
                    report(
                        Event(
                            Phrase("pulling {digest}", digest=descriptor.digest.short),
                            str(descriptor.digest),
                            descriptor.size,
                            completed,
                            *seen,
                        )
                    )

                def observe(streams: int, rate: float) -> None:
                    nonlocal seen
                    seen = (streams, int(rate))

                await fetch_blob(
                    client, ref.repository, descriptor, models.blobs, progress, observe
                )

        await asyncio.gather(*(one(d) for d in missing))
        report(Event(Phrase("verifying sha256 digest")))
        report(Event(Phrase("writing manifest")))
        target = save_as or ref
        tag = target.tag or f"sha256-{manifest.digest.hex}"
        await _signatures(client, models, ref, manifest, target.with_tag(tag), policy, report)
        model = models.save(target.with_tag(tag), manifest)
    where = locations or BlobLocations.from_environment()
    await asyncio.to_thread(where.remember, ref.host, ref.repository, [d.digest for d in unique])
    report(Event(Phrase("success")))
    return model


async def _signatures(
    client: RegistryClient,
    models: Models,
    ref: Reference,
    manifest: Manifest,
    target: Reference,
    policy: Policy | None,
    report: Report,
) -> None:
    """Fetch the model's signatures (OCI referrers) into the store beside it; where the
    trust policy asks for signatures, check them before the model is tagged.

    Under a policy that accepts the model anyway, a registry that cannot list referrers
    is passed over in silence (most registries of models have none), and a listed
    signature that cannot be fetched is a warning.
    """
    from cairn import config
    from cairn.manifests.mediatypes import SIGSTORE_BUNDLES as BUNDLE_MEDIA_TYPES
    from cairn.registry.referrers import fetch_referrers, list_referrers
    from cairn.signing import policy as trust

    chosen = policy if policy is not None else trust.load_policy(config.load().home)
    _, requirements = chosen.applying_to(target)
    strict = any(r.kind != "accept" for r in requirements)
    types = tuple(BUNDLE_MEDIA_TYPES)
    listed: list[Descriptor] = []
    try:
        listed, _ = await list_referrers(client, ref.repository, manifest.digest, types)
        await fetch_referrers(client, models, ref, manifest.digest, listed, target)
    except CairnError as exc:
        if strict:
            raise PolicyError(
                "cannot fetch the signatures of {display}, which the trust policy asks for:"
                " {reason}",
                display=target.display,
                reason=exc,
            ) from exc
        if listed:
            report(
                Event(
                    Phrase(
                        "warning: a signature of {display} could not be fetched: {reason}",
                        display=target.display,
                        reason=untrusted(str(exc))[:300],
                    )
                )
            )
    trust.hold(models, target, manifest, chosen)


async def pull_via_mirrors(
    models: Models,
    ref: Reference,
    mirrors: tuple[Mirror, ...],
    connect: Callable[[str, bool], RegistryClient],
    report: Report = quiet,
) -> LocalModel | None:
    """Try each mirror of ``ref``'s registry in turn; None when none had it.

    A mirror answers for the same repository path; what it serves is checked
    like anything else (digests), and stored under the original name. Any
    failure, a bad blob or manifest included, moves on to the next mirror
    and in the end to the origin. A mirror with ``resolve_tags`` off gets
    digests only: the tag is resolved at the origin first.
    ``connect(host, insecure)`` makes the client for a mirror.
    """
    pinned: Digest | None = ref.digest
    for mirror in mirrors:
        insecure = mirror.url.startswith("http://")
        host = mirror.url.removeprefix("http://").removeprefix("https://").rstrip("/")
        try:
            if pinned is None and not mirror.resolve_tags:
                async with connect(ref.host, ref.insecure) as origin:
                    data, _, _ = await origin.get_manifest(ref.repository, ref.tag_or_default)
                pinned = Digest.of(data)
            digest = ref.digest if mirror.resolve_tags else pinned
            mirrored = Reference(host, ref.namespace, ref.name, ref.tag, digest, insecure)
            async with connect(host, insecure) as client:
                return await pull(models, mirrored, client, report, save_as=ref)
        except CairnError as exc:
            report(
                Event(
                    Phrase(
                        "mirror {host} failed ({exc}); trying the next",
                        host=untrusted(host),
                        exc=untrusted(str(exc))[:500],
                    )
                )
            )
    return None
