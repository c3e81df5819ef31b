"""A content-addressed store of blobs in Ollama's layout.

``<root>/blobs/sha256-<hex>`` (or ``sha512-<hex>``, OCI content addressed
so) holds one blob per file, whole, correct and read-only. Everything in
flight lives under ``<root>/.cairn/`` (same filesystem, names that can
never be taken for a blob):

    .cairn/tmp/<id>.partial    a write in progress, flock'ed by its writer
    .cairn/locks/store.lock    shared by writers, exclusive for collection
    .cairn/verified/<hex>      the stat of a blob when it last hashed right
    .cairn/links/<blob>/<host>/<ns>/<name>
                               a repository of ``cairn registry serve`` the blob
                               was pushed or mounted into (empty files)

A write streams into a temp file while hashing (one pass: each chunk is
hashed and written from the same buffer, the write overlapping the next
read and hash), checks the digest, fsyncs, makes the file read-only and
links it into ``blobs/``. A mismatch or an error removes the temp file, so
a blob under ``blobs/`` is never partial or wrong.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import mmap
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from cairn import threads
from cairn.blobstore.digest import Digest, from_filename, from_hex
from cairn.errors import (
    BlobNotFoundError,
    CorruptBlobError,
    DigestMismatchError,
    SizeMismatchError,
    StorageFullError,
    StoreBusyError,
    StoreError,
)
from cairn.i18n import Phrase

if TYPE_CHECKING:
    from cairn.blobstore.partial import PartialBlob

CHUNK_SIZE = 4 << 20
SYNC_EVERY = 64 << 20
HASH_STEP = 8 << 20
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


class Readable(Protocol):
    """What :meth:`BlobStore.put` reads from: a binary stream with ``readinto``."""

    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...


@dataclass(frozen=True)
class Blob:
    """A blob that is in the store."""

    digest: Digest
    size: int


@dataclass(frozen=True)
class Partial:
    """A temp file under ``.cairn/tmp``; ``in_use`` when a live writer holds it."""

    path: Path
    size: int
    """Bytes it takes on disk (what removing it frees), not its length."""
    in_use: bool


def storage_error(exc: OSError, what: str, **params: Any) -> StoreError:
    """The store's error for ``exc``, met while ``what`` (a template filled with ``params``)."""
    doing = Phrase(what, **params)
    if exc.errno in _FULL:
        return StorageFullError("no space left on device while {doing}", doing=doing)
    return StoreError("{doing} failed: {reason}", doing=doing, reason=exc.strerror or str(exc))


def short_of_space(digest: Digest, need: int, where: Path, spare: int = 0) -> StorageFullError:
    """The error for blob ``digest`` needing ``need`` more bytes on ``where``'s filesystem
    (``spare``: what cairn keeps free besides, when a check refused it before writing):
    both sizes as the CLI shows sizes, and the command that makes room."""
    from cairn.cli.output import human_size  # one size style everywhere ("253 MB")

    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = 0
    return StorageFullError(
        "not enough space for blob {digest}: it needs {need} and cairn keeps {spare} free,"
        " but {path} has {free} left; `cairn prune` removes unused blobs and partial downloads"
        if spare
        else "no space left on device for blob {digest}: it needs {need}, {path} has {free}"
        " left; `cairn prune` removes unused blobs and partial downloads",
        digest=digest,
        need=human_size(need),
        spare=human_size(spare),
        path=where,
        free=human_size(free),
    )


