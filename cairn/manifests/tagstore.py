"""The local tag store: ``manifests/<host>/<namespace>/<name>/<tag>`` holds manifest bytes.

This is Ollama's layout, so a store either one filled is readable by the
other. Lookups ignore case, as Ollama's do, one folder at a time; a write
keeps the case of a tag and of folders that already exist rather than adding
a second file or folder that differs in case.

A deeper OCI repository (``ghcr.io/org/team/model``) nests as distribution
stores repositories: ``manifests/ghcr.io/org/team/model/<tag>``. A tag is a
file; a folder where tags are files is a deeper repository (or ``.by-digest``).
Ollama's walk reads files exactly four levels down, so it never sees a deep
name (docs/store.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cairn.blobstore import Digest
from cairn.blobstore.store import storage_error
from cairn.errors import CairnError, ModelNotFoundError, StoreError
from cairn.manifests.reference import (
    MAX_LENGTH,
    Reference,
    parse_reference,
    require_ollama_readable,
)

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


def _parts(ref: Reference) -> tuple[str, ...]:
    if ref.tag is None:
        raise ModelNotFoundError(
            "{display}: a digest alone does not name a local tag", display=ref.display
        )
    return (*ref.components, ref.tag)


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
        self.lock_path = self.root / ".cairn" / "locks" / "tags.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Held (by every cairn process) from choosing a tag's folders to renaming it in,
        and while a delete removes folders: a write never makes ``Org`` beside ``org``,
        nor a tag beside a deeper repository of its path, because another write chose
        its folders at the same moment. Held briefly: the bytes are on disk before."""
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error(exc, "locking the tags at {root}", root=self.root) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

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
        tmp = self._stage(data, ref)
        with self._locked():
            existing = self.find(ref)
            target = (
                existing if existing is not None else self.repository_dir(ref) / _parts(ref)[-1]
            )
            try:
                self._refuse_overlap(ref, target)
            except CairnError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return self._place(tmp, target, ref)

    def _refuse_overlap(self, ref: Reference, target: Path) -> None:
        """A tag is a file and a deeper repository a folder at a tag's depth: refuse a name
        whose path one of them already holds the other way (``h/a/b:c`` beside ``h/a/b/c``)."""
        if target.is_dir():
            raise StoreError(
                "cannot store {display}: the store holds a deeper repository {path}, the"
                " folder this tag's file would be; give the tag another name",
                display=ref.display,
                path=target.relative_to(self.dir).as_posix(),
            )
        folder = target.parent
        while folder != self.dir and len(folder.relative_to(self.dir).parts) > 3:
            if folder.is_file():
                raise StoreError(
                    "cannot store {display}: the store holds a tag {path}, the file where"
                    " this name needs a folder; remove or rename that tag first",
                    display=ref.display,
                    path=_as_name(folder.relative_to(self.dir).parts),
                )
            folder = folder.parent

    # -- manifests kept by digest alone ----------------------------------------

    def holds_host(self, host: str) -> bool:
        """Whether the store has models of ``host`` (its folder, found ignoring case)."""
        found = _child(self.dir, host)
        return found is not None and found.is_dir()

    def repository_dir(self, ref: Reference) -> Path:
        """The folder of ``ref``'s repository, each folder as spelled on disk where it exists."""
        path = self.dir
        for part in ref.components:
            found = _child(path, part)
            path = found if found is not None else path / part
        return path

    def _by_digest(self, ref: Reference, digest: Digest) -> Path:
        return self.repository_dir(ref) / BY_DIGEST / digest.filename

    def write_by_digest(self, ref: Reference, digest: Digest, data: bytes) -> Path:
        """Keep a manifest pushed by digest alone (an index's child, a signature): in its
        repository's folder but not as a tag, so neither tool lists it as a model."""
        tmp = self._stage(data, ref)
        with self._locked():
            return self._place(tmp, self._by_digest(ref, digest), ref)

    def read_by_digest(self, ref: Reference, digest: Digest) -> bytes | None:
        try:
            return self._by_digest(ref, digest).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def delete_by_digest(self, ref: Reference, digest: Digest) -> bool:
        with self._locked():
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

    def _stage(self, data: bytes, ref: Reference) -> Path:
        """A temp file holding ``data``, on disk (fsync'ed), for :meth:`_place`."""
        tmp = self.tmp_dir / f"manifest-{os.urandom(8).hex()}.partial"
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise storage_error(
                exc, "writing the manifest of {display}", display=ref.display
            ) from exc
        return tmp

    def _place(self, tmp: Path, target: Path, ref: Reference) -> Path:
        """Rename the staged ``tmp`` to ``target``, making its folders."""
        try:
            for attempt in range(5):
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, target)
                    break
                except FileNotFoundError:
                    # A delete of a repository's last tag removed empty folders between
                    # our mkdir and the rename, or between making a folder and making
                    # one inside it (another process, or the server): make them again.
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
        """Remove a tag and the folders it leaves empty, up to its host's; False when absent.

        A folder that holds anything else (a tag, a deeper repository, ``.by-digest``)
        stays, and none is removed when the tag was reached through a link: ``rmdir``
        through a linked folder would remove one outside the store."""
        with self._locked():
            return self._delete(ref)

    def _delete(self, ref: Reference) -> bool:
        path = self.find(ref)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        folders = list(path.parents)
        folders = folders[: folders.index(self.dir)] if self.dir in folders else []
        if any(folder.is_symlink() for folder in folders):
            return True
        for folder in folders:  # the tag's own first, its host's last
            try:
                folder.rmdir()
            except OSError:
                break
        return True

    def __iter__(self) -> Iterator[Tagged]:
        """Every tag file whose path is a valid reference, deep names too, in path order."""
        return self._walk()

    def tags_of(self, ref: Reference) -> Iterator[Tagged]:
        """Every tag of the repository ``ref`` names (its folders only, ignoring case;
        not the tags of deeper repositories inside it)."""
        folders = [self.dir]
        for part in ref.components:
            wanted = part.casefold()
            folders = [p for f in folders for p in _subdirs(f) if p.name.casefold() == wanted]
        for folder in folders:
            yield from _tags_in(_files(folder), folder.relative_to(self.dir).parts)

    def _walk(self) -> Iterator[Tagged]:
        """Every folder two levels below a host or deeper (symbolic links to folders not
        followed, so no loop), its files read as tags."""
        stack: list[tuple[Path, tuple[str, ...]]] = [
            (host, (host.name,)) for host in reversed(_subdirs(self.dir))
        ]
        while stack:
            folder, parts = stack.pop()
            files, subdirs = _listing(folder)  # one scandir a folder
            if len(parts) >= 3:
                yield from _tags_in(files, parts)
            if sum(len(p) + 1 for p in parts) >= MAX_LENGTH:
                continue  # nothing deeper can be a name
            stack.extend(
                (sub, (*parts, sub.name)) for sub in reversed(subdirs) if sub.name != BY_DIGEST
            )


def _as_name(parts: tuple[str, ...]) -> str:
    """``host/…/name:tag`` for the parts of a tag file's path below ``manifests/``."""
    return "/".join(parts[:-1]) + ":" + parts[-1]


def _tags_in(files: list[os.DirEntry[str]], parts: tuple[str, ...]) -> Iterator[Tagged]:
    """The tag files among ``files`` of the repository folder ``parts`` below ``manifests/``
    whose paths are valid references."""
    for entry in files:
        try:
            ref = parse_reference(_as_name((*parts, entry.name)))
        except CairnError:
            continue
        yield Tagged(ref, Path(entry.path), entry.stat().st_mtime)


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _listing(path: Path) -> tuple[list[os.DirEntry[str]], list[Path]]:
    """The files (links followed, by name) and folders (links not followed, sorted) in
    ``path``; nothing when it is gone or not a folder."""
    try:
        with os.scandir(path) as scanned:
            entries = list(scanned)
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    files = sorted((e for e in entries if e.is_file()), key=lambda e: e.name)
    folders = sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    return files, folders


def _files(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return sorted((e for e in entries if e.is_file()), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
