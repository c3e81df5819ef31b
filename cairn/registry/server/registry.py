"""The server's state and what every handler shares: options, names, auth, digests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from cairn.blobstore import Digest
from cairn.blobstore.digest import from_filename
from cairn.config import DEFAULT_HOST
from cairn.errors import (
    CairnError,
    ConfigError,
    ManifestError,
)
from cairn.manifests.manifest import Descriptor, Manifest, parse_manifest
from cairn.manifests.models import Models
from cairn.manifests.reference import Reference, is_tag, parse_reference
from cairn.registry.origins import origin_of
from cairn.registry.server.errors import OCIError
from cairn.registry.server.tokens import Tokens
from cairn.registry.server.uploads import Uploads

if TYPE_CHECKING:
    from cairn.registry.server.upstream import Cache

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
UPLOAD_STATUS = "upload-status"
"""The name of the route of an upload's status (not public under --public-read)."""
BLOB = "blob"
"""The name of the route of a blob's GET and HEAD (where a grant stands for credentials)."""
TOKEN = "token"
"""The name of the route of the token endpoint (the Bearer challenge's realm)."""
CREDENTIALS = "cairn.credentials"
"""Set on a request that a token or a password let in (not a grant, not public read)."""
AUTH_QUEUE = 16
"""Password checks waiting or running at once; past it, 429 (a flood cannot queue minutes
of bcrypt ahead of the next real login)."""
AUTH_CACHE = 60.0
"""Seconds a verified Basic credential is taken without running bcrypt again."""
RETRY_SESSIONS = 10
"""Seconds a client told there are too many upload sessions is asked to wait."""
BODY_IDLE = 60.0
"""Seconds a request body may send nothing before the server gives up on it."""
CHUNK = 1 << 20
NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits int() takes at once ('²' is a digit too)
log = logging.getLogger("cairn.registry.access")
warn = logging.getLogger("cairn.registry")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


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
    ollama_keys: dict[bytes, str] = field(default_factory=dict)
    """Ollama public keys (``--ollama-keys``) whose signed token requests are taken; when
    set, a 401 challenges with Bearer and a token endpoint on this host."""
    public_urls: tuple[str, ...] = ()
    """The URLs clients reach this server by (``--public-url``, else the listening address):
    the only origins Ollama's signed token requests may name."""
    protect_upstream: bool = False
    """Refuse, rather than report, a push through a name mapped onto ``default_host`` that
    replaces a tag the store holds (a model pulled from registry.ollama.ai, say)."""
    upstreams: tuple[str, ...] = ()
    """``--upstream``: registries (``http(s)://HOST[:PORT]``) a pull of a model the store
    lacks is fetched from, the first that has it (``upstream.py``); writes are refused."""
    upstream_ttl: float = 300.0
    """Seconds a tag checked against the upstreams is served without asking again."""
    upstream_timeout: float = 30.0
    """Seconds an upstream request a client waits on may take (``--upstream-timeout``)."""


_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|1[0-6])\$[./A-Za-z0-9]{53}")


