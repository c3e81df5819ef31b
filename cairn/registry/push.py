"""``cairn push``: a local model to a registry.

Each blob is checked with HEAD first and skipped when the registry has it;
mounted from another repository of the same registry when one is known to
hold it (the source model's own, then those of the blob-location cache,
``locations.py``); else uploaded whole when small, in ``PATCH`` chunks with
``Content-Range`` when large, resuming an interrupted upload from the offset
the registry reports.
The manifest goes last, with its exact bytes. ``--format oci`` pushes an OCI
artifact (``artifactType``, file names in ``org.opencontainers.image.title``)
that skopeo and oras can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from urllib.parse import urlencode

import httpx

from cairn.blobstore import BlobStore
from cairn.errors import CairnError, RegistryError, TransferError
from cairn.i18n import Phrase
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import Descriptor, Manifest
from cairn.manifests.models import LocalModel, Models
from cairn.manifests.reference import Reference, require_oci
from cairn.manifests.titles import layer_titles
from cairn.registry.client import (
    SMALL_BODY,
    RegistryClient,
    ascii_digits,
    connection_problem,
    undecoded_headers,
)
from cairn.registry.events import Event, Report, quiet
from cairn.registry.fetch import start_request, use_fast_path
from cairn.registry.locations import BlobLocations
from cairn.registry.ratelimit import RateLimiter
from cairn.registry.streams import connect

DEFAULT_CHUNK_SIZE = 64 << 20
# Up to this size a blob goes in one PUT. Larger ones go by PATCH: CNCF
# distribution takes a streamed PATCH about 25 % faster than the same bytes
# in a monolithic PUT (measured with curl, docs/performance.md).
MONOLITHIC_LIMIT = 1 << 20
_PIECE = 1 << 20
MOUNT_TRIES = 3
"""Repositories a push tries to mount one blob from before it uploads the blob."""

CAIRN_CONFIG = "application/vnd.cairn.model.config.v1+json"


def as_oci_artifact(manifest: Manifest) -> Manifest:
    """The same blobs as an OCI artifact: artifactType set, every layer titled."""
    layers = [
        Descriptor(
            layer.media_type,
            layer.digest,
            layer.size,
            {**layer.annotations, mt.OCI_TITLE_ANNOTATION: title},
        )
        for title, layer in layer_titles(manifest.layers)
    ]
    config = manifest.config
    if config.media_type == mt.DOCKER_CONFIG:
        config = Descriptor(CAIRN_CONFIG, config.digest, config.size)
    return Manifest.build(config, layers, mt.OCI_MANIFEST, artifact_type=mt.CAIRN_ARTIFACT)


def with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + f"digest={digest}"


async def _pieces(
    store: BlobStore,
    descriptor: Descriptor,
    start: int,
    end: int,
    limiter: RateLimiter | None = None,
) -> AsyncIterator[bytes]:
    """Bytes ``start:end`` of a stored blob, a MiB at a time (read in a thread)."""
    handle = store.open(descriptor.digest)
    try:
        await asyncio.to_thread(handle.seek, start)
        position = start
        while position < end:
            piece = await asyncio.to_thread(handle.read, min(_PIECE, end - position))
            if not piece:
                raise TransferError(
                    "blob {digest} is shorter than its manifest says", digest=descriptor.digest
                )
            position += len(piece)
            if limiter is not None:
                await limiter.aconsume(len(piece))
            yield piece
    finally:
        handle.close()


async def upload_blob(
    client: RegistryClient,
    repository: str,
    store: BlobStore,
    descriptor: Descriptor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[int], None] = lambda n: None,
    session: str | None = None,
) -> None:
    """Upload one blob; after a failure, go on from where the registry says it got.

    ``session``: an upload session already open (the one a failed mount
    opened), used before any other. A registry that cannot say where an
    upload stands (distribution answers a status request made with a stale
    ``_state`` with BLOB_UPLOAD_INVALID) gets a fresh session.
    """
    scope = f"repository:{repository}:pull,push"
    digest = str(descriptor.digest)
    failures = 0
    location: str | None = session or None
    offset = 0
    while True:
        try:
            if location is None:
                location = await start_upload(client, repository, scope, digest)
                offset = 0
            await _send_from(
                client, location, scope, store, descriptor, offset, chunk_size, progress
            )
            return
        except (TransferError, RegistryError):
            failures += 1
            if failures >= client.retry.attempts or location is None:
                raise
            await asyncio.sleep(client.retry.delay(failures - 1))
            resumed = await _upload_offset(client, location, scope)
            if resumed is None:
                location = None  # start a new session from zero
            else:
                offset = resumed


async def mount_blob(
    client: RegistryClient,
    repository: str,
    digest: str,
    sources: Sequence[str],
    failed: Callable[[str], None] = lambda source: None,
) -> str | None:
    """Mount ``digest`` into ``repository`` from the first of ``sources`` that holds it.

    "" when it was mounted. Otherwise the upload session the last try
    opened (a registry that cannot mount answers 202 and opens one: the
    caller uploads into it), or None. A session opened by an earlier try is
    cancelled before the next, so none is left behind. ``failed(source)`` is
    told of each source that did not serve; a try that fails in any way
    (an error status, a refused token) is only a mount that did not happen.
    """
    scope = f"repository:{repository}:pull,push"
    session: str | None = None
    for source in sources[:MOUNT_TRIES]:
        if session:
            await cancel_upload(client, session, scope)
            session = None
        start = f"/v2/{repository}/blobs/uploads/?" + urlencode({"mount": digest, "from": source})
        try:
            response = await client.request(
                "POST", start, scope=f"{scope} repository:{source}:pull"
            )
            if response.status_code == 201:
                return ""
            if response.status_code == 202 and response.headers.get("Location"):
                session = client.follow(client.url(start), response.headers["Location"])
        except CairnError:
            pass
        failed(source)
    return session


async def cancel_upload(client: RegistryClient, session: str, scope: str) -> None:
    """End an upload session nobody will use (best effort: it expires anyway)."""
    with contextlib.suppress(CairnError, httpx.HTTPError):
        await client.request("DELETE", session, scope=scope)


async def start_upload(client: RegistryClient, repository: str, scope: str, digest: str) -> str:
    """Open an upload session for ``digest``; its URL (mounts are :func:`mount_blob`'s)."""
    start = f"/v2/{repository}/blobs/uploads/"
    response = await client.request("POST", start, scope=scope)
    client.check(response, Phrase("starting the upload of {digest}", digest=digest), (202,))
    # The session may live on another origin (a storage front end): it is
    # followed, but the registry's credentials stay behind (client.request).
    return client.follow(client.url(start), response.headers.get("Location", ""))


async def _send_from(
    client: RegistryClient,
    location: str,
    scope: str,
    store: BlobStore,
    descriptor: Descriptor,
    offset: int,
    chunk_size: int,
    progress: Callable[[int], None],
) -> None:
    """Send the blob from ``offset``: whole in one PUT when small, else PATCH chunks."""
    digest = str(descriptor.digest)
    size = descriptor.size
    if offset == 0 and size <= min(chunk_size, MONOLITHIC_LIMIT):
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        response = await _send_body(
            client,
            "PUT",
            with_digest(location, digest),
            scope,
            headers,
            store,
            descriptor,
            0,
            size,
        )
        client.check(response, Phrase("uploading {digest}", digest=digest), (201, 204))
        progress(size)
        return
    while offset < size:
        end = min(size, offset + chunk_size)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(end - offset),
            "Content-Range": f"{offset}-{end - 1}",
        }
        response = await _send_body(
            client, "PATCH", location, scope, headers, store, descriptor, offset, end
        )
        client.check(response, Phrase("uploading {digest}", digest=digest), (202,))
        location = client.follow(location, response.headers.get("Location", location))
        progress(end - offset)
        offset = end
    response = await client.request(
        "PUT",
        with_digest(location, digest),
        scope=scope,
        headers={"Content-Length": "0"},
        content=b"",
    )
    client.check(response, Phrase("finishing the upload of {digest}", digest=digest), (201, 204))


