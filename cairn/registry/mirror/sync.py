"""``cairn sync``: models from registries to a registry, an OCI layout or a bundle.

What to copy comes from a YAML file in the shape of skopeo sync's (a
registry, its ``images:`` repositories with tag lists, ``[]`` for every tag,
``images-by-tag-regex:``, ``tls-verify:``), or from one repository
reference. For each image, the destination's manifest digest for the tag is
compared (HEAD) with the source's before anything else: equal, nothing more
is asked. Otherwise the blobs go first, then the manifest bytes exactly as the
source sent them (an index after its children), then the manifest's referrers
where the source answers the referrers API.

A blob the destination repository has is skipped; one the destination
registry holds elsewhere (copied earlier in this run, or known to the
blob-location cache) is mounted; any other streams from the source straight
into the upload, through two threads (the source's bytes read into a few
recycled buffers, hashed and sent as they come), never stored and never held
whole. The upload's final PUT names the digest, so the registry checks it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from cairn.blobstore import Digest
from cairn.errors import (
    CairnError,
    DigestMismatchError,
    ManifestError,
    RegistryError,
    RemoteNotFoundError,
    TransferError,
)
from cairn.i18n import Phrase
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import Descriptor, Index, Manifest, parse_manifest
from cairn.registry.client import (
    BodyTooLargeError,
    RegistryClient,
    read_capped,
)
from cairn.registry.events import Event, Report, quiet
from cairn.registry.fetch import use_fast_path
from cairn.registry.locations import BlobLocations
from cairn.registry.mirror.layout import LayoutWriter, open_writer, ref_name
from cairn.registry.mirror.streamcopy import SourceStream
from cairn.registry.mirror.syncfile import (
    TAG,
    Source,
    Target,
    load_sync_file,
    parse_source,
    parse_target,
)
from cairn.registry.pull import header_digest
from cairn.registry.push import (
    MOUNT_TRIES,
    cancel_upload,
    mount_blob,
    start_upload,
    with_digest,
)
from cairn.registry.referrers import add_to_fallback, list_referrers
from cairn.sanitize import untrusted

TAG_PAGE = 1000
"""Tags asked for per page of ``/tags/list``; the ``Link`` header leads to the next."""
TAGS_LIMIT = 16 << 20
"""The most bytes of tag lists read for one repository, all its pages together."""
TAGS_MAX = 100_000
"""The most tags one repository may list; past it, the listing fails (never cut short)."""
TAG_PAGES_MAX = 10_000
IMAGES_AT_ONCE = 4
BLOBS_AT_ONCE = 3
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


# -- the result ---------------------------------------------------------------------


@dataclass
class Summary:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, CairnError]] = field(default_factory=list)
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "copied": sorted(self.copied),
            "skipped": sorted(self.skipped),
            "failed": [{"image": name, "error": str(exc)} for name, exc in self.failed],
            "blobs": {
                "copied": self.blobs_copied,
                "mounted": self.blobs_mounted,
                "present": self.blobs_present,
                "bytes": self.bytes_copied,
            },
        }


# -- the engine ---------------------------------------------------------------------

Connect = Callable[[str, bool], RegistryClient]


class Sync:
    """One run: ``await Sync(...).run(sources)`` gives the summary; failures are in it."""

    def __init__(
        self,
        target: Target,
        connect: Connect,
        report: Report = quiet,
        dry_run: bool = False,
        keep_going: bool = False,
        locations: BlobLocations | None = None,
    ) -> None:
        self.target = target
        self.connect = connect
        self.report = report
        self.dry_run = dry_run
        self.keep_going = keep_going
        self.locations = locations
        self.summary = Summary(dry_run=dry_run)
        self._clients: dict[tuple[str, bool], RegistryClient] = {}
        self._dest: RegistryClient | None = None
        self._writer: LayoutWriter | None = None
        self._layout_lock = asyncio.Lock()
        self._images = asyncio.Semaphore(IMAGES_AT_ONCE)
        self._blobs = asyncio.Semaphore(BLOBS_AT_ONCE)
        self._jobs: dict[tuple[str, Digest], asyncio.Future[None]] = {}
        self._no_referrers: set[str] = set()
        self._stopped = False
        self._broken = False
        self._fast: dict[str, bool] = {}

    def client(self, host: str, insecure: bool) -> RegistryClient:
        key = (host.lower(), insecure)
        if key not in self._clients:
            self._clients[key] = self.connect(host, insecure)
        return self._clients[key]

    async def run(self, sources: list[Source]) -> Summary:
        try:
            if self.target.host is not None:
                self._dest = self.client(self.target.host, self.target.insecure)
            elif not self.dry_run:
                assert self.target.path is not None
                self._writer = await asyncio.to_thread(
                    open_writer, self.target.path, self.target.level
                )
            try:
                await asyncio.gather(*(self._source(s) for s in sources))
            except BaseException:
                if self._writer is not None:
                    await asyncio.to_thread(self._writer.abort)
                raise
            if self._writer is not None:
                # A bundle with a blob cut off in it is never finished (no index.json),
                # nor one that a failure without --keep-going left short of images.
                short = bool(self.summary.failed) and not self.keep_going
                if self._broken or (short and not self._to_directory()):
                    finish = self._writer.abort
                else:
                    finish = self._writer.close
                await asyncio.to_thread(finish)
        finally:
            for client in self._clients.values():
                await client.aclose()
        return self.summary

    def _failed(self, name: str, exc: CairnError) -> None:
        self.summary.failed.append((name, exc))
        self.report(Event(Phrase("failed {image}: {error}", image=name, error=exc)))
        if not self.keep_going:
            self._stopped = True

    async def _source(self, source: Source) -> None:
        client = self.client(source.host, source.insecure)
        try:
            wanted = source.tags
            if wanted is None:
                self.report(Event(Phrase("listing tags of {repository}", repository=source.name)))
                tags = await list_tags(client, source.repository)
                if source.pattern is not None:
                    tags = [t for t in tags if source.pattern.search(t)]
                wanted = tuple(tags)
        except CairnError as exc:
            self._failed(f"{source.name} (tags)", exc)
            return
        await asyncio.gather(*(self._image(client, source, w) for w in wanted))

    async def _image(self, client: RegistryClient, source: Source, wanted: str) -> None:
        pinned = ":" in wanted
        name = f"{source.name}{'@' if pinned else ':'}{wanted}"
        async with self._images:
            if self._stopped:
                return
            try:
                await self._copy_image(client, source, wanted, name, pinned)
            except CairnError as exc:
                if self._broken:
                    self._stopped = True  # half an entry cannot be taken back from a stream
                self._failed(name, exc)

    async def _copy_image(
        self, client: RegistryClient, source: Source, wanted: str, name: str, pinned: bool
    ) -> None:
        repository = self.target.repository(source.repository)
        there, here = await asyncio.gather(
            self._dest_manifest(repository, wanted, name),
            _head_manifest(client, source.repository, wanted),
        )
        if here is None:
            raise RemoteNotFoundError("{image} is not in the source registry", image=name)
        if there is not None and there == here:
            self.summary.skipped.append(name)
            self.report(Event(Phrase("skipped {image}: the destination has it", image=name)))
            if not self.dry_run:
                await self._referrers(client, source, repository, here, 0)
            return
        if self.dry_run:
            self.summary.copied.append(name)
            self.report(Event(Phrase("would copy {image}", image=name)))
            return
        tag = None if pinned else wanted
        await self._manifest(client, source, repository, wanted, here, tag, name, None, 0)
        self.summary.copied.append(name)
        self.report(Event(Phrase("copied {image}", image=name)))

    async def _dest_manifest(self, repository: str, reference: str, name: str) -> Digest | None:
        if self._dest is not None:
            return await _head_manifest(self._dest, repository, reference, push=True)
        if self._writer is not None:
            for entry in self._writer.entries:
                if ref_name(entry) == name:
                    with contextlib.suppress(CairnError):
                        digest = Digest.parse(entry.get("digest"))  # type: ignore[arg-type]
                        if self._writer.has_blob(digest):
                            return digest
        return None

    async def _manifest(
        self,
        client: RegistryClient,
        source: Source,
        repository: str,
        reference: str,
        expected: Digest | None,
        tag: str | None,
        name: str | None,
        subject: Digest | None,
        depth: int,
    ) -> Digest:
        """Copy one manifest (its blobs or children first); its digest."""
        if depth > 4:
            raise ManifestError("manifests nest deeper than 4 levels under {name}", name=name)
        data, content_type, header = await client.get_manifest(source.repository, reference)
        digest = Digest.of(data, expected.algorithm if expected else "sha256")
        expected = expected or header_digest(header)
        if expected is not None and digest != expected:
            raise DigestMismatchError(
                Phrase("manifest {image}", image=name or reference), str(digest)
            )
        parsed = parse_manifest(data, content_type)
        media_type = parsed.media_type or content_type or parsed.content_type
        if isinstance(parsed, Index):
            for child in parsed.manifests:
                if child.media_type not in mt.MANIFEST_TYPES | mt.INDEX_TYPES:
                    continue
                if await self._dest_has_manifest(repository, child.digest):
                    continue
                await self._manifest(
                    client,
                    source,
                    repository,
                    str(child.digest),
                    child.digest,
                    None,
                    None,
                    None,
                    depth + 1,
                )
        else:
            await self._blobs_of(client, source, repository, parsed)
        await self._put_manifest(repository, tag, name, data, media_type, digest, parsed, subject)
        await self._referrers(client, source, repository, digest, depth)
        return digest

    async def _dest_has_manifest(self, repository: str, digest: Digest) -> bool:
        if self._dest is not None:
            return await _head_manifest(self._dest, repository, str(digest), push=True) == digest
        return self._writer is not None and self._writer.has_blob(digest)

    async def _put_manifest(
        self,
        repository: str,
        tag: str | None,
        name: str | None,
        data: bytes,
        media_type: str,
        digest: Digest,
        parsed: Manifest | Index,
        subject: Digest | None,
    ) -> None:
        if self._dest is not None:
            stored = await self._dest.put_manifest(repository, tag or str(digest), data, media_type)
            if stored and header_digest(stored) not in (None, digest):
                raise RegistryError(
                    "{host} stored manifest {digest} as {stored}: it changed the bytes",
                    host=self._dest.host,
                    digest=digest,
                    stored=untrusted(stored[:100]),
                )
            return
        assert self._writer is not None
        writer = self._writer
        async with self._layout_lock:
            if tag is not None and name is not None:
                await asyncio.to_thread(
                    writer.add_manifest, name, data, media_type, None, parsed.artifact_type
                )
            elif subject is not None:
                await asyncio.to_thread(
                    writer.add_manifest, None, data, media_type, subject, parsed.artifact_type
                )
            else:
                descriptor = Descriptor(media_type, digest, len(data))
                await asyncio.to_thread(writer.add_bytes, descriptor, data)

    async def _referrers(
        self, client: RegistryClient, source: Source, repository: str, digest: Digest, depth: int
    ) -> None:
        """Copy what refers to ``digest`` (signatures, SBOMs): as the source's referrers
        API lists them, or its fallback tag (``sha256-<hex>``) where it has no API; a
        destination registry without the API gets the fallback tag too."""
        if depth > 3:
            return
        entries = await self._listed_referrers(client, source, digest)
        copied: list[Descriptor] = []
        for entry in entries:
            if entry.media_type not in mt.MANIFEST_TYPES | mt.INDEX_TYPES:
                continue
            copied.append(entry)
            if await self._dest_has_manifest(repository, entry.digest):
                continue
            await self._manifest(
                client,
                source,
                repository,
                str(entry.digest),
                entry.digest,
                None,
                None,
                digest,
                depth + 1,
            )
        if copied and self._dest is not None:
            _, has_api = await list_referrers(self._dest, repository, digest, ())
            if not has_api:
                await add_to_fallback(self._dest, repository, digest, copied)

    async def _listed_referrers(
        self, client: RegistryClient, source: Source, digest: Digest
    ) -> list[Descriptor]:
        host = source.host.lower()
        api = host not in self._no_referrers
        listed, has_api = await list_referrers(client, source.repository, digest, api=api)
        if not has_api:
            self._no_referrers.add(host)
        return listed

    # -- blobs ------------------------------------------------------------------------

    async def _blobs_of(
        self, client: RegistryClient, source: Source, repository: str, manifest: Manifest
    ) -> None:
        unique = list({d.digest: d for d in manifest.blobs}.values())
        await asyncio.gather(*(self._blob(client, source, repository, d) for d in unique))
        if self.locations is not None:
            digests = [d.digest for d in unique]
            await asyncio.to_thread(
                self.locations.remember, source.host, source.repository, digests
            )
            if self._dest is not None:
                await asyncio.to_thread(
                    self.locations.remember, self._dest.host, repository, digests
                )

    async def _blob(
        self, client: RegistryClient, source: Source, repository: str, descriptor: Descriptor
    ) -> None:
        """Place one blob at the destination once, however many images share it."""
        key = (repository.lower(), descriptor.digest)
        job = self._jobs.get(key)
        if job is None:
            job = asyncio.ensure_future(self._place(client, source, repository, descriptor, key))
            self._jobs[key] = job
        await asyncio.shield(job)

    async def _place(
        self,
        client: RegistryClient,
        source: Source,
        repository: str,
        descriptor: Descriptor,
        key: tuple[str, Digest],
    ) -> None:
        label = Phrase("copying {digest}", digest=descriptor.digest.short)
        digest = descriptor.digest
        size = descriptor.size

        def done() -> None:
            self.report(Event(label, str(digest), size, size))

        if self._writer is not None:
            if self._writer.has_blob(digest):
                self.summary.blobs_present += 1
                return done()
            await self._copy(client, source, repository, descriptor, None, label)
            return
        dest = self._dest
        assert dest is not None
        if await dest.blob_size(repository, str(digest), push=True) is not None:
            self.summary.blobs_present += 1
            return done()
        # The one mount path push takes too: a refused or failed mount (a repository
        # the user may not read, a blob gone there) is only a mount that did not
        # happen; the blob is uploaded instead, and the location forgotten.
        candidates = await self._mount_candidates(source, repository, digest, key)
        stale: list[str] = []
        session = await mount_blob(dest, repository, str(digest), candidates, stale.append)
        if self.locations is not None:
            for gone in stale:
                if gone != source.repository:
                    await asyncio.to_thread(self.locations.forget, dest.host, gone, digest)
        if session == "":
            self.summary.blobs_mounted += 1
            return done()
        await self._copy(client, source, repository, descriptor, session, label)

    async def _mount_candidates(
        self, source: Source, repository: str, digest: Digest, key: tuple[str, Digest]
    ) -> list[str]:
        """Repositories of the destination registry to mount the blob from, best first.

        This run's own copies count once done; only those that started earlier
        are waited for (two waiting on each other would wait for ever).
        """
        assert self._dest is not None
        found: list[str] = []
        if source.host.lower() == self._dest.host.lower():
            found.append(source.repository)
        for (other, seen), job in list(self._jobs.items()):
            if (other, seen) == key:
                break
            if seen == digest:
                with contextlib.suppress(CairnError, asyncio.CancelledError):
                    await asyncio.shield(job)
                    if not job.exception():
                        found.append(other)
        if self.locations is not None:
            cached = await asyncio.to_thread(self.locations.where, self._dest.host, digest)
            if repository in cached:  # the registry says it is not there (any more)
                await asyncio.to_thread(self.locations.forget, self._dest.host, repository, digest)
            found += cached
        unique = [r for r in dict.fromkeys(found) if r.lower() != repository.lower()]
        return unique[:MOUNT_TRIES]

    async def _copy(
        self,
        client: RegistryClient,
        source: Source,
        repository: str,
        descriptor: Descriptor,
        session: str | None,
        label: Phrase,
    ) -> None:
        """Stream the blob from the source into the destination, checked, with retries."""
        done = 0

        def progress(count: int) -> None:
            nonlocal done
            done = min(descriptor.size, done + count)
            self.report(Event(label, str(descriptor.digest), descriptor.size, done))

        attempts = client.retry.attempts
        async with self._blobs:
            for attempt in range(attempts):
                done = 0
                try:
                    if self._writer is not None:
                        async with self._layout_lock:
                            await self._copy_to_layout(client, source, descriptor, progress)
                    else:
                        await self._copy_to_registry(
                            client, source, repository, descriptor, session, progress
                        )
                    break
                except (
                    TransferError,
                    OSError,
                    http.client.HTTPException,
                    httpx.TransportError,
                ) as exc:
                    session = None
                    if attempt + 1 >= attempts or self._writer is not None:
                        if isinstance(exc, CairnError):
                            raise
                        raise TransferError(
                            "copying blob {digest}: {problem}",
                            digest=descriptor.digest,
                            problem=untrusted(f"{type(exc).__name__}: {exc}")[:300],
                        ) from exc
                    await asyncio.sleep(client.retry.delay(attempt))
        self.summary.blobs_copied += 1
        self.summary.bytes_copied += descriptor.size

    async def _copy_to_layout(
        self,
        client: RegistryClient,
        source: Source,
        descriptor: Descriptor,
        progress: Callable[[int], None],
    ) -> None:
        assert self._writer is not None
        stream = SourceStream(client, source.repository, descriptor, self._fast_path(client))
        try:
            await stream.open()
            sink = self._writer.blob(descriptor)
            try:

                def write(view: memoryview) -> None:
                    sink.write(view)
                    progress(len(view))

                await stream.pump(write)
                await asyncio.to_thread(sink.close)
            except BaseException:
                self._broken = not self._to_directory()
                discard = getattr(sink, "discard", None)
                if discard is not None:
                    with contextlib.suppress(Exception):
                        discard()
                raise
        finally:
            stream.close()

    def _to_directory(self) -> bool:
        return self.target.path not in (None, "-") and Path(str(self.target.path)).is_dir()

    def _fast_path(self, client: RegistryClient) -> bool:
        """Whether bytes go by ``http.client`` threads: both ends reached directly."""
        return use_fast_path(client) and (self._dest is None or use_fast_path(self._dest))

    async def _copy_to_registry(
        self,
        client: RegistryClient,
        source: Source,
        repository: str,
        descriptor: Descriptor,
        session: str | None,
        progress: Callable[[int], None],
    ) -> None:
        dest = self._dest
        assert dest is not None
        scope = f"repository:{repository}:pull,push"
        digest = str(descriptor.digest)
        stream = SourceStream(client, source.repository, descriptor, self._fast_path(client))
        location = session or ""
        try:
            await stream.open()
            if not session:
                session = location = await start_upload(dest, repository, scope, digest)
            location = await stream.upload(dest, session, scope, progress)
            actual = Digest(stream.hasher.hexdigest(), descriptor.digest.algorithm)
            if actual != descriptor.digest:
                raise DigestMismatchError(digest, str(actual))
            response = await dest.request(
                "PUT",
                with_digest(location, digest),
                scope=scope,
                headers={"Content-Length": "0"},
                content=b"",
            )
            dest.check(
                response, str(Phrase("finishing the upload of {digest}", digest=digest)), (201, 204)
            )
            location = ""
        finally:
            stream.close()
            if location:
                await cancel_upload(dest, location, scope)


async def _head_manifest(
    client: RegistryClient, repository: str, reference: str, push: bool = False
) -> Digest | None:
    """The digest of what ``repository:reference`` names, None when there is none."""
    response = await client.request(
        "HEAD",
        f"/v2/{repository}/manifests/{reference}",
        scope=f"repository:{repository}:{'pull,push' if push else 'pull'}",
        headers={"Accept": ", ".join(mt.ACCEPT)},
    )
    if response.status_code == 404:
        return None
    client.check(
        response,
        str(
            Phrase("manifest {repository}:{reference}", repository=repository, reference=reference)
        ),
    )
    digest = header_digest(response.headers.get("Docker-Content-Digest"))
    if digest is None:  # no header: the bytes say
        data, _, _ = await client.get_manifest(repository, reference)
        digest = Digest.of(data)
    return digest


async def list_tags(client: RegistryClient, repository: str, page: int = TAG_PAGE) -> list[str]:
    """Every tag of ``repository``, following ``Link: <...>; rel="next"`` page by page.

    Bounded whatever the registry sends: ``TAGS_MAX`` tags, ``TAGS_LIMIT`` bytes
    and ``TAG_PAGES_MAX`` pages in all; past any of them the listing fails.
    """
    url: str | None = f"/v2/{repository}/tags/list?n={page}"
    scope = f"repository:{repository}:pull"
    tags: dict[str, None] = {}
    seen: set[str] = set()
    listed_in_all = 0
    read_in_all = 0
    what = Phrase("tags of {repository}", repository=repository)
    while url is not None and url not in seen:
        if len(seen) >= TAG_PAGES_MAX:
            raise RegistryError(
                "{what}: more than {pages} pages; cairn reads at most that many",
                what=what,
                pages=TAG_PAGES_MAX,
            )
        seen.add(url)
        read_in_all += len(url)
        response = await client.request("GET", url, scope=scope, stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
                client.check(response, str(what))
            try:
                body = await read_capped(
                    response, max(0, TAGS_LIMIT - read_in_all), what, client.retry
                )
            except BodyTooLargeError:
                raise RegistryError(
                    "{what}: the list is larger than {size} MiB, all pages together",
                    what=what,
                    size=TAGS_LIMIT >> 20,
                ) from None
        finally:
            await response.aclose()
        read_in_all += len(body)
        try:
            listed = json.loads(body).get("tags") or []
        except (ValueError, AttributeError, RecursionError):
            listed = None
        if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
            raise RegistryError("{what}: the answer is not a tag list", what=what)
        listed_in_all += len(listed)
        if listed_in_all > TAGS_MAX:
            raise RegistryError(
                "{what}: more than {count} tags; cairn lists at most that many",
                what=what,
                count=TAGS_MAX,
            )
        tags.update((t, None) for t in listed if TAG.fullmatch(t))
        link = _NEXT.search(response.headers.get("Link", ""))
        url = _next_page(client, str(response.request.url), link.group(1)) if link else None
    return list(tags)


def _next_page(client: RegistryClient, current: str, link: str) -> str:
    """The next page's URL: at the registry's own origin always, as skopeo reads a Link
    (only its path and query): another host's tags never join the list."""
    followed = client.follow(current, link)
    if client.at_origin(followed):
        return followed
    parts = urlsplit(followed)
    return parts.path + (f"?{parts.query}" if parts.query else "")


__all__ = [
    "Source",
    "Summary",
    "Sync",
    "Target",
    "list_tags",
    "load_sync_file",
    "parse_source",
    "parse_target",
]
