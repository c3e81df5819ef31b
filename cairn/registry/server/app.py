"""``cairn registry serve``: an OCI Distribution registry over the local store.

Repositories map onto the store's ``<host>/<namespace>/<name>``: a name
whose first component is a host the store holds maps there; ``ns/name``
maps to ``--default-host``. Blobs are the store's blobs (one pool for all
repositories); manifests are tags in Ollama's layout, and a manifest pushed
by digest alone is kept beside the tags, in the repository's ``.by-digest``
folder, never as a tag. A manifest fetched by digest always hashes to it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from cairn.blobstore import Blob, Digest
from cairn.config import DEFAULT_HOST
from cairn.errors import (
    CairnError,
    ConfigError,
    InvalidReferenceError,
    ManifestError,
    StorageFullError,
    UploadClosedError,
    UploadLimitError,
)
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Index,
    Manifest,
    parse_manifest,
)
from cairn.manifests.models import Models
from cairn.manifests.reference import Reference, parse_reference
from cairn.registry.server.errors import OCIError
from cairn.registry.server.uploads import Session, Uploads

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
AUTH_CACHE = 60.0
"""Seconds a verified Basic credential is taken without running bcrypt again."""
RETRY_SESSIONS = 10
"""Seconds a client told there are too many upload sessions is asked to wait."""
BODY_IDLE = 60.0
"""Seconds a request body may send nothing before the server gives up on it."""
CHUNK = 1 << 20
log = logging.getLogger("cairn.registry.access")
warn = logging.getLogger("cairn.registry")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Options:
    root: Path
    default_host: str = DEFAULT_HOST
    read_only: bool = False
    users: dict[str, bytes] = field(default_factory=dict)
    """htpasswd: user name to bcrypt hash; empty means no auth."""
    public_read: bool = False
    json_logs: bool = False
    upload_expiry: float = 3600.0
    quota: int | None = None
    """Most bytes of blobs the store may hold; an upload past it is refused."""
    protect_upstream: bool = False
    """Refuse, rather than report, a push through a name mapped onto ``default_host`` that
    replaces a tag the store holds (a model pulled from registry.ollama.ai, say)."""


def load_htpasswd(path: Path) -> dict[str, bytes]:
    users = {}
    for line in path.read_text().splitlines():
        user, sep, hashed = line.strip().partition(":")
        if sep and user and hashed.startswith(("$2a$", "$2b$", "$2y$")):
            users[user] = hashed.encode()
    if not users:
        raise ConfigError("{path} has no bcrypt entries (user:$2y$...)", path=path)
    return users


class Registry:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.models = Models(options.root)
        self.uploads = Uploads(self.models.blobs, options.upload_expiry)
        self._usage = (0.0, 0)
        self._auth_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bcrypt")
        self._auth_cache: dict[bytes, float] = {}
        self._auth_salt = secrets.token_bytes(16)
        self._dummy_hash = _dummy_hash(options.users) if options.users else b""

    def usage(self) -> int:
        """Bytes the store holds: blobs and manifest files, counted afresh."""
        blobs = self.models.blobs
        used = 0
        for digest in blobs:
            with contextlib.suppress(CairnError):
                used += blobs.size(digest)
        for folder, _dirs, files in os.walk(self.models.tags.dir):
            for file in files:
                with contextlib.suppress(OSError):
                    used += os.stat(os.path.join(folder, file)).st_size
        return used

    def check_quota(self, adding: int, *, fresh: bool = False) -> None:
        """DENIED when ``adding`` more bytes would pass ``--quota``: counting what the store
        holds (cached 5 s unless ``fresh``) and every upload still in flight."""
        quota = self.options.quota
        if quota is None:
            return
        stamp, used = self._usage
        if fresh or time.monotonic() - stamp > 5:
            used = self.usage()
            self._usage = (time.monotonic(), used)
        if used + self.uploads.in_flight() + adding > quota:
            raise OCIError("DENIED", f"the registry's quota of {quota} bytes would be exceeded")

    def stored(self, size: int) -> None:
        stamp, used = self._usage
        self._usage = (stamp, used + size)

    # -- names ----------------------------------------------------------------

    def reference(self, name: str, tag: str = "latest") -> Reference:
        """The store reference for repository ``name`` (NAME_INVALID if it can't be one)."""
        if name != name.lower():
            raise OCIError(
                "NAME_INVALID",
                f"repository {name!r}: OCI repository names are lower case (the store's names"
                " ignore case, as Ollama's do, so {name.lower()!r} would be the same one)",
            )
        parts = name.split("/")
        if len(parts) == 3:
            text = f"{parts[0]}/{parts[1]}/{parts[2]}:{tag}"
        elif len(parts) == 2:
            text = f"{self.options.default_host}/{parts[0]}/{parts[1]}:{tag}"
        elif len(parts) == 1:
            text = f"{self.options.default_host}/library/{parts[0]}:{tag}"
        else:
            raise OCIError("NAME_INVALID", f"repository {name!r} has more than three parts")
        try:
            return parse_reference(text)
        except CairnError as exc:
            raise OCIError("NAME_INVALID", str(exc)) from None

    def tags(self, ref: Reference) -> list[str]:
        return sorted(t.reference.tag or "" for t in self.models.tags.tags_of(ref))

    def find_manifest(self, name: str, reference: str) -> bytes:
        """Manifest bytes by tag or digest (MANIFEST_UNKNOWN when absent).

        By digest, only bytes that hash to it: the manifests kept by digest,
        then the repository's tags, each checked. A tag's name proves nothing.
        """
        if reference.startswith("sha256:"):
            digest = _digest(reference)
            ref = self.reference(name)
            kept = self.models.tags.read_by_digest(ref, digest)
            candidates = [kept] if kept is not None else []
            for data in (*candidates, *self.tagged_manifests(ref)):
                if hashlib.sha256(data).hexdigest() == digest.hex:
                    return data
            raise OCIError("MANIFEST_UNKNOWN", f"manifest {reference} is not in {name}")
        if not _valid_tag(reference):  # no such tag can exist (and no "tag@digest" either)
            raise OCIError("MANIFEST_UNKNOWN", f"manifest {name}:{reference!r:.100} is unknown")
        ref = self.reference(name, reference)
        path = self.models.tags.find(ref)
        if path is None:
            raise OCIError("MANIFEST_UNKNOWN", f"manifest {name}:{reference} is unknown")
        return path.read_bytes()

    def tagged_manifests(self, ref: Reference) -> Iterator[bytes]:
        for tagged in self.models.tags.tags_of(ref):
            with contextlib.suppress(OSError):
                yield tagged.path.read_bytes()

    # -- auth -------------------------------------------------------------------

    async def authorized(self, request: web.Request) -> bool:
        """Whether the request may proceed: open server, public read, or Basic credentials
        an htpasswd entry accepts.

        bcrypt costs about a quarter of a second: it runs on a small pool of threads,
        never on the event loop; a success is remembered for ``AUTH_CACHE`` seconds
        (keyed by a salted hash of the credentials); an unknown user costs the same as a
        known one (a dummy hash), so timing does not tell which users exist; a password
        bcrypt cannot take (over 72 bytes) is refused, not an error.
        """
        if not self.options.users:
            return True
        reading = request.method in ("GET", "HEAD")
        if self.options.public_read and reading and request.match_info.handler is not upload_status:
            return True  # an upload's status is its uploader's business
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except ValueError:
            return False
        secret = password.encode()
        if len(secret) > 72:
            return False
        key = hashlib.sha256(self._auth_salt + header.encode()).digest()
        now = time.monotonic()
        if self._auth_cache.get(key, 0.0) > now:
            return True
        hashed = self.options.users.get(user, self._dummy_hash)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._auth_pool, _checkpw, secret, hashed)
        if ok and user in self.options.users:
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[key] = now + AUTH_CACHE
            return True
        return False


