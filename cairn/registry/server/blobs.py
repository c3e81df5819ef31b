"""Blob and upload endpoints of ``cairn registry serve``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from stat import S_ISREG

from aiohttp import web

from cairn.blobstore import Blob, Digest
from cairn.errors import StoreError, UploadLimitError
from cairn.manifests.reference import Reference
from cairn.registry.server.errors import OCIError
from cairn.registry.server.registry import (
    CHUNK,
    CREDENTIALS,
    NUMBER,
    RETRY_SESSIONS,
    Registry,
    absolute_url,
    blob_url,
    body_chunks,
    parse_digest,
    repository_of,
)
from cairn.registry.server.uploads import Session, Uploads


async def get_blob(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    ref = registry.reference(name)
    digest = parse_digest(request.match_info["digest"])
    path = registry.models.blobs.path(digest)

    def look() -> int | None:  # one look at the size: the blob may be deleted meanwhile
        size = _file_size(path)
        return size if size is not None and registry.sees(ref, digest) else None

    size = await asyncio.to_thread(look)
    if size is None and registry.cache is not None:
        answer = await registry.cache.blob(
            request, ref, digest, _blob_headers(request, name, ref, digest)
        )
        if answer is not None:
            return answer
        size = await asyncio.to_thread(look)  # in the store now, linked into the repository
    if size is None:
        raise OCIError("BLOB_UNKNOWN", f"blob {digest} is unknown", {"digest": str(digest)})
    headers = _blob_headers(request, name, ref, digest)
    if request.method == "HEAD":
        headers["Content-Length"] = str(size)
        headers["Accept-Ranges"] = "bytes"
        return web.Response(headers=headers)
    response = web.FileResponse(path, chunk_size=CHUNK, headers=headers)
    return response


def _blob_headers(
    request: web.Request, name: str, ref: Reference, digest: Digest
) -> dict[str, str]:
    registry: Registry = request.app["registry"]
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": "application/octet-stream",
        # Ollama's downloader (server/download.go, before ollama#7244 was fixed) takes
        # the blob's URL from the unranged GET's Location and fails without one.
        "Location": blob_url(request, name, digest),
    }
    if request.get(CREDENTIALS) and request.method == "GET":
        # Ollama fetches the parts from this Location with no credentials; a grant is
        # given for credentials only, never for a grant (it would renew itself forever)
        grant = registry.tokens.grant(repository_of(ref), str(digest))
        headers["Location"] += f"?grant={grant}"
    return headers


def _file_size(path: Path) -> int | None:
    """The size of the regular file ``path``; None when there is none."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_size if S_ISREG(info.st_mode) else None


async def delete_blob(request: web.Request) -> web.StreamResponse:
    """Take the blob out of this repository; its bytes go when no other repository links
    it and no manifest in the store uses it."""
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    ref = registry.reference(name)
    digest = parse_digest(request.match_info["digest"])
    models = registry.models
    repository = repository_of(ref)

    def remove() -> bool:
        with models.blobs.collecting():
            if not registry.visible(ref, digest):
                return False
            if digest in registry.used_by(ref):
                raise OCIError(
                    "UNSUPPORTED",
                    f"blob {digest} is used by a manifest of {name}; delete that first",
                )
            models.blobs.unlink(digest, repository)
            if not models.blobs.links(digest):
                try:
                    used = digest in models.referenced()
                except StoreError:  # a manifest being written, unreadable: keep the bytes
                    used = True
                if not used:
                    models.blobs.delete(digest)
            return True

    if not await registry.write(remove):
        raise OCIError("BLOB_UNKNOWN", f"blob {digest} is unknown")
    registry.forget_usage()
    return web.Response(status=202)


def _upload_headers(request: web.Request, name: str, session: Session) -> dict[str, str]:
    return {
        "Location": absolute_url(request, f"/v2/{name}/blobs/uploads/{session.id}"),
        "Range": f"0-{max(0, session.offset - 1)}",
        "Docker-Upload-UUID": session.id,
    }


async def _receive(request: web.Request, session: Session) -> None:
    """Append the request's body to the session (holding its lock)."""
    registry: Registry = request.app["registry"]
    if request.content_length:
        registry.check_quota(request.content_length)
    async for chunk in body_chunks(request, "BLOB_UPLOAD_INVALID"):
        registry.check_quota(len(chunk))
        await asyncio.to_thread(Uploads.append, session, chunk)


