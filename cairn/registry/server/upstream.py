"""The pull-through cache of ``cairn registry serve --upstream URL``.

A pull for a model the store does not hold is answered from the upstreams
(the first that has it, in the order given) and the model is stored as a
push of that name to this server would be: the manifest bytes as the
upstream sent them, each blob verified before it enters ``blobs/``, the tag
written last, once the model is whole. Names map one to one: ``ns/name``
here is ``ns/name`` at the upstream, stored under ``--default-host``.

- A manifest fetched with GET brings the model's blobs in behind it, each
  one download shared by every request for that blob (``Download``).
- A blob is served while it streams in, from the download's partial file as
  bytes land; the last byte of every answer is held back until the whole
  blob hashed right, and a blob that does not is cut off: no client ever
  receives a complete wrong blob, and nothing is stored.
- A tag the store holds is checked against the upstream (a HEAD, then a GET
  if it changed) when it was last checked more than ``ttl`` seconds ago; an
  upstream that cannot be reached leaves the stored tag served.
- The upstream client is ``make_client``'s: credentials from ``cairn
  login`` in the server's ``CAIRN_HOME``, its CA bundle, retries, resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from cairn.blobstore import Blob, BlobStore, Digest
from cairn.blobstore.partial import PartialBlob
from cairn.errors import (
    CairnError,
    ConfigError,
    DigestMismatchError,
    ManifestError,
    RegistryError,
    RemoteNotFoundError,
)
from cairn.i18n import Phrase
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import Descriptor, Manifest, parse_manifest
from cairn.manifests.reference import Reference, parse_reference
from cairn.registry.client import RegistryClient, ascii_digits
from cairn.registry.fetch import fetch_blob
from cairn.registry.server.errors import OCIError
from cairn.registry.server.registry import (
    CHUNK,
    Registry,
    foreign,
    is_digest,
    parse_digest,
    repository_of,
    warn,
)
from cairn.sanitize import untrusted

UPSTREAM_DEADLINE = 30.0
"""Seconds an upstream request a client waits on may take by default (``--upstream-timeout``),
retries included (a check of a stored tag, a manifest or a blob's size the store lacks, a
blob's first bytes): then the stored tag is served, or the client gets a 502."""

CHECK_BACKOFF = 30.0
"""Seconds a stored tag is served without asking the upstream again after a check failed."""

REMEMBERED = 10_000
"""Tags whose last check (or failed check) is remembered before the old ones are forgotten."""

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``5m``, ``1h``, ``1d``, ``250ms`` or a plain number of seconds."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ConfigError(
            "{text!r} is not a duration (a number of seconds, or 30s, 5m, 1h, 1d)", text=text
        )
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


@dataclass(frozen=True)
class Upstream:
    """One ``--upstream``: where it is, and whether it speaks plain HTTP."""

    url: str
    host: str
    insecure: bool


