"""The local tag store: ``manifests/<host>/<namespace>/<name>/<tag>`` holds manifest bytes.

This is Ollama's layout, so a store either one filled is readable by the
other. Lookups ignore case, as Ollama's do; a write keeps the case of a tag
that already exists rather than adding a second file that differs in case.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cairn.blobstore import Digest
from cairn.blobstore.store import storage_error
from cairn.errors import CairnError, ModelNotFoundError
from cairn.manifests.reference import Reference, parse_reference, require_ollama_readable

BY_DIGEST = ".by-digest"
"""Under a repository's folder: manifests kept by digest alone. A folder where tags are
files, so neither cairn's nor Ollama's walk of tags reads it (Ollama's glob skips folders
at a tag's depth); every collection reads it."""


@dataclass(frozen=True)
class Tagged:
    """One tag file: its reference (as spelled on disk), path and modification time."""

    reference: Reference
    path: Path
    modified: float


def _parts(ref: Reference) -> tuple[str, str, str, str]:
    if ref.tag is None:
        raise ModelNotFoundError(
            "{display}: a digest alone does not name a local tag", display=ref.display
        )
    return ref.host, ref.namespace, ref.name, ref.tag


def _child(parent: Path, name: str) -> Path | None:
    """``parent/name``, matching ``name`` without regard to case."""
    exact = parent / name
    try:
        if exact.exists():
            return exact
        folded = name.casefold()
        with os.scandir(parent) as entries:
            for entry in entries:
                if entry.name.casefold() == folded:
                    return parent / entry.name
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # no file has such a name
            return None
        raise storage_error(exc, "looking up {path}", path=exact) from exc
    return None


class TagStore:
    """Maps references to manifest bytes on disk."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.dir = self.root / "manifests"
        self.tmp_dir = self.root / ".cairn" / "tmp"

    def find(self, ref: Reference) -> Path | None:
        """The tag file for ``ref``, found ignoring case; None when absent."""
        path: Path | None = self.dir
        for part in _parts(ref):
            assert path is not None
            path = _child(path, part)
            if path is None:
                return None
        return path if path is not None and path.is_file() else None

    def read(self, ref: Reference) -> tuple[Path, bytes]:
        path = self.find(ref)
        if path is None:
            raise ModelNotFoundError("model {display!r} not found", display=ref.display)
        try:
            return path, path.read_bytes()
        except FileNotFoundError:  # removed between find and read
            raise ModelNotFoundError("model {display!r} not found", display=ref.display) from None

    def write(self, ref: Reference, data: bytes) -> Path:
        """Write a tag atomically (temp file, fsync, rename); only a name Ollama can read."""
        require_ollama_readable(ref)
        existing = self.find(ref)
        target = existing if existing is not None else self.dir.joinpath(*_parts(ref))
        return self._write(target, data, ref)

    # -- manifests kept by digest alone ----------------------------------------

    def holds_host(self, host: str) -> bool:
        """Whether the store has models of ``host`` (its folder, found ignoring case)."""
        found = _child(self.dir, host)
        return found is not None and found.is_dir()

    def repository_dir(self, ref: Reference) -> Path:
        """The folder of ``ref``'s repository, as spelled on disk when it exists."""
        path = self.dir
        for part in (ref.host, ref.namespace, ref.name):
            found = _child(path, part)
            path = found if found is not None else path / part
        return path

    def _by_digest(self, ref: Reference, digest: Digest) -> Path:
        return self.repository_dir(ref) / BY_DIGEST / digest.filename

    def write_by_digest(self, ref: Reference, digest: Digest, data: bytes) -> Path:
        """Keep a manifest pushed by digest alone (an index's child, a signature): in its
        repository's folder but not as a tag, so neither tool lists it as a model."""
        return self._write(self._by_digest(ref, digest), data, ref)

    def read_by_digest(self, ref: Reference, digest: Digest) -> bytes | None:
        try:
            return self._by_digest(ref, digest).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def delete_by_digest(self, ref: Reference, digest: Digest) -> bool:
        path = self._by_digest(ref, digest)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        with contextlib.suppress(OSError):
            path.parent.rmdir()
        return True

    def kept_by_digest(self, ref: Reference) -> list[Path]:
        """The manifests ``ref``'s repository keeps by digest alone."""
        return [Path(e.path) for e in _files(self.repository_dir(ref) / BY_DIGEST)]

    def _write(self, target: Path, data: bytes, ref: Reference) -> Path:
        tmp = self.tmp_dir / f"manifest-{os.urandom(8).hex()}.partial"
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            for attempt in range(5):
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(tmp, target)
                    break
                except FileNotFoundError:
                    # A delete of the repository's last tag removed the empty folders
                    # between our mkdir and the rename (another process, or the server):
                    # make them again.
                    if attempt == 4:
                        raise
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise storage_error(
                exc, "writing the manifest of {display}", display=ref.display
            ) from exc
        return target

    def delete(self, ref: Reference) -> bool:
        """Remove a tag and any directories it leaves empty; False when absent."""
        path = self.find(ref)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        parent = path.parent
        for _ in range(3):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    def __iter__(self) -> Iterator[Tagged]:
        """Every tag file whose path is a valid reference, in path order."""
        return self._walk(None)

    def tags_of(self, ref: Reference) -> Iterator[Tagged]:
        """Every tag of the repository ``ref`` names (its directories only, ignoring case)."""
        return self._walk((ref.host, ref.namespace, ref.name))

    def _walk(self, repository: tuple[str, str, str] | None) -> Iterator[Tagged]:
        def level(parent: Path, depth: int) -> list[Path]:
            found = _subdirs(parent)
            if repository is None:
                return found
            wanted = repository[depth].casefold()
            return [p for p in found if p.name.casefold() == wanted]

        for host in level(self.dir, 0):
            for namespace in level(host, 1):
                for name in level(namespace, 2):
                    for entry in _files(name):
                        text = f"{host.name}/{namespace.name}/{name.name}:{entry.name}"
                        try:
                            ref = parse_reference(text)
                        except CairnError:
                            continue
                        yield Tagged(ref, Path(entry.path), entry.stat().st_mtime)


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return sorted((e for e in entries if e.is_file()), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