async def start_upload(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    ref = registry.reference(name)
    mount, source = request.query.get("mount"), request.query.get("from")
    mounted = parse_digest(mount) if mount and source else None
    if mounted is not None and source and await _mounted(registry, ref, mounted, source):
        digest = mounted
        return web.Response(
            status=201,
            headers={
                "Location": blob_url(request, name, digest),
                "Docker-Content-Digest": str(digest),
            },
        )
    wanted = request.query.get("digest")
    whole = parse_digest(wanted) if wanted is not None else None  # before a session exists
    try:
        session = registry.uploads.start(name, request.remote or "")
    except UploadLimitError as exc:
        raise OCIError(
            "TOOMANYREQUESTS", str(exc), headers={"Retry-After": str(RETRY_SESSIONS)}
        ) from None
    if whole is not None:  # a single POST with the whole blob
        session.hasher = whole.hasher()  # hashed in its own algorithm as it arrives
        async with session.lock:
            try:
                await _receive(request, session)
            except BaseException:
                registry.uploads.drop(session)  # nobody can resume a single-request upload
                raise
            return await _finish(request, registry, name, session, whole)
    return web.Response(status=202, headers=_upload_headers(request, name, session))


async def _mounted(registry: Registry, ref: Reference, digest: Digest, source: str) -> bool:
    """Link the blob into ``ref`` if repository ``source`` may see it (else the client
    uploads it: a mount never shows a blob through a name that does not hold it)."""
    try:
        origin = registry.reference(source)
    except OCIError:
        return False

    def mount() -> bool:
        with registry.models.blobs.writing():
            if not registry.visible(origin, digest):
                return False
            registry.models.blobs.link(digest, repository_of(ref))
            return True

    return await registry.write(mount)


NO_SESSION = "no such upload session (expired, finished, cancelled or made up)"


def _session(request: web.Request, touch: bool = True) -> tuple[Registry, str, Session]:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    session = registry.uploads.get(request.match_info["uuid"], name, touch)
    if session is None:
        raise OCIError("BLOB_UPLOAD_UNKNOWN", NO_SESSION)
    return registry, name, session


def _still_open(session: Session) -> None:
    """Call holding the session's lock: another request may have closed it meanwhile."""
    if session.closed:
        raise OCIError("BLOB_UPLOAD_UNKNOWN", NO_SESSION)


async def patch_upload(request: web.Request) -> web.StreamResponse:
    registry, name, session = _session(request)
    async with session.lock:
        _still_open(session)
        await _receive_chunk(request, registry, name, session)
        return web.Response(status=202, headers=_upload_headers(request, name, session))


async def _receive_chunk(
    request: web.Request, registry: Registry, name: str, session: Session
) -> None:
    """Append a chunk whose ``Content-Range`` (if any) must start where the upload is and
    span exactly the bytes sent: 416 otherwise. A chunked body is counted as it arrives,
    and one that does not match its range is taken back (file and hash) before the 416."""
    content_range = request.headers.get("Content-Range")
    if not content_range:
        await _receive(request, session)
        return
    start, _, end = content_range.removeprefix("bytes=").partition("-")

    def refuse(why: str) -> OCIError:
        return OCIError("RANGE_INVALID", why, headers=_upload_headers(request, name, session))

    if not NUMBER.fullmatch(start) or int(start) != session.offset:
        raise refuse(f"the upload is at byte {session.offset}; this chunk starts at {start!r:.40}")
    if not NUMBER.fullmatch(end) or int(end) < int(start):
        raise refuse(f"Content-Range {content_range!r:.80} is not a range")
    span = int(end) - int(start) + 1
    if request.content_length is not None and request.content_length != span:
        raise refuse(f"Content-Range {content_range!r:.80} does not span the bytes sent")
    before = (session.offset, session.hasher.copy())
    await _receive(request, session)
    if session.offset - before[0] != span:
        await asyncio.to_thread(registry.uploads.rewind, session, *before)
        raise refuse(f"Content-Range {content_range!r:.80} does not span the bytes sent")


async def upload_status(request: web.Request) -> web.StreamResponse:
    _, name, session = _session(request, touch=False)
    return web.Response(status=204, headers=_upload_headers(request, name, session))


async def put_upload(request: web.Request) -> web.StreamResponse:
    registry, name, session = _session(request)
    digest = parse_digest(request.query.get("digest", ""))
    async with session.lock:
        _still_open(session)
        await _receive_chunk(request, registry, name, session)
        return await _finish(request, registry, name, session, digest)


async def _finish(
    request: web.Request, registry: Registry, name: str, session: Session, digest: Digest
) -> web.StreamResponse:
    def finish() -> Blob | None:
        with registry.models.blobs.writing():
            if not registry.models.blobs.has(digest):  # counted again, now it is to stay
                registry.check_quota(0, fresh=True)
            blob = registry.uploads.finish(session, digest)
            if blob is not None:
                registry.models.blobs.link(digest, repository_of(registry.reference(name)))
            return blob

    try:
        # before the store's write lock: hashing gigabytes again must not hold every write
        await asyncio.to_thread(Uploads.rehash, session, digest.algorithm)
        blob = await registry.write(finish)
    except BaseException:
        registry.uploads.drop(session)  # whatever failed, the session is over
        raise
    if blob is None:
        raise OCIError("DIGEST_INVALID", f"the uploaded bytes do not hash to {digest}")
    registry.stored(blob.size)
    return web.Response(
        status=201,
        headers={
            "Location": blob_url(request, name, digest),
            "Docker-Content-Digest": str(digest),
        },
    )


async def cancel_upload(request: web.Request) -> web.StreamResponse:
    registry, _, session = _session(request)
    async with session.lock:  # after any request writing to it
        _still_open(session)
        registry.uploads.drop(session)
    return web.Response(status=204)
