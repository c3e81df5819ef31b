"""OCI image layouts written as they are made: a directory, a ``.tar``, a ``.tar.zst``.

A layout (OCI image-layout 1.0.0) is ``oci-layout``, ``blobs/<alg>/<hex>``
and ``index.json``, whose entries point at manifests (which are blobs too)
and name them with ``org.opencontainers.image.ref.name``. The writers here
take blobs one at a time, from a stored file or from chunks arriving from a
registry, and write ``index.json`` last:

- a directory gets each blob under a temporary name, renamed once its size
  and digest are right; an index that was there is merged into (skopeo's
  ``oci:`` does the same), and written last through a rename, so a layout
  cut short by an error or Ctrl-C never has an index naming what is not there;
- a tar stream is written entry by entry (``oci-layout`` first, blobs,
  ``index.json`` last), through zstd when the name ends ``.zst``; a file is
  written under a temporary name of its own (``.NAME.<random>.partial``, created
  exclusively, no link followed) and renamed at the end, so nothing that looks
  whole is left by a failure, and two writers to one name never mix. A stream
  to standard output cannot be taken back: cut short, it lacks its index, and
  ``cairn import`` refuses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from cairn.blobstore import Digest
from cairn.blobstore.store import storage_error
from cairn.errors import DigestMismatchError, SizeMismatchError, StoreError
from cairn.manifests.manifest import Descriptor

LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
CHUNK = 4 << 20
BLOCK = 512
DEFAULT_LEVEL = 3
"""zstd's own default: on a quantized GGUF higher levels buy little (docs/offline.md)."""


def bundle_kind(path: str) -> str:
    """``dir``, ``tar`` or ``zst`` by the name's ending (``-`` is a plain tar stream)."""
    lowered = path.lower()
    if lowered.endswith((".tar.zst", ".tzst", ".zst")):
        return "zst"
    if lowered.endswith(".tar") or path == "-":
        return "tar"
    return "dir"


class BlobSink(Protocol):
    """Where one blob's bytes go, in order; :meth:`close` checks their size and digest."""

    def write(self, data: bytes | memoryview, /) -> None: ...

    def close(self) -> None: ...