async def _send_body(
    client: RegistryClient,
    method: str,
    url: str,
    scope: str,
    headers: dict[str, str],
    store: BlobStore,
    descriptor: Descriptor,
    start: int,
    end: int,
) -> httpx.Response:
    """Send bytes ``start:end`` of a stored blob as a request body.

    Straight from the file to the socket (``sendfile``, in a thread) when the
    registry is reached directly; through httpx, a MiB at a time, otherwise.
    """
    if not use_fast_path(client) or client.limiter is not None:
        return await client.request(
            method,
            url,
            scope=scope,
            headers=headers,
            content=_pieces(store, descriptor, start, end, client.limiter),
            replayable=False,
        )
    credential = client.authorization(scope) if client.at_origin(url) else None
    sent = {**headers, **({"Authorization": credential} if credential else {})}
    ssl_context = client.http1_ssl_context()
    path = store.path(descriptor.digest)
    try:
        status, answer, body = await asyncio.to_thread(
            _sendfile_request, method, url, sent, path, start, end - start, ssl_context
        )
    except (OSError, http.client.HTTPException) as exc:
        problem = connection_problem(exc, url)
        if problem is not None:
            raise TransferError(
                "{method} of blob {digest}: {problem}",
                method=method,
                digest=descriptor.digest,
                problem=problem,
            ) from exc
        raise TransferError(
            "{method} of blob {digest}: {exc!r:.200}",
            method=method,
            digest=descriptor.digest,
            exc=exc,
        ) from exc
    return httpx.Response(status, headers=undecoded_headers(answer), content=body)