def parse_upstream(url: str) -> Upstream:
    """``http(s)://HOST[:PORT]``; anything else (a path, a query, another scheme) is refused."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises on a port that is not a number
    except ValueError:
        parts, port = urlsplit(""), None
    del port
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ConfigError("--upstream {url!r} is not an http(s)://HOST[:PORT] URL", url=url)
    return Upstream(f"{parts.scheme}://{parts.netloc}", parts.netloc, parts.scheme == "http")


class _Unreachable(Exception):
    """No upstream answered (each failed); the problems, one line each."""


_Found = tuple[bytes | None, "Upstream"] | None
"""What the upstreams said of a manifest: its bytes (None: unchanged) and which one said it;
None when none has it."""


class Download:
    """One blob coming in from an upstream, shared by every request that wants it.

    ``landed`` bytes from offset 0 are in the partial file; ``blob`` is set once the
    whole blob hashed right and is in the store, ``error`` when it failed.
    """

    def __init__(
        self, digest: Digest, size: int, repositories: set[str], upstream: Upstream
    ) -> None:
        self.digest = digest
        self.size = size
        self.upstream = upstream
        self.repositories = repositories
        """Store repositories (``host/ns/name``) the blob is linked into once stored."""
        self.partial: PartialBlob | None = None
        self.opened = False
        self.verified = False
        """The whole partial file hashed to the digest (it is being sealed into the store):
        its bytes may all be served."""
        self.blob: Blob | None = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.generation = 0
        """How many times the partial file was started over (the upstream ignored a Range):
        bytes read from it before a restart are not the blob's, whatever they hash to."""
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def over(self) -> bool:
        return self.blob is not None or self.error is not None

    def landed(self) -> int:
        if self.blob is not None:
            return self.size
        if self.partial is None or not self.opened:
            return 0
        return self.partial.landed()

    def waiter(self) -> asyncio.Future[None]:
        """A future that resolves at the next progress or at the end (ask before looking)."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return future

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    async def wait(self) -> None:
        """Until the download is over; raises its error."""
        while not self.over:
            await self.waiter()
        if self.error is not None:
            raise self.error

    def open_for_reading(self, store: BlobStore) -> int:
        """A descriptor on the bytes: the partial file, or the blob once it is stored (the
        same inode: a sealed partial is linked into ``blobs/``)."""
        candidates = [store.path(self.digest)]
        if self.partial is not None and self.blob is None:
            candidates.insert(0, self.partial.path)
        for path in candidates:
            with contextlib.suppress(FileNotFoundError):
                return os.open(path, os.O_RDONLY)
        raise FileNotFoundError(str(candidates[-1]))


class _WatchedPartial(PartialBlob):
    """A partial file that tells its download when it is started over."""

    def __init__(
        self, store: BlobStore, digest: Digest, size: int, parts: int, rewound: Callable[[], None]
    ) -> None:
        super().__init__(store, digest, size, parts)
        self._rewound = rewound

    def restart(self) -> None:
        self._rewound()  # first: a reader that finds the generation unchanged read old bytes
        super().restart()


class _Watched(BlobStore):
    """The server's store, telling the download which partial file its bytes land in, when
    it is started over, and when they hashed right (``seal`` is called only then, before
    the fsync). ``own_file``: the partial is named for the size too, for a second download
    of the digest under another size (a manifest that lies about it) in this process."""

    def __init__(
        self,
        root: Path | str,
        seen: Callable[[PartialBlob], None],
        rewound: Callable[[], None],
        verified: Callable[[], None],
        own_file: bool,
    ) -> None:
        super().__init__(root)
        self._seen = seen
        self._rewound = rewound
        self._verified = verified
        self._own_file = own_file

    def partial(self, digest: Digest, size: int, parts: int = 1) -> PartialBlob:
        made = _WatchedPartial(self, digest, size, parts, self._rewound)
        if self._own_file:
            made.path = self.tmp_dir / f"{digest.hex}-{size}.partial"
            made.record = self.tmp_dir / f"{digest.hex}-{size}.partial.json"
        self._seen(made)
        return made

    def seal(self, tmp: Path, fd: int, digest: Digest, size: int) -> None:
        self._verified()
        super().seal(tmp, fd, digest, size)


@dataclass
class Pending:
    """A manifest the upstream sent that the store does not hold yet: served at once,
    written (as a tag, or kept by digest) when all its blobs are in."""

    ref: Reference
    """The store reference, with the tag it is written under (None: kept by digest)."""
    key: tuple[str, str]
    digest: Digest
    data: bytes
    manifest: Manifest | None
    """None for an index: served, not stored."""
    upstream: Upstream
    task: asyncio.Task[None] | None = None
    sizes: dict[Digest, int] = field(default_factory=dict)


class Cache:
    """What ``--upstream`` adds to a :class:`Registry`."""

    def __init__(
        self,
        registry: Registry,
        upstreams: tuple[Upstream, ...],
        ttl: float,
        timeout: float = UPSTREAM_DEADLINE,
    ) -> None:
        self.registry = registry
        self.upstreams = upstreams
        self.ttl = ttl
        self.timeout = timeout
        """Seconds an upstream request a client waits on may take (``--upstream-timeout``)."""
        self.downloads: dict[tuple[Digest, int], Download] = {}
        """By digest and size: a manifest that gives a digest another size than the bytes
        have gets a download of its own, which fails, and hurts no one else's."""
        self.pending: dict[tuple[str, str], Pending] = {}
        """(repository, tag as spelled, or digest): manifests on their way into the store,
        each with the task that writes it (and then forgets it)."""
        self.checked: dict[tuple[str, str], float] = {}
        """(repository, tag): when the upstream last confirmed the tag."""
        self.failed: dict[tuple[str, str], float] = {}
        """(repository, tag): when a check of the stored tag last failed."""
        self.fetching: dict[tuple[str, str, Digest | None], asyncio.Task[_Found]] = {}
        """Manifest requests to the upstreams in flight, each shared by every client asking
        for the same (repository, reference) meanwhile."""
        self._clients: dict[Upstream, RegistryClient] = {}

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = [
            d.task for d in self.downloads.values() if d.task is not None
        ]
        tasks += [p.task for p in self.pending.values() if p.task is not None]
        tasks += list(self.fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()

    def client(self, upstream: Upstream) -> RegistryClient:
        """The upstream's client, made once: ``cairn login``'s credentials for its host."""
        if upstream not in self._clients:
            from cairn.registry.clients import make_client

            ref = parse_reference(f"{upstream.host}/library/x")
            self._clients[upstream] = make_client(ref, upstream.insecure)
        return self._clients[upstream]

    def cached(self, ref: Reference) -> bool:
        """Whether the repository is one the upstreams are asked for: a name mapped onto
        ``--default-host`` (three parts naming another host stay the store's own)."""
        return ref.host.casefold() == self.registry.options.default_host.casefold()

    # -- manifests -----------------------------------------------------------------

    async def manifest(self, name: str, reference: str, fetch_blobs: bool) -> bytes:
        """The manifest ``name:reference``: the store's, or the upstream's (newer, or one
        the store lacks); ``fetch_blobs`` (a GET, not a HEAD) starts bringing its blobs in
        and keeps the manifest until it is written."""
        registry = self.registry
        ref = registry.reference(name)
        if not self.cached(ref):
            return await asyncio.to_thread(registry.find_manifest, name, reference)
        repository = repository_of(ref).casefold()
        if is_digest(reference):
            try:
                return await asyncio.to_thread(registry.find_manifest, name, reference)
            except OCIError as exc:
                if exc.code != "MANIFEST_UNKNOWN":
                    raise
            digest = parse_digest(reference)
            key = (repository, str(digest))
            pending = self.pending.get(key)
            if pending is None:
                try:
                    found = await self._shared_fetch(ref, reference, None)
                except _Unreachable as exc:
                    raise _unavailable(f"manifest {name}@{digest}", exc) from None
                if found is None:
                    raise OCIError("MANIFEST_UNKNOWN", f"manifest {reference} is not in {name}")
                data, upstream = found
                assert data is not None
                pending = self.pending.get(key)  # kept by another request meanwhile?
                if pending is None:
                    if not fetch_blobs:
                        return data
                    by_digest = dataclasses.replace(ref, tag=None)
                    pending = self._keep(by_digest, key, digest, data, upstream)
                    if pending is None:
                        return data
            if fetch_blobs:
                self._complete(pending)
            return pending.data
        stored, twin = await asyncio.to_thread(_stored, registry, name, reference)
        key = (repository, reference)  # tags are case-sensitive: "Latest" is not "latest"
        pending = self.pending.get(key)
        now = time.monotonic()
        if (
            now - self.checked.get(key, -math.inf) < self.ttl
            or now - self.failed.get(key, -math.inf) < CHECK_BACKOFF
        ):
            if pending is not None:
                return self._serve(pending, fetch_blobs)
            if stored is not None:
                return stored
        known = Digest.of(stored) if stored is not None else None
        if pending is not None:
            known = pending.digest
        try:
            found = await self._shared_fetch(ref, reference, known)
            if found is not None and found[0] is None:  # unchanged: it is `known`
                pending = self.pending.get(key)
                if pending is not None and pending.digest == known:
                    self._remember(self.checked, key)
                    return self._serve(pending, fetch_blobs)
                if stored is None:  # the pending one was written (or failed) meanwhile
                    stored, twin = await asyncio.to_thread(_stored, registry, name, reference)
                if stored is not None and Digest.of(stored) == known:
                    self._remember(self.checked, key)
                    return stored
                found = await self._shared_fetch(ref, reference, None)
        except _Unreachable as exc:
            pending = self.pending.get(key)
            if pending is None and stored is None:
                raise _unavailable(f"manifest {name}:{reference}", exc) from None
            said = f"upstream check of {name}:{reference} failed, serving the stored one: {exc}"
            warn.warning("%s", said)
            self._remember(self.failed, key)
            if pending is not None:
                return self._serve(pending, fetch_blobs)
            assert stored is not None
            return stored
        self.failed.pop(key, None)
        if found is None:  # no upstream has it (any more): the store's own, if any
            if stored is None:
                raise OCIError("MANIFEST_UNKNOWN", f"manifest {name}:{reference} is unknown")
            self._remember(self.checked, key)
            return stored
        data, upstream = found
        assert data is not None
        digest = Digest.of(data)
        pending = self.pending.get(key)
        if pending is not None and pending.digest == digest:
            self._remember(self.checked, key)
            return self._serve(pending, fetch_blobs)
        if stored is not None and digest == Digest.of(stored):
            self._remember(self.checked, key)
            return stored
        if not fetch_blobs:  # a HEAD: answered, not kept (the GET that may follow asks again)
            return data
        # A tag whose case-folded twin is stored (the store's names ignore case, as
        # Ollama's do) is served and its blobs cached, but the manifest is kept by digest
        # only: writing the tag would replace the twin's.
        target = dataclasses.replace(ref, tag=None) if twin else ref.with_tag(reference)
        kept = self._keep(target, key, digest, data, upstream)
        if kept is None:  # an index: served, not stored
            return data
        self._remember(self.checked, key)
        self._complete(kept)
        return kept.data

    def _serve(self, pending: Pending, fetch_blobs: bool) -> bytes:
        if fetch_blobs:
            self._complete(pending)
        return pending.data

    def _remember(self, when: dict[tuple[str, str], float], key: tuple[str, str]) -> None:
        """Note the time for the tag; the oldest are forgotten past ``REMEMBERED`` tags."""
        when.pop(key, None)
        when[key] = time.monotonic()
        while len(when) > REMEMBERED:
            del when[next(iter(when))]

    async def _shared_fetch(self, ref: Reference, reference: str, known: Digest | None) -> _Found:
        """``_fetch``, one in flight per (repository, reference) shared by every request,
        within the timeout (then _Unreachable); a client that goes away leaves it
        running for the others."""
        key = (repository_of(ref).casefold(), reference, known)
        task = self.fetching.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._fetch_in_time(ref, reference, known)
            )
            self.fetching[key] = task

            def done(finished: asyncio.Task[_Found]) -> None:
                if self.fetching.get(key) is finished:
                    del self.fetching[key]
                if not finished.cancelled():
                    finished.exception()  # retrieved: no "never retrieved" warning

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _fetch_in_time(self, ref: Reference, reference: str, known: Digest | None) -> _Found:
        try:
            return await asyncio.wait_for(self._fetch(ref, reference, known), self.timeout)
        except TimeoutError:
            raise _Unreachable(f"no answer in {self.timeout:.0f} s") from None

    async def _fetch(self, ref: Reference, reference: str, known: Digest | None) -> _Found:
        """The manifest from the first upstream that has it (bytes None: it is ``known``);
        None when every upstream answered that it has none; _Unreachable when none had it
        and some failed."""
        repository = f"{ref.namespace}/{ref.name}"
        problems: list[str] = []
        for upstream in self.upstreams:
            client = self.client(upstream)
            try:
                if known is not None:
                    response = await client.request(
                        "HEAD",
                        f"/v2/{repository}/manifests/{reference}",
                        scope=f"repository:{repository}:pull",
                        headers={"Accept": ", ".join(mt.ACCEPT)},
                    )
                    if response.status_code == 404:
                        continue
                    if response.status_code == 200:
                        said = response.headers.get("Docker-Content-Digest", "")
                        if said == str(known):
                            return None, upstream
                data, content_type, header = await client.get_manifest(repository, reference)
                expected = parse_digest(reference) if is_digest(reference) else None
                actual = Digest.of(data, expected.algorithm if expected else "sha256")
                if expected is not None and actual != expected:
                    raise DigestMismatchError(str(expected), str(actual))
                if header and header.startswith("sha256:") and header != str(Digest.of(data)):
                    raise DigestMismatchError(untrusted(header)[:80], str(Digest.of(data)))
                parse_manifest(data, content_type)
                return data, upstream
            except RemoteNotFoundError:
                continue
            except (CairnError, OCIError) as exc:
                problems.append(f"{upstream.url}: {exc}")
        if problems:
            raise _Unreachable("; ".join(problems))
        return None

    def _keep(
        self, ref: Reference, key: tuple[str, str], digest: Digest, data: bytes, upstream: Upstream
    ) -> Pending | None:
        """Remember a manifest the upstream sent until it is written (replacing an older one),
        and start writing it; None for an index (served, never kept)."""
        parsed = parse_manifest(data)
        if not isinstance(parsed, Manifest):
            return None
        pending = Pending(ref, key, digest, data, parsed, upstream)
        pending.sizes = {d.digest: d.size for d in parsed.blobs if not foreign(d, parsed)}
        old = self.pending.get(key)
        if old is not None and old.task is not None:
            old.task.cancel()
        self.pending[key] = pending
        self._complete(pending)
        return pending

    def _complete(self, pending: Pending) -> None:
        """Bring the pending manifest's blobs in and write it (once: a task, which forgets
        the pending manifest when it ends)."""
        if pending.task is None and pending.manifest is not None:
            pending.task = asyncio.get_running_loop().create_task(self._write_when_whole(pending))

    async def _write_when_whole(self, pending: Pending) -> None:
        registry = self.registry
        repository = repository_of(pending.ref)
        key = pending.key
        try:
            downloads = [
                self._download(digest, size, repository, pending.upstream)
                for digest, size in pending.sizes.items()
                if not registry.models.blobs.has(digest)
            ]
            for download in downloads:
                await download.wait()
            manifest = pending.manifest
            assert manifest is not None

            def save() -> None:
                blobs = registry.models.blobs
                with blobs.writing():
                    for digest, size in pending.sizes.items():
                        if blobs.size(digest) != size:
                            raise ManifestError(
                                "blob {digest} is {actual} bytes, not {size}",
                                digest=digest,
                                actual=blobs.size(digest),
                                size=size,
                            )
                    tags = registry.models.tags
                    twin = tags.find(pending.ref) if pending.ref.tag is not None else None
                    if pending.ref.tag is None or (twin and twin.name != pending.ref.tag):
                        # (a tag whose twin in case was written meanwhile: by digest only)
                        tags.write_by_digest(pending.ref, pending.digest, pending.data)
                    else:
                        tags.write(pending.ref, pending.data)

            await registry.write(save)
            registry.forget_usage()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # told, and tried again at the next request
            warn.warning("caching %s from %s failed: %s", pending.ref, pending.upstream.url, exc)
            self.checked.pop(key, None)
        finally:
            if self.pending.get(key) is pending:
                del self.pending[key]

    # -- blobs ---------------------------------------------------------------------

    def _download(self, digest: Digest, size: int, repository: str, upstream: Upstream) -> Download:
        """The blob's download of that size in flight, or a new one (``repository``: the
        store's). Another size of the same digest (a manifest lying about it) gets its own
        download, in a partial file of its own: it fails alone."""
        download = self.downloads.get((digest, size))
        if download is not None:
            download.repositories.add(repository)
            return download
        own_file = any(key[0] == digest for key in self.downloads)
        download = Download(digest, size, {repository}, upstream)
        self.downloads[(digest, size)] = download
        download.task = asyncio.get_running_loop().create_task(
            self._fetch_blob(download, upstream, repository.split("/", 1)[1], own_file)
        )
        return download

    async def _fetch_blob(
        self, download: Download, upstream: Upstream, remote: str, own_file: bool
    ) -> None:
        registry = self.registry
        loop = asyncio.get_running_loop()

        def seen(partial: PartialBlob) -> None:
            download.partial = partial

        def progress(_: int) -> None:  # from the loop, then from the fetching threads
            def wake() -> None:
                download.opened = True
                download.wake()

            loop.call_soon_threadsafe(wake)

        def verified() -> None:  # from the thread that checked the digest
            def wake() -> None:
                download.verified = True
                download.wake()

            loop.call_soon_threadsafe(wake)

        def rewound() -> None:  # before the partial file is cut: readers see it after a read
            download.generation += 1
            loop.call_soon_threadsafe(download.wake)

        store = _Watched(registry.models.blobs.root, seen, rewound, verified, own_file)
        store.blobs_dir.mkdir(parents=True, exist_ok=True)  # a fresh store has none yet
        descriptor = Descriptor("application/octet-stream", download.digest, download.size)
        try:
            blob = await fetch_blob(self.client(upstream), remote, descriptor, store, progress)

            def link() -> None:
                with registry.models.blobs.writing():
                    actual = registry.models.blobs.size(download.digest)
                    if actual != download.size:  # stored by another download, at its size
                        raise ManifestError(
                            "blob {digest} is {actual} bytes, not {size}",
                            digest=download.digest,
                            actual=actual,
                            size=download.size,
                        )
                    for repository in download.repositories:
                        registry.models.blobs.link(download.digest, repository)

            await registry.write(link)
            registry.stored(blob.size)
            download.blob = blob
        except BaseException as exc:
            download.error = exc
            if not isinstance(exc, asyncio.CancelledError):
                warn.warning(
                    "fetching blob %s from %s failed: %s", download.digest, upstream.url, exc
                )
        finally:
            if self.downloads.get((download.digest, download.size)) is download:
                del self.downloads[(download.digest, download.size)]
            download.wake()

    def _known_size(self, ref: Reference, digest: Digest) -> tuple[int, Upstream] | None:
        """The blob's size and upstream from a manifest of the repository on its way in."""
        repository = repository_of(ref).casefold()
        for (where, _), pending in list(self.pending.items()):
            if where == repository and digest in pending.sizes:
                return pending.sizes[digest], pending.upstream
        return None

    async def _remote_size(self, ref: Reference, digest: Digest) -> tuple[int, Upstream] | None:
        repository = f"{ref.namespace}/{ref.name}"
        problems: list[str] = []
        deadline = time.monotonic() + self.timeout
        for upstream in self.upstreams:
            try:
                size = await asyncio.wait_for(
                    _blob_size(self.client(upstream), repository, digest),
                    max(0.0, deadline - time.monotonic()),
                )
            except TimeoutError:
                problems.append(f"{upstream.url}: no answer in {self.timeout:.0f} s")
                break
            except CairnError as exc:
                problems.append(f"{upstream.url}: {exc}")
                continue
            if size is not None:
                return size, upstream
        if problems:
            raise _unavailable(f"blob {digest}", _Unreachable("; ".join(problems)))
        return None

    async def blob(
        self, request: web.Request, ref: Reference, digest: Digest, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        """Answer a GET or HEAD of a blob the repository does not show: from a download
        (joined or started), or None when it is in the store now (linked: serve it)."""
        unknown = OCIError("BLOB_UNKNOWN", f"blob {digest} is unknown", {"digest": str(digest)})
        if not self.cached(ref):
            raise unknown
        repository = repository_of(ref)
        found = self._known_size(ref, digest)
        if found is None:
            joined = [
                d
                for (d_digest, _), d in self.downloads.items()
                if d_digest == digest and repository in d.repositories
            ]
            if joined:
                found = (joined[0].size, joined[0].upstream)
            else:
                found = await self._remote_size(ref, digest)
        if found is None:
            raise unknown
        size, upstream = found
        blobs = self.registry.models.blobs
        if await asyncio.to_thread(blobs.has, digest):
            if await asyncio.to_thread(blobs.size, digest) != size:
                raise unknown

            def link() -> None:
                with blobs.writing():
                    blobs.link(digest, repository)

            await self.registry.write(link)
            return None
        if request.method == "HEAD":
            headers["Content-Length"] = str(size)
            headers["Accept-Ranges"] = "bytes"
            return web.Response(headers=headers)
        download = self._download(digest, size, repository, upstream)
        return await self._stream(request, download, headers)

    async def _stream(
        self, request: web.Request, download: Download, headers: dict[str, str]
    ) -> web.StreamResponse:
        """The blob (or the asked range) as it lands, the last byte once it is verified.

        Only bytes of the partial file as it is in the end are sent: a client that got
        bytes from before the file was started over (``generation``) is cut off. A 502
        when, before its first byte, the download made no progress for
        the timeout (the download goes on for others)."""
        size = download.size
        start, stop, ranged = _range(request, size)
        if ranged:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        headers["Accept-Ranges"] = "bytes"
        response = web.StreamResponse(status=206 if ranged else 200, headers=headers)
        response.content_length = stop - start
        blobs = self.registry.models.blobs
        position = start
        sent: int | None = None
        """The generation of the partial file the bytes sent so far came from."""
        deadline, progress = time.monotonic() + self.timeout, download.landed()
        fd = -1
        try:
            while position < stop or not (download.verified or download.blob):  # empty too
                woken = download.waiter()
                if download.error is not None:
                    if not response.prepared:
                        raise _failed(download)
                    _cut_off(request)
                    return response
                generation = download.generation
                if sent is not None and sent != generation:
                    _cut_off(request)  # what it got is not (all) the blob's
                    return response
                whole = download.verified or download.blob is not None
                limit = stop if whole else min(download.landed(), stop - 1)
                if position < limit:
                    if fd < 0:
                        fd = await asyncio.to_thread(download.open_for_reading, blobs)
                    chunk = await asyncio.to_thread(
                        os.pread, fd, min(CHUNK, limit - position), position
                    )
                    if download.generation != generation:
                        continue  # started over while it was read: look again
                    if chunk:
                        if not response.prepared:
                            await response.prepare(request)
                        await response.write(chunk)
                        sent = generation
                        position += len(chunk)
                        continue
                if response.prepared:
                    await woken
                    continue
                if download.landed() != progress:
                    deadline, progress = time.monotonic() + self.timeout, download.landed()
                try:
                    await asyncio.wait_for(woken, max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise _unavailable(
                        f"blob {download.digest}",
                        _Unreachable(f"no bytes in {self.timeout:.0f} s"),
                    ) from None
            if not response.prepared:
                await response.prepare(request)
            await response.write_eof()
        except ConnectionError:  # the client went away (Ollama's first GET does)
            pass
        finally:
            if fd >= 0:
                os.close(fd)
        return response


async def _blob_size(client: RegistryClient, repository: str, digest: Digest) -> int | None:
    """The blob's size at the upstream (its HEAD's Content-Length), None when it has none."""
    response = await client.request(
        "HEAD",
        f"/v2/{repository}/blobs/{digest}",
        scope=f"repository:{repository}:pull",
        stream=True,  # the headers as sent (a body read for the caller gets its own length)
    )
    try:
        if response.status_code == 404:
            return None
        client.check(response, Phrase("blob {digest}", digest=digest))
        length = response.headers.get("Content-Length", "")
        if not ascii_digits(length):
            raise RegistryError(
                "blob {digest}: the upstream's HEAD has no Content-Length", digest=digest
            )
        return int(length)
    finally:
        await response.aclose()


def _range(request: web.Request, size: int) -> tuple[int, int, bool]:
    """``start, stop, ranged`` of the request's ``Range`` over a blob of ``size`` bytes."""
    if "Range" not in request.headers:
        return 0, size, False
    try:
        wanted = request.http_range
    except ValueError:
        wanted = slice(size, None)
    start = wanted.start if wanted.start is not None else 0
    if start < 0:
        start = max(0, size + start)
    stop = min(size, wanted.stop if wanted.stop is not None else size)
    if start >= stop:
        raise OCIError(
            "RANGE_INVALID",
            f"the range is outside the blob's {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, stop, True


def _cut_off(request: web.Request) -> None:
    """End the connection mid-body: the client sees a short body, never a whole one."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _failed(download: Download) -> OCIError:
    error = download.error
    if isinstance(error, RemoteNotFoundError):
        return OCIError("BLOB_UNKNOWN", f"blob {download.digest} is unknown upstream")
    return OCIError(
        "UNKNOWN", f"fetching blob {download.digest} from the upstream failed: {error}", status=502
    )


def _unavailable(what: str, exc: BaseException) -> OCIError:
    reason = str(exc) or "no answer in time"
    return OCIError("UNKNOWN", f"{what}: no upstream could be reached ({reason})", status=502)


def _stored(registry: Registry, name: str, tag: str) -> tuple[bytes | None, bool]:
    """The stored manifest of the tag spelled exactly so; and whether a tag that differs
    from it only in case (its twin: the store's names ignore case) is stored instead."""
    try:
        data = registry.find_manifest(name, tag)
    except OCIError as exc:
        if exc.code == "MANIFEST_UNKNOWN":
            return None, False
        raise
    path = registry.models.tags.find(registry.reference(name, tag))
    if path is not None and path.name != tag:
        return None, True
    return data, False