def load_htpasswd(path: Path) -> dict[str, bytes]:
    users = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        user, sep, hashed = line.strip().partition(":")
        if not sep or not user:
            continue
        if not _BCRYPT.fullmatch(hashed):
            raise ConfigError(
                "{path} line {line}: not a bcrypt hash of cost 4 to 16 ($2y$10$ and 53 more)",
                path=path,
                line=number,
            )
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
        self._auth_waiting = 0
        self.tokens = Tokens(options.ollama_keys, frozenset(map(origin_of, options.public_urls)))
        self.write_lock = threading.Lock()
        """One store write at a time in this server (a manifest saved or deleted, a blob
        sealed or deleted): the checks of each (case, quota, what exists) hold for its write."""
        self._write_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store-write")
        self.cache: Cache | None = None
        """The pull-through cache, with ``--upstream`` (set by ``make_app``)."""

    def close(self) -> None:
        self.uploads.close()
        self._auth_pool.shutdown(wait=False)
        self._write_pool.shutdown(wait=False)

    async def write(self, work: Callable[[], T]) -> T:
        """Run ``work`` (which takes the store's lock and may wait on a `cairn prune` in
        another process) on threads of its own, holding ``write_lock``: a long wait never
        takes the threads reads and uploads run on."""

        def locked() -> T:
            with self.write_lock:
                return work()

        return await asyncio.get_running_loop().run_in_executor(self._write_pool, locked)

    def forget_usage(self) -> None:
        """Something was deleted: count afresh at the next quota check."""
        self._usage = (0.0, 0)

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
                f" ignore case, as Ollama's do, so {name.lower()!r} would be the same one)",
            )
        parts = name.split("/")
        if len(parts) >= 3:
            host = parts[0]
            if host != self.options.default_host.lower() and not self.models.tags.holds_host(host):
                # Three parts or more name a host this store holds (as the CLI reads
                # host/ns/name, and host/org/team/name for a deeper OCI repository); a push
                # cannot make one up, so nobody serves a model as if pulled from it.
                raise OCIError(
                    "NAME_UNKNOWN",
                    f"this store holds no models of {host!r}: a name of three parts or more"
                    f" starts with a host it holds; two parts (ns/name) map to"
                    f" {self.options.default_host}",
                )
            text = f"{name}:{tag}"
        elif len(parts) == 2:
            text = f"{self.options.default_host}/{parts[0]}/{parts[1]}:{tag}"
        else:
            text = f"{self.options.default_host}/library/{parts[0]}:{tag}"
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
        if is_digest(reference):
            try:
                digest = parse_digest(reference)
            except OCIError:  # no manifest has a digest of an algorithm no one uses
                unknown = f"manifest {reference!r:.150} is unknown"
                raise OCIError("MANIFEST_UNKNOWN", unknown) from None
            ref = self.reference(name)
            kept = self.models.tags.read_by_digest(ref, digest)
            candidates = [kept] if kept is not None else []
            for data in (*candidates, *self.tagged_manifests(ref)):
                if Digest.of(data, digest.algorithm) == digest:
                    return data
            raise OCIError("MANIFEST_UNKNOWN", f"manifest {reference} is not in {name}")
        if not is_tag(reference):  # no such tag can exist (and no "tag@digest" either)
            raise OCIError("MANIFEST_UNKNOWN", f"manifest {name}:{reference!r:.100} is unknown")
        ref = self.reference(name, reference)
        path = self.models.tags.find(ref)
        if path is None:
            raise OCIError("MANIFEST_UNKNOWN", f"manifest {name}:{reference} is unknown")
        return path.read_bytes()

    # -- which blobs a repository may see ---------------------------------------

    def visible(self, ref: Reference, digest: Digest) -> bool:
        """Whether ``ref``'s repository may see the blob: it is in the store, and was
        pushed or mounted there, or one of the repository's manifests uses it (a model
        `cairn pull` stored, say). A layer the spec lets a manifest name without its blob
        (``foreign``) shows nothing: naming a digest is not having its bytes."""
        return self.models.blobs.has(digest) and self.sees(ref, digest)

    def sees(self, ref: Reference, digest: Digest) -> bool:
        """:meth:`visible`, for a blob known to be in the store."""
        if self.models.blobs.linked(digest, repository_of(ref)):
            return True
        return digest in self.used_by(ref)

    def used_by(self, ref: Reference) -> set[Digest]:
        """The blobs the repository's manifests (tags and kept by digest) use."""
        used: set[Digest] = set()
        for data in self.manifests_of(ref):
            with contextlib.suppress(ManifestError):
                parsed = parse_manifest(data)
                if isinstance(parsed, Manifest):
                    used.update(d.digest for d in parsed.blobs if not foreign(d, parsed))
        return used

    def manifests_of(self, ref: Reference) -> Iterator[bytes]:
        """Every manifest of the repository: its tags, then those kept by digest."""
        yield from self.tagged_manifests(ref)
        for path in self.models.tags.kept_by_digest(ref):
            with contextlib.suppress(OSError):
                yield path.read_bytes()

    def stored_manifests(self, ref: Reference) -> Iterator[tuple[Digest, bytes]]:
        """Every manifest of the repository with the digest it is found by: a tag's is
        the sha256 of its bytes, one kept by digest the digest it was pushed by."""
        for data in self.tagged_manifests(ref):
            yield Digest.of(data), data
        for path in self.models.tags.kept_by_digest(ref):
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                yield from_filename(path.name) or Digest.of(data), data

    def tagged_manifests(self, ref: Reference) -> Iterator[bytes]:
        for tagged in self.models.tags.tags_of(ref):
            with contextlib.suppress(OSError):
                yield tagged.path.read_bytes()

    # -- auth -------------------------------------------------------------------

    @property
    def guarded(self) -> bool:
        """Whether requests need credentials (``--htpasswd`` or ``--ollama-keys``)."""
        return bool(self.options.users or self.options.ollama_keys)

    def challenge(self, request: web.Request) -> str:
        """The ``WWW-Authenticate`` of a 401: Bearer with this host's token endpoint as the
        realm when Ollama keys are taken (Ollama asks only a same-host realm), else Basic."""
        if not self.options.ollama_keys:
            return 'Basic realm="cairn"'
        name = request.match_info.get("name")
        scope = ""
        if name:
            actions = "pull" if request.method in ("GET", "HEAD") else "pull,push"
            scope = f',scope="repository:{name}:{actions}"'
        return f'Bearer realm="{absolute_url(request, "/token")}",service="cairn"{scope}'

    async def authorized(self, request: web.Request) -> bool:
        """Whether the request may proceed: an open server, public read, a bearer token
        this server issued, a blob's grant, or Basic credentials an htpasswd entry takes."""
        if not self.guarded:
            return True
        reading = request.method in ("GET", "HEAD")
        route = request.match_info.route.name
        if self.options.public_read and reading and route != UPLOAD_STATUS:
            return True  # an upload's status is its uploader's business
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            valid = self.tokens.valid(header[7:].strip())
            request[CREDENTIALS] = valid
            return valid
        grant = request.query.get("grant")
        if grant is not None and reading and route == BLOB:
            name, digest = request.match_info["name"], request.match_info["digest"]
            try:  # nothing about the store is told before credentials are checked
                repository = repository_of(self.reference(name))
            except (OCIError, CairnError):
                return False
            return self.tokens.granted(repository, digest, grant)
        valid = await self.basic(header)
        request[CREDENTIALS] = valid
        return valid

    async def basic(self, header: str) -> bool:
        """Whether ``header`` is Basic credentials an htpasswd entry takes.

        bcrypt costs about a quarter of a second: it runs on a small pool of threads,
        never on the event loop; a success is remembered for ``AUTH_CACHE`` seconds
        (keyed by a salted hash of the credentials); an unknown user costs the same as a
        known one (a dummy hash), so timing does not tell which users exist; a password
        bcrypt cannot take (over 72 bytes) is refused, not an error.
        """
        if not header.startswith("Basic ") or not self.options.users:
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
        if self._auth_waiting >= AUTH_QUEUE:  # a flood: answer it, rather than queue it
            raise OCIError(
                "TOOMANYREQUESTS", "too many logins at once", headers={"Retry-After": "1"}
            )
        hashed = self.options.users.get(user, self._dummy_hash)
        loop = asyncio.get_running_loop()
        self._auth_waiting += 1
        try:
            ok = await loop.run_in_executor(self._auth_pool, _checkpw, secret, hashed)
        finally:
            self._auth_waiting -= 1
        if ok and user in self.options.users:
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[key] = now + AUTH_CACHE
            return True
        return False


