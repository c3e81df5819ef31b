"""Local models: a tag store over a blob store, and what users do with them.

List, look up, copy (a new tag on the same manifest: no blob is copied),
remove (and collect the blobs nothing else references), prune and verify.
Every manifest write happens under the store's writer lock and every blob
deletion under its collector lock, so a collection never removes a blob
that a create or pull in another process is about to reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG as stat_is_file

from cairn import config
from cairn.blobstore import BlobStore, Digest
from cairn.blobstore.store import storage_error
from cairn.errors import (
    BlobNotFoundError,
    CairnError,
    ManifestError,
    ModelNotFoundError,
    StoreError,
)
from cairn.manifests.manifest import MAX_MANIFEST_SIZE, Index, Manifest, parse_manifest
from cairn.manifests.reference import Reference, parse_reference
from cairn.manifests.tagstore import TagStore


@dataclass(frozen=True)
class LocalModel:
    """A tag in the local store and the manifest it points at."""

    reference: Reference
    manifest: Manifest
    modified: float
    path: Path

    @property
    def id(self) -> str:
        """The model ID: the manifest digest's first 12 hex digits, as Ollama shows it."""
        return self.manifest.digest.short

    @property
    def size(self) -> int:
        return self.manifest.size


@dataclass(frozen=True)
class Referrer:
    """A manifest the store keeps by digest that names a model's manifest as its subject."""

    path: Path
    data: bytes
    manifest: Manifest | Index


@dataclass(frozen=True)
class Problem:
    """A tag that could not be read, kept for reporting."""

    reference: Reference
    error: str


GRACE = 3600.0
"""Seconds a blob is safe from collection after it arrives, as Ollama's own cleanup:
another tool (an ``ollama pull``) places blobs first and writes their manifest last."""

# A digest as any manifest text spells it: "sha256:<hex>", or the file form "sha256-<hex>"
# (and sha512 so).
_MENTIONED = re.compile(rb"(sha256)[:-]([0-9a-fA-F]{64})|(sha512)[:-]([0-9a-fA-F]{128})")


@dataclass
class PruneReport:
    blobs: list[Digest] = field(default_factory=list)
    blob_bytes: int = 0
    partials: list[Path] = field(default_factory=list)
    partial_bytes: int = 0
    in_use: list[Path] = field(default_factory=list)
    young: list[Digest] = field(default_factory=list)
    """Unreferenced blobs kept because they arrived within the grace period."""


@dataclass
class RemoveReport:
    removed: list[Reference] = field(default_factory=list)
    freed: list[Digest] = field(default_factory=list)
    young: list[Digest] = field(default_factory=list)
    """Blobs no model uses any more, kept: they changed after the removed model was saved,
    within the grace period (something else may have just placed them)."""


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[Digest] = field(default_factory=list)
    missing: list[tuple[Reference, Digest]] = field(default_factory=list)
    bad_manifests: list[Problem] = field(default_factory=list)
    broken: list[tuple[Reference, list[Digest]]] = field(default_factory=list)
    """The models that lack blobs once the check is done (a repair removed them, or
    they were missing before), each with the blobs it lacks: pull them again."""

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.bad_manifests)