def _dummy_hash(users: dict[str, bytes]) -> bytes:
    """A hash of a random secret at the users' own bcrypt cost: an unknown user's check
    takes as long as a known user's."""
    import bcrypt

    costs = [h.split(b"$")[2] for h in users.values() if h.count(b"$") >= 3]
    cost = max((int(c) for c in costs if c.isdigit()), default=10)
    return bytes(
        bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=min(max(cost, 4), 16)))
    )


def _checkpw(secret: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(secret, hashed))
    except ValueError:  # a malformed hash in the htpasswd file
        return False


# -- handlers -----------------------------------------------------------------


async def base(request: web.Request) -> web.StreamResponse:
    return web.json_response({}, headers=API_VERSION)


async def get_manifest(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name, reference = request.match_info["name"], request.match_info["reference"]
    data = await asyncio.to_thread(registry.find_manifest, name, reference)
    try:
        parsed = parse_manifest(data)
    except ManifestError:
        raise OCIError(
            "MANIFEST_INVALID", f"the stored manifest {name}:{reference} is damaged"
        ) from None
    content_type = parsed.media_type or (
        mt.OCI_INDEX if isinstance(parsed, Index) else mt.OCI_MANIFEST
    )
    headers = {
        "Docker-Content-Digest": f"sha256:{hashlib.sha256(data).hexdigest()}",
        "Content-Type": content_type,
        "Content-Length": str(len(data)),
    }
    if request.method == "HEAD":
        return web.Response(headers=headers)
    return web.Response(body=data, headers=headers)


async def _whole_body(request: web.Request, limit: int) -> bytes:
    """The request's whole body (chunked or not), 413 past ``limit`` bytes.

    ``content.read(n)`` returns what is buffered, not the body: a manifest
    sent in two writes was once stored cut short.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            part = await asyncio.wait_for(request.content.read(CHUNK), BODY_IDLE)
        except TimeoutError:
            raise OCIError(
                "MANIFEST_INVALID", f"the request body sent nothing for {BODY_IDLE:g} s", status=408
            ) from None
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > limit:
            raise OCIError("SIZE_INVALID", f"manifests are limited to {limit} bytes", status=413)
        parts.append(part)


def _foreign(descriptor: Descriptor, manifest: Manifest) -> bool:
    """A layer its publisher may not let registries hold: non-distributable media types,
    or one fetched from its own ``urls``."""
    if descriptor is manifest.config:
        return False
    kind = descriptor.media_type
    return "nondistributable" in kind or ".foreign." in kind or "urls" in descriptor.extra


def _one_kind(data: bytes, content_type: str | None) -> None:
    """Refuse a body whose kind another reader could take differently: a ``mediaType``
    that disagrees with the Content-Type, or no ``mediaType`` and the fields of both an
    image manifest and an index (as distribution refuses them)."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return  # parse_manifest says what is wrong
    if not isinstance(body, dict):
        return
    declared = body.get("mediaType")
    if declared is not None and content_type is not None and declared != content_type:
        raise ManifestError(
            "mediaType {declared!r:.100} disagrees with Content-Type {content_type!r:.100}",
            declared=declared,
            content_type=content_type,
        )
    if declared is None and "layers" in body and "manifests" in body:
        raise ManifestError(
            "a manifest with both layers and manifests, and no mediaType, is ambiguous"
        )


async def put_manifest(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name, reference = request.match_info["name"], request.match_info["reference"]
    if request.content_length is not None and request.content_length > MAX_MANIFEST_SIZE:
        raise OCIError(
            "SIZE_INVALID", f"manifests are limited to {MAX_MANIFEST_SIZE} bytes", status=413
        )
    by_digest = reference.startswith("sha256:")
    if not by_digest and not _valid_tag(reference):
        raise OCIError("MANIFEST_INVALID", f"{reference!r:.100} is not a tag (nor a digest)")
    data = await _whole_body(request, MAX_MANIFEST_SIZE)
    registry.check_quota(len(data))
    digest = Digest(hashlib.sha256(data).hexdigest())
    content_type = request.headers.get("Content-Type", "").partition(";")[0].strip() or None
    try:
        _one_kind(data, content_type)
        parsed = parse_manifest(data, content_type)
    except ManifestError as exc:
        raise OCIError("MANIFEST_INVALID", str(exc)) from None
    if by_digest and _digest(reference) != digest:
        raise OCIError("DIGEST_INVALID", f"the manifest's digest is {digest}, not {reference}")
    tag = "latest" if by_digest else reference
    ref = registry.reference(name, tag)
    blobs = registry.models.blobs
    mapped = len(name.split("/")) < 3  # ns/name: onto --default-host, registry.ollama.ai's place

    def check() -> None:
        """What the manifest names is here: called holding the writer lock, so no blob
        DELETE or prune (which take the collector's) comes between this and the write."""
        if isinstance(parsed, Manifest):
            for descriptor in parsed.blobs:
                if _foreign(descriptor, parsed):
                    continue  # the spec lets a registry take these without their blobs
                if not blobs.has(descriptor.digest):
                    raise OCIError(
                        "MANIFEST_BLOB_UNKNOWN",
                        f"blob {descriptor.digest} is not in the registry",
                        {"digest": str(descriptor.digest)},
                    )
        else:
            for entry in parsed.manifests:
                try:
                    registry.find_manifest(name, str(entry.digest))
                except OCIError:
                    raise OCIError(
                        "MANIFEST_UNKNOWN",
                        f"the index names manifest {entry.digest}, not in {name}",
                    ) from None

    def save() -> str | None:
        """Store the manifest; what it replaced under a mapped name, if anything."""
        with blobs.writing():
            check()
            if by_digest:
                registry.models.tags.write_by_digest(ref, digest, data)
                return None
            existing = registry.models.tags.find(ref)
            if existing is not None and existing.name != tag:
                raise OCIError(
                    "MANIFEST_INVALID",
                    f"tag {tag!r} differs only in case from the tag {existing.name!r} this"
                    " repository has; the store's tags ignore case, as Ollama's do",
                )
            replaced = None
            if mapped:
                with contextlib.suppress(CairnError, OSError):
                    old = registry.models.tags.read(ref)[1]
                    if old != data:
                        replaced = f"sha256:{hashlib.sha256(old).hexdigest()}"
            if replaced and registry.options.protect_upstream:
                raise OCIError(
                    "DENIED",
                    f"{name}:{tag} is {ref} in this store, which holds it already"
                    f" ({replaced}); --protect-upstream refuses to replace it",
                )
            try:
                registry.models.tags.write(ref, data)
            except InvalidReferenceError as exc:
                raise OCIError("NAME_INVALID", str(exc)) from None
            return replaced

    replaced = await asyncio.to_thread(save)
    headers = {
        "Location": _absolute(request, f"/v2/{name}/manifests/{digest}"),
        "Docker-Content-Digest": str(digest),
    }
    subject = getattr(parsed, "subject", None)
    if subject is not None:
        headers["OCI-Subject"] = str(subject.digest)
    if replaced:
        said = f"{name}:{tag} replaced {ref} in the store (it was {replaced})"
        level = {"level": "warning", "message": said}
        warn.warning("%s", json.dumps(level) if registry.options.json_logs else said)
        headers["Warning"] = f'299 cairn "{said}"'
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name, reference = request.match_info["name"], request.match_info["reference"]

    if registry.options.protect_upstream and len(name.split("/")) < 3:
        raise OCIError(
            "DENIED",
            f"{name} is {registry.reference(name)} in this store; --protect-upstream"
            " refuses to delete through a name mapped onto it",
        )

    def remove() -> bool:
        if not reference.startswith("sha256:"):
            if not _valid_tag(reference):
                return False
            return registry.models.tags.delete(registry.reference(name, reference))
        registry.find_manifest(name, reference)  # 404 when absent
        ref = registry.reference(name)
        removed = registry.models.tags.delete_by_digest(ref, _digest(reference))
        for tagged in list(registry.models.tags.tags_of(ref)):
            digest = "sha256:" + hashlib.sha256(tagged.path.read_bytes()).hexdigest()
            if digest == reference:
                removed = registry.models.tags.delete(tagged.reference) or removed
        return removed

    if not await asyncio.to_thread(remove):
        raise OCIError("MANIFEST_UNKNOWN", f"manifest {name}:{reference} is unknown")
    return web.Response(status=202)


async def get_blob(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    registry.reference(name)
    digest = _digest(request.match_info["digest"])
    path = registry.models.blobs.path(digest)
    if not await asyncio.to_thread(path.is_file):
        raise OCIError("BLOB_UNKNOWN", f"blob {digest} is unknown", {"digest": str(digest)})
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": "application/octet-stream",
        # Ollama's downloader (server/download.go, before ollama#7244 was fixed) takes
        # the blob's URL from the unranged GET's Location and fails without one.
        "Location": _absolute(request, f"/v2/{name}/blobs/{digest}"),
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(path.stat().st_size)
        headers["Accept-Ranges"] = "bytes"
        return web.Response(headers=headers)
    response = web.FileResponse(path, chunk_size=CHUNK, headers=headers)
    return response


async def delete_blob(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    registry.reference(request.match_info["name"])
    digest = _digest(request.match_info["digest"])
    models = registry.models

    def remove() -> bool:
        with models.blobs.collecting():
            if digest in models.referenced():
                raise OCIError(
                    "UNSUPPORTED", f"blob {digest} is used by a manifest; delete that first"
                )
            return models.blobs.delete(digest)

    if not await asyncio.to_thread(remove):
        raise OCIError("BLOB_UNKNOWN", f"blob {digest} is unknown")
    return web.Response(status=202)


def _digest(text: str) -> Digest:
    """``sha256:<hex>``, exactly (not the store's file form ``sha256-<hex>``)."""
    wrong = OCIError("DIGEST_INVALID", f"{text!r:.100} is not a sha256 digest")
    if not text.startswith("sha256:"):
        raise wrong
    try:
        return Digest.parse(text)
    except CairnError:
        raise wrong from None


_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # the spec's tag grammar


def _valid_tag(reference: str) -> bool:
    return bool(_TAG.fullmatch(reference))


def _absolute(request: web.Request, path: str) -> str:
    """``path`` on this server as an absolute URL: Ollama's uploader does not resolve a
    relative Location (server/upload.go), and every other client takes either."""
    return f"{request.scheme}://{request.host}{path}"


def _upload_headers(request: web.Request, name: str, session: Session) -> dict[str, str]:
    return {
        "Location": _absolute(request, f"/v2/{name}/blobs/uploads/{session.id}"),
        "Range": f"0-{max(0, session.offset - 1)}",
        "Docker-Upload-UUID": session.id,
    }


async def _receive(request: web.Request, session: Session) -> None:
    """Append the request's body to the session (holding its lock); a body that sends
    nothing for ``BODY_IDLE`` seconds is cut off, so no stalled client holds the lock."""
    registry: Registry = request.app["registry"]
    if request.content_length:
        registry.check_quota(request.content_length)
    chunks = request.content.iter_chunked(CHUNK).__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), BODY_IDLE)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise OCIError(
                "BLOB_UPLOAD_INVALID",
                f"the request body sent nothing for {BODY_IDLE:g} s",
                status=408,
            ) from None
        registry.check_quota(len(chunk))
        await asyncio.to_thread(Uploads.append, session, chunk)


async def start_upload(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    registry.reference(name)
    mount, source = request.query.get("mount"), request.query.get("from")
    if mount and source:
        digest = _digest(mount)
        if registry.models.blobs.has(digest):
            return web.Response(
                status=201,
                headers={
                    "Location": _absolute(request, f"/v2/{name}/blobs/{digest}"),
                    "Docker-Content-Digest": str(digest),
                },
            )
    try:
        session = registry.uploads.start(name, request.remote or "")
    except UploadLimitError as exc:
        raise OCIError(
            "TOOMANYREQUESTS", str(exc), headers={"Retry-After": str(RETRY_SESSIONS)}
        ) from None
    wanted = request.query.get("digest")
    if wanted is not None:  # a single POST with the whole blob
        digest = _digest(wanted)
        async with session.lock:
            try:
                await _receive(request, session)
            except BaseException:
                registry.uploads.drop(session)  # nobody can resume a single-request upload
                raise
            return await _finish(request, registry, name, session, digest)
    return web.Response(status=202, headers=_upload_headers(request, name, session))


_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits int() takes at once ('²' is a digit too)

_NO_SESSION = "no such upload session (expired, finished, cancelled or made up)"


def _session(request: web.Request) -> tuple[Registry, str, Session]:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    session = registry.uploads.get(request.match_info["uuid"], name)
    if session is None:
        raise OCIError("BLOB_UPLOAD_UNKNOWN", _NO_SESSION)
    return registry, name, session


def _still_open(session: Session) -> None:
    """Call holding the session's lock: another request may have closed it meanwhile."""
    if session.closed:
        raise OCIError("BLOB_UPLOAD_UNKNOWN", _NO_SESSION)


async def patch_upload(request: web.Request) -> web.StreamResponse:
    _, name, session = _session(request)
    async with session.lock:
        _still_open(session)
        _check_range(request, name, session)
        await _receive(request, session)
        return web.Response(status=202, headers=_upload_headers(request, name, session))


def _check_range(request: web.Request, name: str, session: Session) -> None:
    """A chunk's ``Content-Range`` (PATCH, or the final PUT's) must start where the upload
    is and span the bytes sent: 416 otherwise."""
    content_range = request.headers.get("Content-Range")
    if not content_range:
        return
    start, _, end = content_range.removeprefix("bytes=").partition("-")
    if not _NUMBER.fullmatch(start) or int(start) != session.offset:
        raise OCIError(
            "RANGE_INVALID",
            f"the upload is at byte {session.offset}; this chunk starts at {start!r:.40}",
            headers=_upload_headers(request, name, session),
        )
    length = request.content_length
    if length is not None and (not _NUMBER.fullmatch(end) or int(end) - int(start) + 1 != length):
        raise OCIError(
            "RANGE_INVALID",
            f"Content-Range {content_range!r:.80} does not span the {length} bytes sent",
            headers=_upload_headers(request, name, session),
        )


async def upload_status(request: web.Request) -> web.StreamResponse:
    _, name, session = _session(request)
    return web.Response(status=204, headers=_upload_headers(request, name, session))


async def put_upload(request: web.Request) -> web.StreamResponse:
    registry, name, session = _session(request)
    digest = _digest(request.query.get("digest", ""))
    async with session.lock:
        _still_open(session)
        if request.content_length:
            _check_range(request, name, session)
        await _receive(request, session)
        return await _finish(request, registry, name, session, digest)


async def _finish(
    request: web.Request, registry: Registry, name: str, session: Session, digest: Digest
) -> web.StreamResponse:
    def finish() -> Blob | None:
        # The writer lock can wait on a `cairn prune` in another process: never in the loop.
        with registry.models.blobs.writing():
            if not registry.models.blobs.has(digest):  # counted again, now it is to stay
                registry.check_quota(0, fresh=True)
            return registry.uploads.finish(session, digest)

    try:
        blob = await asyncio.to_thread(finish)
    except BaseException:
        registry.uploads.drop(session)  # whatever failed, the session is over
        raise
    if blob is None:
        raise OCIError("DIGEST_INVALID", f"the uploaded bytes do not hash to {digest}")
    registry.stored(blob.size)
    return web.Response(
        status=201,
        headers={
            "Location": _absolute(request, f"/v2/{name}/blobs/{digest}"),
            "Docker-Content-Digest": str(digest),
        },
    )


async def cancel_upload(request: web.Request) -> web.StreamResponse:
    registry, _, session = _session(request)
    async with session.lock:  # after any request writing to it
        _still_open(session)
        registry.uploads.drop(session)
    return web.Response(status=204)


async def list_tags(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    ref = registry.reference(name)
    every = await asyncio.to_thread(registry.tags, ref)
    if not every:
        raise OCIError("NAME_UNKNOWN", f"repository {name} is unknown")
    tags = list(every)
    last = request.query.get("last")
    if last:
        tags = [t for t in tags if t > last]
    headers: dict[str, str] = {}
    count = request.query.get("n")
    if count is not None:
        if not _NUMBER.fullmatch(count):
            raise OCIError("UNSUPPORTED", "n must be a number", status=400)
        limit = int(count)
        if len(tags) > limit:
            tags = tags[:limit]
            if tags:
                headers["Link"] = (
                    f'</v2/{name}/tags/list?n={limit}&last={quote(tags[-1])}>; rel="next"'
                )
    return web.json_response({"name": name, "tags": tags}, headers=headers)


async def referrers(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    subject = str(_digest(request.match_info["digest"]))
    wanted = request.query.get("artifactType")
    ref = registry.reference(name)
    stored = await asyncio.to_thread(
        lambda: [
            *registry.tagged_manifests(ref),
            *(p.read_bytes() for p in registry.models.tags.kept_by_digest(ref)),
        ]
    )
    entries: list[dict[str, Any]] = []
    for data in stored:
        try:
            parsed = parse_manifest(data)
        except ManifestError:
            continue
        found = getattr(parsed, "subject", None)
        if found is None or str(found.digest) != subject:
            continue
        artifact_type = parsed.artifact_type or (
            parsed.config.media_type if isinstance(parsed, Manifest) else None
        )
        if wanted and artifact_type != wanted:
            continue
        entry: dict[str, Any] = {
            "mediaType": parsed.media_type or mt.OCI_MANIFEST,
            "digest": f"sha256:{hashlib.sha256(data).hexdigest()}",
            "size": len(data),
        }
        if artifact_type:
            entry["artifactType"] = artifact_type
        if parsed.annotations:
            entry["annotations"] = dict(parsed.annotations)
        if entry not in entries:
            entries.append(entry)
    headers = {"OCI-Filters-Applied": "artifactType"} if wanted else {}
    body = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    # Exactly the index media type: json_response would add "; charset=utf-8".
    headers["Content-Type"] = mt.OCI_INDEX
    return web.Response(body=json.dumps(body).encode(), headers=headers)


# -- middleware and app -------------------------------------------------------------


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    started = time.monotonic()
    status = 500
    try:
        if not await registry.authorized(request):
            raise OCIError(
                "UNAUTHORIZED",
                "authentication required",
                headers={"WWW-Authenticate": 'Basic realm="cairn"', **API_VERSION},
            )
        if registry.options.read_only and request.method not in ("GET", "HEAD"):
            raise OCIError("UNSUPPORTED", "this registry is read-only")
        response = await handler(request)
        status = response.status
        return response
    except OCIError as exc:
        status = exc.status
        return exc.response()
    except (ConnectionResetError, asyncio.IncompleteReadError):
        status = 400  # the client went away mid-body: nobody reads an answer, log it
        return OCIError("BLOB_UPLOAD_INVALID", "the client went away mid-body").response()
    except UploadClosedError:
        status = 404
        return OCIError("BLOB_UPLOAD_UNKNOWN", _NO_SESSION).response()
    except StorageFullError as exc:
        status = 507
        return OCIError("BLOB_UPLOAD_INVALID", str(exc), status=507).response()
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        _access(registry, request, status, time.monotonic() - started)


def _access(registry: Registry, request: web.Request, status: int, seconds: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    peer = request.remote or "-"
    if registry.options.json_logs:
        log.info(
            json.dumps(
                {
                    "remote": peer,
                    "method": request.method,
                    "path": request.path,
                    "status": status,
                    "seconds": round(seconds, 6),
                }
            )
        )
    else:
        log.info('%s "%s %s" %d %.3fs', peer, request.method, request.path, status, seconds)


def make_app(options: Options) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_MANIFEST_SIZE + 1)
    registry = Registry(options)
    app["registry"] = registry
    name = r"{name:[A-Za-z0-9._/-]+?}"
    routes = [
        web.get("/v2/", base),
        web.get(f"/v2/{name}/manifests/{{reference}}", get_manifest),
        web.put(f"/v2/{name}/manifests/{{reference}}", put_manifest),
        web.delete(f"/v2/{name}/manifests/{{reference}}", delete_manifest),
        web.post(f"/v2/{name}/blobs/uploads/", start_upload),
        web.patch(f"/v2/{name}/blobs/uploads/{{uuid}}", patch_upload),
        web.put(f"/v2/{name}/blobs/uploads/{{uuid}}", put_upload),
        web.get(f"/v2/{name}/blobs/uploads/{{uuid}}", upload_status),
        web.delete(f"/v2/{name}/blobs/uploads/{{uuid}}", cancel_upload),
        web.get(f"/v2/{name}/blobs/{{digest}}", get_blob),
        web.delete(f"/v2/{name}/blobs/{{digest}}", delete_blob),
        web.get(f"/v2/{name}/tags/list", list_tags),
        web.get(f"/v2/{name}/referrers/{{digest}}", referrers),
    ]
    app.add_routes(routes)

    async def expire_uploads(_: web.Application) -> None:
        """Idle sessions go on a timer, not only when a new upload starts."""

        async def every() -> None:
            period = max(0.5, min(60.0, options.upload_expiry / 4))
            while True:
                await asyncio.sleep(period)
                registry.uploads.expire()

        app["expirer"] = asyncio.get_running_loop().create_task(every())

    async def stop_expiring(_: web.Application) -> None:
        app["expirer"].cancel()

    app.on_startup.append(expire_uploads)
    app.on_cleanup.append(stop_expiring)

    async def cleanup(_: web.Application) -> None:
        registry.uploads.close()
        registry._auth_pool.shutdown(wait=False)

    app.on_cleanup.append(cleanup)
    return app