_NONDISTRIBUTABLE = frozenset(
    {
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)


def foreign(descriptor: Descriptor, manifest: Manifest) -> bool:
    """A layer its publisher may not let registries hold: a non-distributable media type,
    or one fetched from its own ``urls`` (a list of http(s) URLs, not empty)."""
    if descriptor is manifest.config:
        return False
    if descriptor.media_type in _NONDISTRIBUTABLE:
        return True
    urls = descriptor.extra.get("urls")
    return (
        isinstance(urls, list)
        and bool(urls)
        and all(isinstance(u, str) and u.startswith(("https://", "http://")) for u in urls)
    )


def _dummy_hash(users: dict[str, bytes]) -> bytes:
    """A hash of a random secret at the users' own bcrypt cost: an unknown user's check
    takes as long as a known user's."""
    import bcrypt

    cost = max(int(hashed.split(b"$")[2]) for hashed in users.values())  # load_htpasswd: 4-16
    return bytes(bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost)))


def _checkpw(secret: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(secret, hashed))
    except ValueError:  # a password bcrypt refuses (a NUL byte in it)
        return False


def repository_of(ref: Reference) -> str:
    """The repository's name in the store's links: ``host/namespace/name``, three parts
    always. A deep namespace's ``/`` is written ``%2F`` (``ghcr.io/org%2Fteam/model``), which
    no name can hold, so a repository's link never lies inside a deeper one's folder."""
    return f"{ref.host}/{ref.namespace.replace('/', '%2F')}/{ref.name}"


def parse_digest(text: str) -> Digest:
    """``sha256:<hex>`` or ``sha512:<hex>``, exactly (not the store's file form)."""
    wrong = OCIError("DIGEST_INVALID", f"{text!r:.150} is not a sha256 or sha512 digest")
    if not text.startswith(("sha256:", "sha512:")):
        raise wrong
    try:
        return Digest.parse(text)
    except CairnError:
        raise wrong from None


def is_digest(reference: str) -> bool:
    """Whether a manifest reference is a digest (``algorithm:hex``) rather than a tag."""
    return ":" in reference


def absolute_url(request: web.Request, path: str) -> str:
    """``path`` on this server as an absolute URL: Ollama's uploader does not resolve a
    relative Location (server/upload.go), and every other client takes either."""
    return f"{request.scheme}://{request.host}{path}"


def blob_url(request: web.Request, name: str, digest: Digest) -> str:
    return absolute_url(request, f"/v2/{name}/blobs/{digest}")


async def body_chunks(request: web.Request, code: str) -> AsyncIterator[bytes]:
    """The request's body a chunk at a time; one that sends nothing for ``BODY_IDLE``
    seconds is cut off (408, ``code``), so no stalled client holds a lock or a session."""
    chunks = request.content.iter_chunked(CHUNK).__aiter__()
    while True:
        try:
            yield await asyncio.wait_for(chunks.__anext__(), BODY_IDLE)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise OCIError(
                code, f"the request body sent nothing for {BODY_IDLE:g} s", status=408
            ) from None