class Models:
    """The local model store rooted at ``root`` (``CAIRN_MODELS``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs = BlobStore(self.root)
        self.tags = TagStore(self.root)

    @classmethod
    def from_environment(cls) -> Models:
        return cls(config.load().models)

    # -- reading -----------------------------------------------------------

    def get(self, name: str | Reference) -> LocalModel:
        ref = parse_reference(name) if isinstance(name, str) else name
        if ref.tag is None and ref.digest is not None:
            return self._by_digest(ref, ref.digest)
        try:
            path, data = self.tags.read(ref)
        except ModelNotFoundError:
            from cairn.manifests import suggest  # on a miss only: difflib is not free

            if names := suggest.close_names(ref, self.names()):
                raise ModelNotFoundError(
                    "model {display!r} not found: did you mean {names}?",
                    display=ref.display,
                    names=" or ".join(names),
                ) from None
            raise
        try:
            manifest = Manifest.from_bytes(data)
        except ManifestError as exc:
            raise ManifestError(
                "the manifest of {display} is damaged: {exc}", display=ref.display, exc=exc
            ) from None
        if ref.digest is not None and not _is_digest_of(manifest, ref.digest):
            raise ModelNotFoundError(
                "model {display!r} not found (the tag has another digest)", display=ref.display
            )
        stored = self._as_stored(ref, path)
        return LocalModel(stored, manifest, path.stat().st_mtime, path)

    def missing_blobs(self, model: LocalModel) -> list[Digest]:
        """The blobs ``model`` names that are not in the store (a stat each, no hashing):
        a model that lacks any is broken until it is pulled or created again."""
        return [d.digest for d in model.manifest.blobs if not self.blobs.has(d.digest)]

    def names(self) -> list[Reference]:
        """The reference of every tag in the store, as spelled on disk (no manifest read)."""
        return [tagged.reference for tagged in self.tags]

    def refuse_typo(self, name: str | Reference) -> None:
        """Before a missing model is pulled: refuse a name one keystroke from a stored one."""
        from cairn.manifests import suggest

        ref = parse_reference(name) if isinstance(name, str) else name
        if names := suggest.typos(ref, self.names()):
            raise ModelNotFoundError(
                "model {display!r} not found, so not pulled: did you mean {names}?",
                display=ref.display,
                names=" or ".join(names),
            )

    def _as_stored(self, ref: Reference, path: Path) -> Reference:
        """The reference spelled as the tag's path is spelled on disk."""
        tag_path = path.relative_to(self.tags.dir).parts  # host/…/name/tag, deep names too
        try:
            return parse_reference("/".join(tag_path[:-1]) + ":" + tag_path[-1])
        except (CairnError, IndexError):
            return ref

    def _by_digest(self, ref: Reference, digest: Digest) -> LocalModel:
        for tagged in self.tags.tags_of(ref):
            with contextlib.suppress(CairnError, OSError):
                model = self.get(tagged.reference)
                if _is_digest_of(model.manifest, digest):
                    return model
        raise ModelNotFoundError("model {display!r} not found", display=ref.display)

    def catalog(self) -> tuple[list[LocalModel], list[Problem]]:
        """Every readable model (newest first) and the tags that could not be read."""
        models: list[LocalModel] = []
        problems: list[Problem] = []
        for tagged in self.tags:
            try:
                manifest = Manifest.from_bytes(tagged.path.read_bytes())
            except (ManifestError, OSError) as exc:
                error = exc.message if isinstance(exc, ManifestError) else str(exc)
                problems.append(Problem(tagged.reference, error))
                continue
            models.append(LocalModel(tagged.reference, manifest, tagged.modified, tagged.path))
        models.sort(key=lambda m: m.modified, reverse=True)
        return models, problems

    def referenced(self, grace: float = GRACE) -> set[Digest]:
        """Every blob that any file under ``manifests/`` mentions.

        Not only the manifests cairn can parse and name: Ollama accepts names
        cairn does not (``library/my_model_``) and writes manifests cairn's
        parser may refuse, and a store can be shared with it. Every digest a
        manifest file mentions is kept: in its bytes, and in its strings once
        JSON-decoded (``\\u003a``, UTF-16), links followed as both tools
        follow them. What cannot be read stops the collection with a
        :class:`StoreError` naming it before any blob is freed: a file or
        folder that cannot be read, a ``manifests`` that is not a folder, and
        an empty manifest younger than the grace period (Ollama truncates a
        manifest, then writes it).
        """
        return set().union(*self._mentions(grace).values())

    def _mentions(self, grace: float) -> dict[Path, set[Digest]]:
        """The digests each file under ``manifests/`` mentions (see :meth:`referenced`)."""
        found: dict[Path, set[Digest]] = {}
        now = time.time()
        for path in _every_file(self.tags.dir):
            try:
                stat = path.stat()
                if stat.st_size == 0 and now - stat.st_mtime < grace:
                    raise StoreError(
                        "{path} is empty: a manifest being written? Collect again later,"
                        " or remove the file (no blob was removed)",
                        path=path,
                    )
                found[path] = _mentioned(path)
            except FileNotFoundError:
                continue  # removed meanwhile: it references nothing any more
            except OSError as exc:
                raise storage_error(
                    exc,
                    "reading {path} to see which blobs it uses (no blob was removed)",
                    path=path,
                ) from exc
        return found

    def _age(self, digest: Digest, now: float) -> float | None:
        """Seconds since the blob last arrived: written, renamed or linked in, or pushed or
        mounted into a repository again (a registry client's manifest follows that, as it
        follows a first upload); None when it is gone or is not a file (a folder named like
        a blob is no blob)."""
        try:
            stat = self.blobs.path(digest).stat()
        except FileNotFoundError:
            return None
        if not stat_is_file(stat.st_mode):
            return None
        return now - max(stat.st_mtime, stat.st_ctime, self.blobs.linked_at(digest) or 0.0)

    # -- writing -----------------------------------------------------------

    def save(self, ref: Reference, manifest: Manifest) -> LocalModel:
        """Tag ``manifest`` as ``ref``; every blob it names must be in the store.

        Call inside ``self.blobs.writing()`` when the blobs were just added,
        so no collection runs between storing them and tagging them.
        """
        if ref.tag is None:
            raise ModelNotFoundError(
                "{display}: a model is saved under a tag, not a digest", display=ref.display
            )
        for descriptor in manifest.blobs:
            if not self.blobs.has(descriptor.digest):
                raise BlobNotFoundError(
                    "cannot save {display}: blob {digest} is not in the store",
                    display=ref.display,
                    digest=descriptor.digest,
                )
        path = self.tags.write(ref, manifest.to_bytes())
        return LocalModel(self._as_stored(ref, path), manifest, path.stat().st_mtime, path)

    def copy(self, source: str | Reference, destination: str | Reference) -> LocalModel:
        """A new tag for the same manifest: no blob is copied. The manifest's referrers
        (its signatures) are kept in the new name's repository too, so a push of the
        new name sends them."""
        src = self.get(source)
        dst = parse_reference(destination) if isinstance(destination, str) else destination
        with self.blobs.writing():
            copied = self.save(dst, src.manifest)
            if not src.reference.same_model(dst):
                for referrer in self.referrers(src):
                    self.tags.write_by_digest(dst, Digest.of(referrer.data), referrer.data)
            return copied

    def referrers(self, model: LocalModel) -> list[Referrer]:
        """The manifests kept by digest in the model's repository whose subject is the
        model's manifest (its signatures); one that cannot be read is passed over."""
        found: list[Referrer] = []
        for path in self.tags.kept_by_digest(model.reference):
            try:
                data = path.read_bytes()
                parsed = parse_manifest(data)
            except (OSError, CairnError):
                continue
            if parsed.subject is not None and parsed.subject.digest == model.manifest.digest:
                found.append(Referrer(path, data, parsed))
        return found

    def remove(self, names: Iterable[str | Reference], grace: float = GRACE) -> RemoveReport:
        """Remove tags; then the blobs of theirs that no remaining manifest mentions.

        Every name is checked before anything is removed, so a typo in the
        third name leaves the first two in place. A blob that changed after
        the model being removed was saved, less than ``grace`` seconds ago,
        is kept: the model's own blobs are older than its manifest, so such
        a blob was placed again by someone else, maybe an ``ollama pull``
        whose manifest is not written yet. ``cairn prune`` frees it later.
        """
        targets: list[tuple[Reference, Manifest | None, float]] = []
        for name in names:
            ref = parse_reference(name) if isinstance(name, str) else name
            try:
                model = self.get(ref)
                targets.append((model.reference, model.manifest, model.modified))
            except ManifestError:  # a damaged manifest can still be removed
                targets.append((ref, None, 0.0))
        report = RemoveReport()
        with self.blobs.collecting():
            # Read once, before any tag goes: every manifest readable, or nothing is removed.
            mentions = self._mentions(grace)
            now = time.time()
            saved: dict[Digest, float] = {}
            for ref, manifest, modified in targets:
                path = self.tags.find(ref)
                if path is not None and self.tags.delete(ref):
                    report.removed.append(ref)
                    mentions.pop(path, None)
                    modified = modified if modified <= now else 0.0  # dated in the future: unknown
                    for descriptor in manifest.blobs if manifest is not None else ():
                        saved[descriptor.digest] = max(modified, saved.get(descriptor.digest, 0))
            still = set().union(*mentions.values())
            for digest in sorted(set(saved) - still):
                age = self._age(digest, now)
                if age is None:
                    continue
                if grace > 0 and age < grace and now - age > saved[digest]:
                    report.young.append(digest)
                elif self._delete(digest):
                    report.freed.append(digest)
        return report

    def _delete(self, digest: Digest) -> bool:
        try:
            return self.blobs.delete(digest)
        except OSError as exc:
            raise storage_error(exc, "removing blob {digest}", digest=digest) from exc

    def prune(self, dry_run: bool = False, grace: float = GRACE) -> PruneReport:
        """Remove blobs no manifest mentions that arrived over ``grace`` seconds ago,
        and temp files no live process holds."""
        report = PruneReport()
        with self.blobs.collecting():
            # Referrers (signatures) of manifests no longer here go first: their blobs free.
            from cairn.signing.store import orphaned_referrers

            orphans = set(orphaned_referrers(self.tags, grace))
            mentions = self._mentions(grace)
            referenced = set().union(*(d for p, d in mentions.items() if p not in orphans))
            for orphan in orphans if not dry_run else ():
                with contextlib.suppress(FileNotFoundError):
                    orphan.unlink()
            now = time.time()
            for digest in self.blobs:
                if digest not in referenced:
                    age = self._age(digest, now)
                    if age is None:
                        continue  # gone meanwhile, or not a file
                    if grace > 0 and age < grace:
                        report.young.append(digest)  # a blob dated in the future too
                        continue
                    report.blobs.append(digest)
                    with contextlib.suppress(CairnError):
                        report.blob_bytes += self.blobs.size(digest)
                    if not dry_run:
                        self._delete(digest)
            for partial in self.blobs.partials():
                if partial.in_use:
                    report.in_use.append(partial.path)
                    continue
                report.partials.append(partial.path)
                report.partial_bytes += partial.size
                if not dry_run and partial.path.is_dir():  # a killed import's staging folder
                    shutil.rmtree(partial.path, ignore_errors=True)
                elif not dry_run:
                    for path in (partial.path, partial.path.with_name(partial.path.name + ".json")):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
            if not dry_run:
                for stamp in (*self.blobs.stale_stamps(), *self.blobs.stale_records()):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(stamp)
                for links in self.blobs.stale_links():
                    shutil.rmtree(links, ignore_errors=True)
        return report

    def verify(self, names: Iterable[str] = (), repair: bool = False) -> VerifyReport:
        """Rehash the blobs of the named models (all blobs when none are named)."""
        report = VerifyReport()
        wanted = list(names)
        digests: dict[Digest, None] = {}
        if wanted:
            models = [self.get(name) for name in wanted]
        else:
            models, problems = self.catalog()
            report.bad_manifests.extend(problems)
            digests.update(dict.fromkeys(self.blobs))
        for model in models:
            for descriptor in model.manifest.blobs:
                if not self.blobs.has(descriptor.digest):
                    report.missing.append((model.reference, descriptor.digest))
                else:
                    digests[descriptor.digest] = None
        report.checked = len(digests)
        lock = self.blobs.collecting() if repair else contextlib.nullcontext()
        with lock:
            report.corrupt = self.blobs.check(list(digests), repair=repair)
        for model in models:
            if lacking := self.missing_blobs(model):
                report.broken.append((model.reference, lacking))
        return report