class _Checked:
    """Hashes and counts what passes; raises at :meth:`check` when it is not the descriptor."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.hasher = descriptor.digest.hasher()
        self.size = 0

    def add(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.size > self.descriptor.size:
            raise self._wrong_size()
        self.hasher.update(data)

    def _wrong_size(self) -> SizeMismatchError:
        return SizeMismatchError(
            "blob {blob}: got {size} bytes, expected {expected_size}",
            blob=self.descriptor.digest,
            size=self.size,
            expected_size=self.descriptor.size,
        )

    def check(self) -> None:
        if self.size != self.descriptor.size:
            raise self._wrong_size()
        actual = Digest(self.hasher.hexdigest(), self.descriptor.digest.algorithm)
        if actual != self.descriptor.digest:
            raise DigestMismatchError(str(self.descriptor.digest), str(actual))


class LayoutWriter:
    """An OCI layout being written; use as a context manager.

    Leaving the block by an exception aborts: nothing is left that looks whole.
    """

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.entries: list[dict[str, Any]] = []
        self._written: set[Digest] = set()

    # -- what subclasses provide ---------------------------------------------

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        return digest in self._written

    def blob(self, descriptor: Descriptor) -> BlobSink:
        raise NotImplementedError

    def add_file(self, descriptor: Descriptor, path: Path, progress: Callable[[int], None]) -> None:
        """A stored blob (trusted: the store checked it), copied in as fast as the target allows."""
        sink = self.blob(descriptor)
        with open(path, "rb") as source:
            while piece := source.read(CHUNK):
                sink.write(piece)
                progress(len(piece))
        sink.close()

    def _finish(self, index: bytes) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------

    def add_bytes(self, descriptor: Descriptor, data: bytes) -> None:
        if self.has_blob(descriptor.digest):
            return
        sink = self.blob(descriptor)
        sink.write(data)
        sink.close()

    def add_manifest(
        self,
        name: str | None,
        data: bytes,
        media_type: str,
        subject: Digest | None = None,
        artifact_type: str | None = None,
    ) -> Descriptor:
        """A manifest (its blob and an ``index.json`` entry); ``name`` is its ``ref.name``,
        None for a referrer (``subject``: the manifest it refers to, which its own bytes
        name too; ``cairn import`` finds it through them)."""
        descriptor = Descriptor(media_type, Digest.of(data), len(data))
        self.add_bytes(descriptor, data)
        entry = descriptor.to_json()
        if artifact_type:
            entry["artifactType"] = artifact_type
        if name is not None:
            entry["annotations"] = {REF_NAME: name}
            self.entries = [e for e in self.entries if ref_name(e) != name]
        elif any(e.get("digest") == entry["digest"] and ref_name(e) is None for e in self.entries):
            return descriptor
        self.entries.append(entry)
        return descriptor

    def close(self) -> None:
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": self.entries}
        self._finish(json.dumps(index, indent=2).encode() + b"\n")

    def __enter__(self) -> LayoutWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.abort()
            return
        try:
            self.close()  # the last writes (zstd's end, index.json) can fail too: a full disk
        except BaseException:
            self.abort()
            raise


def ref_name(entry: dict[str, Any]) -> str | None:
    """The ``org.opencontainers.image.ref.name`` of an ``index.json`` entry, if it has one."""
    annotations = entry.get("annotations")
    name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) and name else None


# -- a directory ------------------------------------------------------------------


class _FileSink:
    def __init__(self, writer: DirectoryWriter, descriptor: Descriptor) -> None:
        self.writer = writer
        self.checked = _Checked(descriptor)
        self.target = writer.blob_path(descriptor.digest)
        self.tmp = self.target.with_name(f".{self.target.name}.{os.urandom(4).hex()}.partial")
        self.file = writer.create(self.tmp)

    def write(self, data: bytes | memoryview) -> None:
        try:
            self.checked.add(data)
            self.file.write(data)
        except BaseException:
            self.discard()
            raise

    def close(self) -> None:
        try:
            self.checked.check()
            self.writer.seal(self.file, self.tmp, self.target)
        except BaseException:
            self.discard()
            raise
        self.writer.done(self.checked.descriptor.digest)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


class DirectoryWriter(LayoutWriter):
    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not (root / "oci-layout").exists():
                self._atomic(root / "oci-layout", _layout_file())
        except OSError as exc:
            raise storage_error(exc, "writing {path}", path=root) from exc
        for inside in (root / "blobs", root / "blobs" / "sha256", root / "blobs" / "sha512"):
            if inside.is_symlink() or (inside.exists() and not inside.is_dir()):
                raise StoreError(
                    "{path} is a link or not a folder: a layout's blobs stay inside it",
                    path=inside,
                )
        self.entries = _existing_entries(root)

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        """Written by this export, or there already, a regular file of ``size`` bytes
        whose bytes hash to ``digest`` (an earlier export's: a layout is added to)."""
        if digest in self._written:
            return True
        path = self.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False
        with os.fdopen(fd, "rb", buffering=0) as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or (size is not None and info.st_size != size):
                return False
            hasher = digest.hasher()
            while piece := f.read(CHUNK):
                hasher.update(piece)
        if hasher.hexdigest() != digest.hex:
            return False
        self._written.add(digest)
        return True

    def blob(self, descriptor: Descriptor) -> BlobSink:
        return _FileSink(self, descriptor)

    def create(self, path: Path) -> BinaryIO:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "wb")
        except OSError as exc:
            raise storage_error(exc, "writing {path}", path=path) from exc

    def seal(self, file: BinaryIO, tmp: Path, target: Path) -> None:
        try:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            os.replace(tmp, target)
        except OSError as exc:
            raise storage_error(exc, "writing {path}", path=target) from exc

    def done(self, digest: Digest) -> None:
        self._written.add(digest)

    def add_file(self, descriptor: Descriptor, path: Path, progress: Callable[[int], None]) -> None:
        target = self.blob_path(descriptor.digest)
        tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.partial")
        out = self.create(tmp)
        try:
            with open(path, "rb") as source:
                _kernel_copy(source, out, descriptor.size, progress)
            self.seal(out, tmp, target)
        except BaseException:
            out.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self.done(descriptor.digest)

    def _finish(self, index: bytes) -> None:
        try:
            self._atomic(self.root / "index.json", index)
        except OSError as exc:
            raise storage_error(exc, "writing {path}", path=self.root / "index.json") from exc

    def abort(self) -> None:
        """Blobs written stay (a later export skips them); the index is not touched."""

    def _atomic(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.partial")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _existing_entries(root: Path) -> list[dict[str, Any]]:
    """The entries of an index already there (an export adds to a layout)."""
    try:
        data = json.loads((root / "index.json").read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError, RecursionError) as exc:
        raise StoreError(
            "{path} is there but is not a readable index ({exc}); export elsewhere or remove it",
            path=root / "index.json",
            exc=exc,
        ) from None
    entries = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise StoreError("{path} has no manifests list", path=root / "index.json")
    return [e for e in entries if isinstance(e, dict)]


def _kernel_copy(
    source: BinaryIO, out: BinaryIO, size: int, progress: Callable[[int], None]
) -> None:
    """``size`` bytes from one file to the other in the kernel (a reflink where it can)."""
    done = 0
    try:
        while done < size:
            count = os.copy_file_range(source.fileno(), out.fileno(), min(CHUNK * 16, size - done))
            if count == 0:
                raise StoreError("{path} is shorter than its manifest says", path=source.name)
            done += count
            progress(count)
    except OSError as exc:
        if done or exc.errno not in (18, 38, 22, 95):  # EXDEV, ENOSYS, EINVAL, EOPNOTSUPP
            raise storage_error(exc, "writing {path}", path=out.name) from exc
        try:
            while piece := source.read(CHUNK):
                out.write(piece)
                progress(len(piece))
        except OSError as exc:
            raise storage_error(exc, "writing {path}", path=out.name) from exc


def _layout_file() -> bytes:
    return json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()


# -- a tar stream ------------------------------------------------------------------


class _Output:
    """Where the tar's bytes go: a file or standard output, maybe through zstd."""

    def __init__(self, path: str, zstd: bool, level: int | None) -> None:
        self.path = path
        self.partial: Path | None = None
        self.raw: BinaryIO
        if path == "-":
            if sys.stdout is None:
                raise StoreError("standard output is closed: name a file or a folder")
            self.raw = sys.stdout.buffer
        else:
            target = Path(path)
            # A name of its own, created here and nowhere else (O_EXCL, no link followed):
            # two exports to one name never write one file, and a link planted at the
            # name cannot send the bytes elsewhere. The rename at the end is atomic.
            self.partial = target.with_name(f".{target.name}.{os.urandom(6).hex()}.partial")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(
                    self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
                )
                self.raw = open(fd, "wb")  # noqa: SIM115 - closed in finish/abort
            except OSError as exc:
                raise storage_error(exc, "writing {path}", path=self.partial) from exc
        self.out: Any = self.raw
        self.zstd: Any = None
        if zstd:
            import zstandard

            compressor = zstandard.ZstdCompressor(
                level=DEFAULT_LEVEL if level is None else level, threads=-1
            )
            self.zstd = compressor.stream_writer(self.raw, closefd=False)
            self.out = self.zstd

    def write(self, data: bytes | memoryview) -> None:
        try:
            self.out.write(data)
        except OSError as exc:
            raise storage_error(exc, "writing {path}", path=self.partial or "-") from exc

    def finish(self) -> None:
        try:
            if self.zstd is not None:
                self.zstd.close()
            self.raw.flush()
            if self.partial is not None:
                os.fsync(self.raw.fileno())
                self.raw.close()
                os.replace(self.partial, self.path)
        except OSError as exc:
            raise storage_error(exc, "writing {path}", path=self.path) from exc

    def abort(self) -> None:
        if self.partial is None:
            with contextlib.suppress(OSError, ValueError):
                self.raw.flush()
            return
        with contextlib.suppress(Exception):
            if self.zstd is not None:
                self.zstd.close()
        with contextlib.suppress(OSError):
            self.raw.close()
        with contextlib.suppress(OSError):
            self.partial.unlink()


class _TarSink:
    def __init__(self, writer: TarWriter, descriptor: Descriptor) -> None:
        self.writer = writer
        self.checked = _Checked(descriptor)
        writer.header(
            f"blobs/{descriptor.digest.algorithm}/{descriptor.digest.hex}", descriptor.size
        )

    def write(self, data: bytes | memoryview) -> None:
        self.checked.add(data)  # more than declared fails before it is written
        self.writer.output.write(data)

    def close(self) -> None:
        # A wrong digest cannot be taken back from a stream: the writer aborts,
        # and the bundle is never finished (no index.json).
        self.checked.check()
        self.writer.pad(self.checked.size)
        self.writer._written.add(self.checked.descriptor.digest)


class TarWriter(LayoutWriter):
    def __init__(self, path: str, zstd: bool, level: int | None) -> None:
        super().__init__(path)
        self.output = _Output(path, zstd, level)
        self._add("oci-layout", _layout_file())

    def header(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o444
        info.mtime = 0  # the same models make the same bundle
        self.output.write(info.tobuf(format=tarfile.PAX_FORMAT))

    def pad(self, size: int) -> None:
        if size % BLOCK:
            self.output.write(bytes(BLOCK - size % BLOCK))

    def _add(self, name: str, data: bytes) -> None:
        self.header(name, len(data))
        self.output.write(data)
        self.pad(len(data))

    def blob(self, descriptor: Descriptor) -> BlobSink:
        return _TarSink(self, descriptor)

    def add_file(self, descriptor: Descriptor, path: Path, progress: Callable[[int], None]) -> None:
        sink = _TarSink(self, descriptor)
        buffer = bytearray(CHUNK)
        with open(path, "rb", buffering=0) as source:
            left = descriptor.size
            while left:
                count = source.readinto(buffer)
                if not count:
                    raise StoreError("{path} is shorter than its manifest says", path=path)
                count = min(count, left)
                view = memoryview(buffer)[:count]
                sink.checked.size += count  # stored blobs are trusted: counted, not hashed
                self.output.write(view)
                left -= count
                progress(count)
        self.pad(descriptor.size)
        self._written.add(descriptor.digest)

    def _finish(self, index: bytes) -> None:
        self._add("index.json", index)
        self.output.write(bytes(2 * BLOCK))  # the end of the archive
        self.output.finish()

    def abort(self) -> None:
        self.output.abort()


def open_writer(path: str, level: int | None = None) -> LayoutWriter:
    """A writer for ``path``: a directory, a ``.tar``, a ``.tar.zst``, or ``-`` (stdout)."""
    kind = bundle_kind(path)
    if kind == "dir":
        if os.path.lexists(path) and not Path(path).is_dir():
            raise StoreError(
                "{path} is there and is not a folder: name a folder, a .tar or .tar.zst file,"
                " or - for standard output",
                path=path,
            )
        return DirectoryWriter(Path(path))
    return TarWriter(path, kind == "zst", level)