class _Writer:
    """Writes buffers to a file descriptor on a thread of its own.

    ``os.write`` releases the GIL, so the disk write of one chunk overlaps
    the read and hash of the next. The first error is kept and re-raised.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._cond = threading.Condition()
        self._queue: list[memoryview] = []
        self._busy = False
        self._closed = False
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="cairn-blob-writer", daemon=True)
        threads.start(self._thread)

    def _run(self) -> None:
        unsynced = 0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                view = self._queue.pop(0)
                self._busy = True
            try:
                if self.error is None:
                    while view:
                        written = os.write(self._fd, view)
                        view = view[written:]
                        unsynced += written
                    if unsynced >= SYNC_EVERY:
                        # Flush as we go: the disk works while the next chunks
                        # are hashed, the final fsync has little left to do,
                        # and a huge blob never floods memory with dirty pages.
                        os.fdatasync(self._fd)
                        unsynced = 0
            except OSError as exc:
                self.error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def submit(self, view: memoryview) -> None:
        with self._cond:
            self._queue.append(view)
            self._cond.notify_all()

    def wait_idle(self) -> None:
        """Block until every submitted buffer is written (its memory is free again)."""
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


class BlobStore:
    """Blobs under ``root/blobs``: put, verify, open, delete, iterate."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.work_dir = self.root / ".cairn"
        self.tmp_dir = self.work_dir / "tmp"
        self.locks_dir = self.work_dir / "locks"
        self.verified_dir = self.work_dir / "verified"
        self.headers_dir = self.work_dir / "headers"
        """What each GGUF blob's header says, parsed once (``show.gguf_header``)."""
        self.links_dir = self.work_dir / "links"
        """The repositories each blob was pushed or mounted into (``cairn registry serve``
        shows a repository only its own blobs); they go with the blob."""

    # -- reading -----------------------------------------------------------

    def path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.filename

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError("blob {digest} is not in the store", digest=digest) from None

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError:
            raise BlobNotFoundError("blob {digest} is not in the store", digest=digest) from None

    def __iter__(self) -> Iterator[Digest]:
        for name in _names(self.blobs_dir):
            digest = from_filename(name)
            if digest is not None:
                yield digest

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, Digest) and self.has(digest)

    # -- writing -----------------------------------------------------------

    def _ensure_dirs(self) -> None:
        for directory in (self.blobs_dir, self.tmp_dir, self.locks_dir, self.verified_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def put(
        self,
        source: Readable,
        expected: Digest | None = None,
        expected_size: int | None = None,
        accept: Callable[[Blob], None] | None = None,
    ) -> Blob:
        """Stream ``source`` into the store, hashing as it goes; return the blob.

        With ``expected``, bytes that hash otherwise are refused
        (:class:`DigestMismatchError`) and nothing is kept; with
        ``expected_size``, a short or long stream is refused
        (:class:`SizeMismatchError`). ``accept`` is called with the blob
        before it enters the store: whatever it raises, nothing is kept.
        """
        algorithm = expected.algorithm if expected else "sha256"
        return self._write(
            lambda fd: self._copy_hashing(source, fd, algorithm), expected, expected_size, accept
        )

    def _write(
        self,
        fill: Callable[[int], tuple[Digest, int]],
        expected: Digest | None,
        expected_size: int | None,
        accept: Callable[[Blob], None] | None,
    ) -> Blob:
        """Make a temp file, let ``fill`` write and hash it, check, fsync and commit."""
        try:
            self._ensure_dirs()
        except OSError as exc:
            raise storage_error(exc, "creating the store at {root}", root=self.root) from exc
        tmp, fd = self._new_partial(expected)
        try:
            digest, size = fill(fd)
            if expected_size is not None and size != expected_size:
                raise SizeMismatchError(
                    "blob {blob}: got {size} bytes, expected {expected_size}",
                    blob=expected or digest,
                    size=size,
                    expected_size=expected_size,
                )
            if expected is not None and digest != expected:
                raise DigestMismatchError(str(expected), str(digest))
            if accept is not None:
                accept(Blob(digest, size))
            self.seal(tmp, fd, digest, size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        return Blob(digest, size)

    def _new_partial(self, expected: Digest | None) -> tuple[Path, int]:
        """A fresh temp file, flock'ed, that ``prune`` did not take in the meantime.

        Between creating a file and locking it, ``prune`` could find it
        unlocked and delete it; a file whose name no longer leads to it is
        dropped and another one made.
        """
        for _ in range(5):
            tmp = (
                self.tmp_dir
                / f"{expected.hex if expected else 'new'}-{os.urandom(8).hex()}.partial"
            )
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                raise storage_error(exc, "creating {tmp}", tmp=tmp) from exc
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                    return tmp, fd
            except FileNotFoundError:
                pass
            os.close(fd)
        raise StoreError("temp files in {tmp_dir} keep disappearing", tmp_dir=self.tmp_dir)

    def put_file(
        self,
        path: Path | str | BinaryIO,
        expected: Digest | None = None,
        accept: Callable[[Blob], None] | None = None,
        interrupt: Callable[[], None] = lambda: None,
        expected_size: int | None = None,
    ) -> Blob:
        """Copy a local file into the store while hashing it (never a hard link).

        The kernel copies (``copy_file_range``: no bytes through Python, a
        reflink where the filesystem offers one) while this thread hashes
        what has landed in the temp file, so the digest is always that of
        the stored bytes, even if the user's file changes meanwhile.
        ``interrupt`` is called between chunks; what it raises aborts.
        ``path`` may be a file already open (read from where it stands, left open).
        With ``expected_size``, at most one byte more is copied: a file that grows
        meanwhile (or never ends) is refused, not copied whole.
        """
        source: BinaryIO
        if isinstance(path, (str, Path)):
            try:
                source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
            except OSError as exc:
                raise StoreError(
                    "cannot read {path}: {reason}", path=path, reason=exc.strerror or exc
                ) from exc
            owned: contextlib.AbstractContextManager[Any] = source
        else:
            source, owned = path, contextlib.nullcontext()
        start = source.tell()
        limit = None if expected_size is None else expected_size + 1
        algorithm = expected.algorithm if expected else "sha256"
        with owned:
            try:
                return self._write(
                    lambda fd: _kernel_copy_hashing(
                        source.fileno(), fd, interrupt, algorithm, start, limit
                    ),
                    expected,
                    expected_size,
                    accept,
                )
            except _NoKernelCopy:
                source.seek(start)
                return self.put(
                    _Interrupted(source, interrupt, limit), expected, expected_size, accept
                )

    def put_bytes(self, data: bytes) -> Blob:
        """Store a small blob held in memory (a template, a config)."""
        return self.put(io.BytesIO(data))

    def _copy_hashing(self, source: Readable, fd: int, algorithm: str) -> tuple[Digest, int]:
        hasher = hashlib.new(algorithm)
        buffers = [bytearray(CHUNK_SIZE), bytearray(CHUNK_SIZE)]
        writer = _Writer(fd)
        size = 0
        turn = 0
        try:
            while True:
                buffer = buffers[turn]
                turn ^= 1
                # The writer may still hold the other buffer, never this one:
                # it was handed over two turns ago and waited for last turn.
                count = source.readinto(buffer)
                if not count:
                    break
                view = memoryview(buffer)[:count]
                hasher.update(view)
                writer.wait_idle()
                writer.submit(view)
                size += count
            writer.wait_idle()
        except OSError as exc:
            raise storage_error(exc, "writing a blob") from exc
        finally:
            writer.close()
        return Digest(hasher.hexdigest(), algorithm), size

    def seal(self, tmp: Path, fd: int, digest: Digest, size: int) -> None:
        """Put a verified temp file (open as ``fd``) into the store: fsynced, read-only, linked."""
        try:
            os.fsync(fd)
            os.fchmod(fd, 0o444)
        except OSError as exc:
            raise storage_error(exc, "writing blob {digest}", digest=digest) from exc
        self._link_in(tmp, digest, size)

    def _link_in(self, tmp: Path, digest: Digest, size: int) -> None:
        """Move a sealed temp file into ``blobs/`` (a link; the first one wins)."""
        final = self.path(digest)
        ours = True  # whether the bytes just hashed are the blob now (then stamp them)
        try:
            try:
                os.link(tmp, final)
            except FileExistsError:
                # Someone stored it first; theirs was verified the same way,
                # unless it has changed since: a wrong size, or bytes that no
                # longer hash right (checked when its stamp is stale), are replaced.
                if final.stat().st_size != size or not self._still_good(digest):
                    os.replace(tmp, final)
                else:
                    ours = False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                os.replace(tmp, final)  # a filesystem without hard links
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            _fsync_dir(self.blobs_dir)
        except OSError as exc:
            raise storage_error(exc, "storing blob {digest}", digest=digest) from exc
        if ours:  # a blob already there keeps its own stamp (or none): we did not hash it
            self._stamp(digest)

    def delete(self, digest: Digest) -> bool:
        """Remove a blob (and its links); False when it was not there."""
        with contextlib.suppress(OSError):
            os.unlink(self.verified_dir / digest.hex)
        shutil.rmtree(self.links_dir / digest.filename, ignore_errors=True)
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            return False
        return True

    # -- links: which repositories may see a blob ------------------------------

    def _link(self, digest: Digest, repository: str) -> Path:
        parts = repository.casefold().split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") or os.sep in p for p in parts):
            raise StoreError(
                "{repository!r:.100} is not host/namespace/name", repository=repository
            )
        return self.links_dir.joinpath(digest.filename, *parts)

    def link(self, digest: Digest, repository: str) -> None:
        """Mark the blob as pushed or mounted into ``repository`` (``host/ns/name``)."""
        path = self._link(digest, repository)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as exc:
            raise storage_error(exc, "linking blob {digest}", digest=digest) from exc

    def linked_at(self, digest: Digest) -> float | None:
        """When the blob was last pushed or mounted into a repository (its newest link's
        time; ``link`` touches it each time), or None when it has no link."""
        newest: float | None = None
        for folder, _dirs, files in os.walk(self.links_dir / digest.filename):
            for name in files:
                with contextlib.suppress(OSError):
                    when = os.stat(os.path.join(folder, name)).st_mtime
                    newest = when if newest is None else max(newest, when)
        return newest

    def linked(self, digest: Digest, repository: str) -> bool:
        return self._link(digest, repository).is_file()

    def unlink(self, digest: Digest, repository: str) -> bool:
        """Take the blob out of ``repository``; False when it was not linked there."""
        path = self._link(digest, repository)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise storage_error(exc, "unlinking blob {digest}", digest=digest) from exc
        top = self.links_dir / digest.filename
        for folder in (path.parent, path.parent.parent, top):
            with contextlib.suppress(OSError):  # not empty: another repository's link
                folder.rmdir()
        return True

    def links(self, digest: Digest) -> list[str]:
        """The repositories the blob is linked into."""
        top = self.links_dir / digest.filename
        return sorted(
            os.path.relpath(os.path.join(folder, file), top)
            for folder, _dirs, files in os.walk(top)
            for file in files
        )

    # -- checking ----------------------------------------------------------

    def hash_blob(self, digest: Digest) -> Digest:
        """Rehash a stored blob and return what its bytes hash to."""
        hasher = digest.hasher()
        buffer = bytearray(CHUNK_SIZE)
        view = memoryview(buffer)
        with self.open(digest) as f:
            raw: BinaryIO = f
            while count := raw.readinto(buffer):  # type: ignore[attr-defined]
                hasher.update(view[:count])
        return Digest(hasher.hexdigest(), digest.algorithm)

    def verify(self, digest: Digest) -> bool:
        """Rehash one blob; True when its bytes match its name."""
        ok = self.hash_blob(digest) == digest
        if ok:
            self._stamp(digest)
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.verified_dir / digest.hex)
        return ok

    def _still_good(self, digest: Digest) -> bool:
        """Whether the stored blob is known good: its stamp is current, or it rehashes right."""
        current = self._stat_line(digest)  # BlobNotFoundError when it is gone
        try:
            if (self.verified_dir / digest.hex).read_text() == current:
                return True
        except OSError:
            pass
        return self.verify(digest)

    def check_quick(self, digest: Digest) -> None:
        """Raise :class:`CorruptBlobError` unless the blob is known good.

        A blob is rehashed only when its stat (size, mtime, ctime, inode)
        differs from the one recorded when it last hashed right, so a blob
        that anything wrote to since is caught at once; silent bit rot is
        what ``verify`` is for.
        """
        if not self._still_good(digest):
            raise CorruptBlobError(
                "blob {digest} is corrupt: its bytes no longer match its digest"
                " (run `cairn verify --repair`, then pull or create the model again)",
                digest=digest,
            )

    def check(self, digests: list[Digest] | None = None, repair: bool = False) -> list[Digest]:
        """Rehash blobs (all of them by default); return the corrupt ones.

        With ``repair`` the corrupt ones are deleted, so a later pull or
        create can store them afresh.
        """
        corrupt = []
        for digest in list(self) if digests is None else digests:
            if not self.verify(digest):
                corrupt.append(digest)
                if repair:
                    self.delete(digest)
        return corrupt

    def _stat_line(self, digest: Digest) -> str:
        try:
            st = os.stat(self.path(digest))
        except FileNotFoundError:
            raise BlobNotFoundError("blob {digest} is not in the store", digest=digest) from None
        return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"

    def _stamp(self, digest: Digest) -> None:
        with contextlib.suppress(OSError):
            (self.verified_dir / digest.hex).write_text(self._stat_line(digest))

    # -- temp files and locks ----------------------------------------------

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A folder under ``.cairn/tmp`` for files on their way in (``cairn import``'s
        small blobs), flock'ed while it is used; removed after, or by ``prune`` once
        no live process holds it (a killed import's)."""
        try:
            self._ensure_dirs()
        except OSError as exc:
            raise storage_error(exc, "creating the store at {root}", root=self.root) from exc
        for _ in range(5):
            path = self.tmp_dir / f"import-{os.urandom(8).hex()}.staging"
            try:
                path.mkdir()
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise storage_error(exc, "creating {tmp}", tmp=path) from exc
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break  # not taken by a prune between mkdir and flock
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise StoreError("temp files in {tmp_dir} keep disappearing", tmp_dir=self.tmp_dir)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def partials(self) -> Iterator[Partial]:
        """The temp files (and staging folders) under ``.cairn/tmp``, each marked in use
        or stale."""
        for name in _names(self.tmp_dir):
            if not name.endswith((".partial", ".staging")):
                continue  # a download's record goes with its .partial
            path = self.tmp_dir / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:  # gone, or a link (O_NOFOLLOW): not ours
                continue
            try:
                st = os.fstat(fd)
                folder = name.endswith(".staging") and stat.S_ISDIR(st.st_mode)
                if not (stat.S_ISREG(st.st_mode) or folder):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    in_use = False
                except BlockingIOError:
                    in_use = True
                # What removing it frees: the blocks it holds, not its length (a download
                # in ranges writes near its end early, leaving holes).
                size = st.st_blocks * 512
                if folder:
                    size = sum(e.stat().st_blocks * 512 for e in os.scandir(path) if e.is_file())
                yield Partial(path, size, in_use)
            finally:
                os.close(fd)

    def partial(self, digest: Digest, size: int, parts: int = 1) -> PartialBlob:
        """A resumable download of a blob of known digest and size (see ``partial.py``)."""
        from cairn.blobstore.partial import PartialBlob

        return PartialBlob(self, digest, size, parts)

    def stale_records(self) -> Iterator[Path]:
        """Download records (``.partial.json``, and ``.partial.tmp``: one a full disk cut
        short) whose ``.partial`` is gone."""
        for name in _names(self.tmp_dir):
            if (
                name.endswith((".partial.json", ".partial.tmp"))
                and not (self.tmp_dir / name.rsplit(".", 1)[0]).exists()
            ):
                yield self.tmp_dir / name

    def stale_stamps(self) -> Iterator[Path]:
        """Verification stamps and cached headers whose blob is gone."""
        for name in _names(self.verified_dir):
            digest = from_hex(name)
            if digest is None or not self.path(digest).exists():
                yield self.verified_dir / name
        for name in _names(self.headers_dir):
            digest = from_hex(name.split(".")[0])
            if digest is None or not self.path(digest).exists():
                yield self.headers_dir / name

    def stale_links(self) -> Iterator[Path]:
        """Link folders whose blob is gone (the blob was removed by an older cairn)."""
        for name in _names(self.links_dir):
            if not (self.blobs_dir / name).exists():
                yield self.links_dir / name

    @contextlib.contextmanager
    def writing(self, timeout: float = 600.0) -> Iterator[None]:
        """Hold while adding blobs that a manifest will reference: collection waits."""
        with self._lock(fcntl.LOCK_SH, timeout):
            yield

    @contextlib.contextmanager
    def collecting(self, timeout: float = 600.0) -> Iterator[None]:
        """Hold while deleting unreferenced blobs: no writer is mid-way."""
        with self._lock(fcntl.LOCK_EX, timeout):
            yield

    @contextlib.contextmanager
    def _lock(self, mode: int, timeout: float) -> Iterator[None]:
        try:
            self._ensure_dirs()
            fd = os.open(self.locks_dir / "store.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error(exc, "locking the store at {root}", root=self.root) from exc
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreBusyError(
                            "the store at {root} is locked by another cairn process", root=self.root
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)


class _NoKernelCopy(Exception):
    """``copy_file_range`` cannot copy between these files: stream instead."""


class _Interrupted:
    """A stream that calls ``interrupt`` before each read."""

    def __init__(
        self, raw: BinaryIO, interrupt: Callable[[], None], limit: int | None = None
    ) -> None:
        self._raw = raw
        self._interrupt = interrupt
        self._left = limit

    def readinto(self, buffer: bytearray | memoryview) -> int | None:
        self._interrupt()
        if self._left is not None:
            if self._left <= 0:
                return 0
            buffer = memoryview(buffer)[: self._left]
        count = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if self._left is not None and count:
            self._left -= count
        return count  # type: ignore[no-any-return]


def _kernel_copy_hashing(
    source: int,
    fd: int,
    interrupt: Callable[[], None],
    algorithm: str = "sha256",
    start: int = 0,
    limit: int | None = None,
) -> tuple[Digest, int]:
    """Copy ``source`` (from ``start``, at most ``limit`` bytes) into ``fd`` on a thread with
    ``copy_file_range``; hash ``fd`` meanwhile.

    The copier flushes every ``SYNC_EVERY`` bytes like the stream writer.
    The hash is taken from the temp file itself (an mmap of the landed
    range), so it is the digest of exactly the bytes that will be stored.
    """
    cond = threading.Condition()
    state: dict[str, Any] = {"copied": 0, "done": False, "stop": False, "error": None}

    def copy() -> None:
        offset = unsynced = 0
        try:
            while not state["stop"]:
                step = CHUNK_SIZE * 2 if limit is None else min(CHUNK_SIZE * 2, limit - offset)
                if step <= 0:
                    break
                count = os.copy_file_range(source, fd, step, start + offset, offset)
                if not count:
                    break
                offset += count
                unsynced += count
                with cond:
                    state["copied"] = offset
                    cond.notify_all()
                if unsynced >= SYNC_EVERY:
                    os.fdatasync(fd)
                    unsynced = 0
        except OSError as exc:
            state["error"] = exc
        finally:
            with cond:
                state["done"] = True
                cond.notify_all()

    hasher = hashlib.new(algorithm)
    copier = threading.Thread(target=copy, name="cairn-blob-copier", daemon=True)
    threads.start(copier)
    hashed = 0
    try:
        while True:
            interrupt()
            with cond:
                while state["copied"] == hashed and not state["done"]:
                    cond.wait()
                copied = state["copied"]
            if copied == hashed:
                break
            hash_range(fd, hasher, hashed, copied)
            hashed = copied
    finally:
        state["stop"] = True  # only matters when interrupt() raised
        copier.join()
    error: OSError | None = state["error"]
    if error is not None:
        if hashed == 0 and error.errno in _NO_KERNEL_COPY:
            raise _NoKernelCopy() from error
        raise storage_error(error, "copying a file into the store") from error
    return Digest(hasher.hexdigest(), algorithm), hashed


def hash_range(fd: int, hasher: Any, start: int, end: int) -> None:
    """Feed bytes ``start:end`` of the file ``fd`` to ``hasher``, through mmap (no copies)."""
    while start < end:
        stop = min(end, start + HASH_STEP)
        base = start - start % mmap.ALLOCATIONGRANULARITY
        with (
            mmap.mmap(fd, stop - base, offset=base, access=mmap.ACCESS_READ) as region,
            memoryview(region) as view,
            view[start - base :] as chunk,
        ):
            hasher.update(chunk)
        start = stop


def pwrite_all(fd: int, data: bytes | memoryview, offset: int, what: str) -> int:
    """Write all of ``data`` at ``offset``; the offset after it. Errors are store errors."""
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        raise storage_error(exc, what) from exc
    return offset


def _names(directory: Path) -> list[str]:
    """The sorted names in a directory; none when it does not exist yet."""
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