def _is_digest_of(manifest: Manifest, digest: Digest) -> bool:
    """Whether ``digest`` (sha256, or sha512 for a model pulled by one) names the manifest."""
    if digest.algorithm == "sha256":
        return manifest.digest == digest
    return Digest.of(manifest.to_bytes(), digest.algorithm) == digest


def _every_file(directory: Path) -> Iterator[Path]:
    """Every regular file below ``directory``, at any depth, links followed (each folder
    once); a folder that cannot be listed, or a ``directory`` that is not one, is an error."""
    try:
        os.lstat(directory)
    except FileNotFoundError:
        return  # a store with no manifests yet
    except OSError as exc:
        raise storage_error(exc, "listing {path} (no blob was removed)", path=directory) from exc
    if not os.path.isdir(directory):
        raise StoreError(
            "{path} is a link to nothing: cannot tell which blobs are in use (no blob was removed)"
            if os.path.islink(directory)
            else "{path} is not a folder: cannot tell which blobs are in use (no blob was removed)",
            path=directory,
        )
    seen: set[tuple[int, int]] = set()
    pending = [directory]
    while pending:
        folder = pending.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue  # a link back up: once is enough
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                listed = list(entries)
        except FileNotFoundError:
            continue  # removed meanwhile (its last tag deleted): no manifest is left in it
        except OSError as exc:
            raise storage_error(exc, "listing {path} (no blob was removed)", path=folder) from exc
        for entry in sorted(listed, key=lambda e: e.name):
            path = Path(entry.path)
            try:
                if entry.is_dir():  # follows links, as Ollama's Glob and Stat do
                    pending.append(path)
                elif entry.is_file():
                    yield path
            except OSError:
                continue  # a dangling link names nothing


def _mentioned(path: Path, chunk: int = 1 << 20) -> set[Digest]:
    """The digests ``path`` mentions: in its bytes and, when it is JSON (a manifest,
    at most 4 MiB, read once), in its strings (escapes and UTF-16/32 decoded). A larger
    file is scanned a chunk at a time."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= MAX_MANIFEST_SIZE:
            data = f.read()
            return _digests_in(data) | _in_json(data)
        found: set[Digest] = set()
        keep = len(b"sha512:") + 128 - 1  # a digest cut by a chunk's end is whole in the next
        tail = b""
        while block := f.read(chunk):
            text = tail + block
            found |= _digests_in(text)
            tail = text[-keep:]
        return found


def _digests_in(data: bytes) -> set[Digest]:
    return {
        Digest((m[2] or m[4]).decode().lower(), (m[1] or m[3]).decode())
        for m in _MENTIONED.finditer(data)
    }


def _in_json(data: bytes) -> set[Digest]:
    """Digests in the strings of a JSON document (none when it is not JSON)."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return set()
    found: set[Digest] = set()
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            found |= _digests_in(value.encode("utf-8", "replace"))
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return found