def _sendfile_request(
    method: str,
    url: str,
    headers: dict[str, str],
    path: Path,
    offset: int,
    count: int,
    ssl_context: ssl.SSLContext | None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    conn, target = connect(url, ssl_context)
    try:
        start_request(conn, method, target, headers)
        if count:
            assert conn.sock is not None
            with open(path, "rb") as f:
                if isinstance(conn, http.client.HTTPSConnection):  # TLS: through user space
                    f.seek(offset)
                    left = count
                    while left:
                        piece = f.read(min(left, 1 << 20))
                        if not piece:
                            raise OSError(f"{path} is shorter than expected")
                        conn.sock.sendall(piece)
                        left -= len(piece)
                else:
                    conn.sock.sendfile(f, offset, count)
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read(SMALL_BODY)
    finally:
        conn.close()


async def _upload_offset(client: RegistryClient, location: str, scope: str) -> int | None:
    """Where an interrupted upload stands (``Range: 0-N``), or None when the registry can't say."""
    try:
        response = await client.request("GET", location, scope=scope)
    except TransferError:
        return None
    if response.status_code not in (202, 204):
        return None
    end = response.headers.get("Range", "").removeprefix("bytes=").partition("-")[2]
    return int(end) + 1 if ascii_digits(end) else 0


async def _push_signatures(
    client: RegistryClient,
    models: Models,
    model: LocalModel,
    repository: str,
    pushed: Manifest,
    size: int,
    report: Report,
) -> None:
    """The model's stored signatures after it, as referrers of the manifest pushed (an
    OCI artifact's too: the bundle lists the layers, which the formats share)."""
    from cairn.registry.referrers import push_referrers
    from cairn.signing.store import signatures

    stored = [s.manifest for s in signatures(models, model) if s.bundle is not None]
    if not stored:
        return
    report(Event(Phrase("pushing {count} signature(s)", count=len(stored))))
    subject = Descriptor(pushed.content_type, pushed.digest, size)
    await push_referrers(client, models, repository, subject, stored)


async def push(
    models: Models,
    source: str,
    dest: Reference,
    client: RegistryClient,
    fmt: str = "ollama",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    report: Report = quiet,
    locations: BlobLocations | None = None,
) -> str:
    """Push the local model ``source`` as ``dest``; return the manifest's digest.

    ``locations``: where blobs were seen (default: the user's cache), to
    mount from; the pushed blobs are remembered there.
    """
    require_oci(dest)
    model = models.get(source)
    manifest = model.manifest if fmt == "ollama" else as_oci_artifact(model.manifest)
    for descriptor in manifest.blobs:
        models.blobs.check_quick(descriptor.digest)
    if locations is None:
        locations = BlobLocations.from_environment()
    repository = dest.repository
    same_registry = model.reference.host.casefold() == dest.host.casefold()
    own = [model.reference.repository] if same_registry else []
    report(Event(Phrase("retrieving manifest")))
    if client.notice is None:
        client.notice = lambda said: report(Event(said))
    unique = list({d.digest: d for d in manifest.blobs}.values())
    for descriptor in unique:
        label = Phrase("pushing {digest}", digest=descriptor.digest.short)
        if await client.blob_size(repository, str(descriptor.digest), push=True) is not None:
            report(Event(label, str(descriptor.digest), descriptor.size, descriptor.size))
            continue
        seen = await asyncio.to_thread(locations.where, dest.host, descriptor.digest)
        if repository in seen:  # the registry says it is not there (any more)
            await asyncio.to_thread(locations.forget, dest.host, repository, descriptor.digest)
        sources = [r for r in dict.fromkeys(own + seen) if r != repository]
        stale: list[str] = []
        session = await mount_blob(
            client, repository, str(descriptor.digest), sources, stale.append
        )
        for gone in stale:
            await asyncio.to_thread(locations.forget, dest.host, gone, descriptor.digest)
        if session == "":  # mounted: reported as a blob the registry had
            report(Event(label, str(descriptor.digest), descriptor.size, descriptor.size))
            continue
        done = 0

        def progress(count: int, descriptor: Descriptor = descriptor, label: str = label) -> None:
            nonlocal done
            done = min(descriptor.size, done + count)  # a restarted upload counts once
            report(Event(label, str(descriptor.digest), descriptor.size, done))

        await upload_blob(
            client, repository, models.blobs, descriptor, chunk_size, progress, session=session
        )
    report(Event(Phrase("pushing manifest")))
    data = manifest.to_bytes()
    await client.put_manifest(repository, dest.tag_or_default, data, manifest.content_type)
    await _push_signatures(client, models, model, repository, manifest, len(data), report)
    digests = [d.digest for d in unique]
    await asyncio.to_thread(locations.remember, dest.host, repository, digests)
    report(Event(Phrase("success")))
    return str(manifest.digest)
