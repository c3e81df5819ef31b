"""``cairn export`` and ``cairn import``: models to and from OCI image layouts.

Export writes each model's blobs (each once, however many models share it),
its manifest (as stored, or converted to an OCI artifact with ``--format
oci``), the referrers the store keeps for it (signatures, SBOMs), and the
index last (``layout.py``).

Import reads a directory, a ``.tar``, a ``.tar.zst`` or a stream. Every blob
enters the store through its verified write: a blob whose bytes are not its
name never lands. A tar stream is taken in one pass, in whatever order its
entries come; its blobs land as they pass (the store skips what it has),
and only when the stream has ended whole are tags written: a model is
tagged when every blob it names is in the store at the size it declares,
else it is refused and the error names the blob. A stream cut short tags
nothing; the blobs verified before the cut stay, for the next try or for
``cairn prune``. A tar entry that is a link, a device, an absolute path or
climbs out with ``..`` stops the import: entries are never written by their
names, so nothing lands outside the store either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cairn import config
from cairn.blobstore import Digest
from cairn.blobstore.digest import from_hex
from cairn.blobstore.store import storage_error
from cairn.errors import (
    BundleError,
    CairnError,
    DigestMismatchError,
    InvalidReferenceError,
    ManifestError,
    StorageFullError,
    StoreBusyError,
    StoreError,
)
from cairn.i18n import Phrase
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import MAX_MANIFEST_SIZE, Descriptor, Index, Manifest, parse_manifest
from cairn.manifests.models import LocalModel, Models
from cairn.manifests.reference import Reference, parse_reference
from cairn.registry.events import Event, Report, quiet
from cairn.registry.mirror.layout import LAYOUT_VERSION, bundle_kind, open_writer, ref_name
from cairn.registry.mirror.tarstream import (
    Entry,
    EntryReader,
    ReadAhead,
    TarCutOff,
    TarDamaged,
    entries,
)
from cairn.registry.pull import choose_from_index
from cairn.registry.push import as_oci_artifact
from cairn.sanitize import untrusted
from cairn.signing.policy import hold, load_policy

MAX_INDEX_SIZE = 16 << 20
MAX_ENTRIES = 1000
"""Entries of one index.json taken (a bundle of more models is split in several)."""
MAX_TAGGED_BYTES = 64 << 20
"""Manifest bytes one import may tag in all: one big manifest named by every entry of an
index would otherwise be written (and kept) that many times."""
MAX_LAYOUT_FILE = 64 << 10
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ_BUFFER = 1 << 20


# -- export ------------------------------------------------------------------------


@dataclass
class ExportReport:
    models: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    referrers: int = 0


def export(
    models: Models,
    names: list[str],
    path: str,
    fmt: str = "ollama",
    referrers: bool = True,
    level: int | None = None,
    report: Report = quiet,
) -> ExportReport:
    """Write the local models ``names`` to ``path`` (see ``layout.open_writer``)."""
    chosen = [models.get(name) for name in names]  # every name checked before a byte is written
    done = ExportReport()
    plan: list[tuple[LocalModel, Manifest, list[tuple[bytes, Manifest | Index]]]] = []
    for model in chosen:
        manifest = model.manifest if fmt == "ollama" else as_oci_artifact(model.manifest)
        extra = [(r.data, r.manifest) for r in models.referrers(model)] if referrers else []
        if fmt != "ollama":
            # A converted manifest has another digest: its signatures are pointed at it
            # (a bundle lists layers, which the formats share); other referrers stay out.
            extra = _signatures_for(extra, manifest)
        for descriptor in manifest.blobs:
            models.blobs.check_quick(descriptor.digest)
        for _, parsed in extra:
            for descriptor in _blobs_of(parsed):
                models.blobs.check_quick(descriptor.digest)
        plan.append((model, manifest, extra))
    with open_writer(path, level) as writer:
        for model, manifest, extra in plan:
            wanted = [*manifest.blobs, *(d for _, p in extra for d in _blobs_of(p))]
            for descriptor in {d.digest: d for d in wanted}.values():
                label = Phrase("exporting {digest}", digest=descriptor.digest.short)
                if writer.has_blob(descriptor.digest, descriptor.size):
                    report(Event(label, str(descriptor.digest), descriptor.size, descriptor.size))
                    continue
                sent = 0

                def progress(count: int, d: Descriptor = descriptor, label: str = label) -> None:
                    nonlocal sent
                    sent += count
                    report(Event(label, str(d.digest), d.size, sent))

                writer.add_file(descriptor, models.blobs.path(descriptor.digest), progress)
                done.blobs += 1
                done.bytes += descriptor.size
            writer.add_manifest(
                str(model.reference),
                manifest.to_bytes(),
                manifest.content_type,
                artifact_type=manifest.artifact_type,
            )
            for data, parsed in extra:
                writer.add_manifest(
                    None,
                    data,
                    parsed.content_type,
                    subject=manifest.digest,
                    artifact_type=parsed.artifact_type,
                )
                done.referrers += 1
            done.models.append(model.reference.display)
        report(Event(Phrase("writing index")))
    report(Event(Phrase("success")))
    return done


def _signatures_for(
    found: list[tuple[bytes, Manifest | Index]], converted: Manifest
) -> list[tuple[bytes, Manifest | Index]]:
    from cairn.manifests.mediatypes import SIGSTORE_BUNDLES as BUNDLE_MEDIA_TYPES
    from cairn.registry.referrers import for_subject

    subject = Descriptor(converted.content_type, converted.digest, len(converted.to_bytes()))
    moved: list[tuple[bytes, Manifest | Index]] = []
    for _, parsed in found:
        if isinstance(parsed, Manifest) and parsed.artifact_type in BUNDLE_MEDIA_TYPES:
            signature = for_subject(parsed, subject)
            moved.append((signature.to_bytes(), signature))
    return moved


def _blobs_of(parsed: Manifest | Index) -> tuple[Descriptor, ...]:
    return parsed.blobs if isinstance(parsed, Manifest) else ()


# -- import ------------------------------------------------------------------------


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(model, why) for every model left out."""
    skipped: list[str] = field(default_factory=list)
    """Index entries that are not models (no name, not a manifest), as shown."""
    referrers: int = 0
    blobs: int = 0
    """Blobs added to the store."""
    bytes: int = 0
    present: int = 0
    """Blobs the store had already."""


@dataclass
class _Entry:
    name: str
    manifest: Manifest


class _Import:
    """What an import has seen and done; the layout's files come through ``read_small``."""

    def __init__(self, models: Models, shown: str, name: str | None, report: Report) -> None:
        self.models = models
        self.shown = shown
        self.name = name
        self.report = report
        self.done = ImportReport()
        self.bad: dict[Digest, str] = {}
        self.layout: bytes | None = None
        self.index: bytes | None = None
        self.parsed: dict[Digest, Manifest | Index] = {}
        self.tagged_bytes = 0
        self.policy = load_policy(config.load().home)

    # What the two kinds of layout provide.
    def read_small(self, descriptor: Descriptor) -> bytes:
        raise NotImplementedError

    def land(self, descriptor: Descriptor) -> None:
        """Make sure the blob is in the store (a directory copies it in now); else raise."""
        raise NotImplementedError

    # -- the layout's two small files --------------------------------------------

    def check_layout(self) -> None:
        if self.layout is None:
            raise BundleError(
                "{path} is not an OCI image layout: it has no oci-layout file", path=self.shown
            )
        try:
            version = json.loads(self.layout).get("imageLayoutVersion")
        except (ValueError, AttributeError, RecursionError):
            version = None
        if not isinstance(version, str) or version.split(".")[0] != LAYOUT_VERSION.split(".")[0]:
            raise BundleError(
                "{path}: oci-layout version {version!r:.40} is not one cairn reads (1.x)",
                path=self.shown,
                version=version,
            )

    def entries(self) -> list[dict[str, Any]]:
        if self.index is None:
            raise BundleError("{path} has no index.json", path=self.shown)
        try:
            found = json.loads(self.index).get("manifests")
        except (ValueError, AttributeError, RecursionError):
            found = None
        if not isinstance(found, list):
            raise BundleError("{path}: index.json has no manifests list", path=self.shown)
        if len(found) > MAX_ENTRIES:
            raise BundleError(
                "{path}: index.json lists {count} entries; cairn imports at most {limit}"
                " from one layout",
                path=self.shown,
                count=len(found),
                limit=MAX_ENTRIES,
            )
        return [e for e in found if isinstance(e, dict)]

    # -- settling: what the index names ------------------------------------------

    def manifest(self, descriptor: Descriptor) -> Manifest | Index:
        """The manifest ``descriptor`` names, checked; read and parsed once however many
        entries name it."""
        known = self.parsed.get(descriptor.digest)
        if known is not None:
            if len(known.raw) != descriptor.size:
                raise BundleError(
                    "{path}: manifest {digest} does not match its digest or size",
                    path=self.shown,
                    digest=descriptor.digest,
                )
            return known
        data = self.read_small(descriptor)
        if len(data) != descriptor.size or Digest.of(data, descriptor.digest.algorithm) != (
            descriptor.digest
        ):
            raise BundleError(
                "{path}: manifest {digest} does not match its digest or size",
                path=self.shown,
                digest=descriptor.digest,
            )
        parsed = parse_manifest(data, descriptor.media_type)
        self.parsed[descriptor.digest] = parsed
        return parsed

    def settle(self) -> ImportReport:
        """Tag every model whose blobs are all in the store and that the trust policy
        takes; store the referrers (a model's signatures before the policy reads them)."""
        self.check_layout()
        models, referrers = self._read_index()
        self._keep(referrers, self._owners(models))
        self._tag(models)
        return self.done

    def _owners(self, models: list[_Entry]) -> dict[Digest, Reference]:
        """The name each model will be tagged as, by manifest digest (names that do not
        parse are refused when tagged)."""
        owners: dict[Digest, Reference] = {}
        for entry in models:
            with contextlib.suppress(CairnError):
                owners.setdefault(entry.manifest.digest, parse_reference(entry.name))
        return owners

    def _read_index(self) -> tuple[list[_Entry], list[tuple[Descriptor, Manifest | Index]]]:
        """The index's models (named, resolved to a model manifest) and referrers; what is
        neither is reported skipped or refused."""
        models: list[_Entry] = []
        referrers: list[tuple[Descriptor, Manifest | Index]] = []
        listed = self.entries()
        if self.name is not None and len([e for e in listed if ref_name(e)]) > 1:
            raise BundleError(
                "{path} holds several models: --name names one", path=untrusted(self.shown)
            )
        for number, obj in enumerate(listed):
            try:
                descriptor = Descriptor.from_json(obj, f"index.json entry {number}")
            except ManifestError as exc:
                self.done.refused.append((f"#{number}", str(exc)))
                continue
            shown = ref_name(obj) or str(descriptor.digest)
            if descriptor.media_type not in mt.MANIFEST_TYPES | mt.INDEX_TYPES:
                self.done.skipped.append(untrusted(shown))
                continue
            try:
                parsed = self.manifest(descriptor)
                if ref_name(obj) is None and parsed.subject is not None:
                    referrers.append((descriptor, parsed))
                    continue
                name = self._name_of(obj)
                if isinstance(parsed, Index):
                    child = choose_from_index(parsed)
                    parsed = self.manifest(child)
                    if not isinstance(parsed, Manifest):
                        raise ManifestError("an index inside an index is not a model")
                models.append(_Entry(name, parsed))
            except (CairnError, OSError) as exc:
                self.done.refused.append((untrusted(shown), _said(exc)))
        return models, referrers

    def _tag(self, models: list[_Entry]) -> dict[Digest, Reference]:
        """Tag each model whose blobs are all in the store; the tags, by manifest digest."""
        saved: dict[Digest, Reference] = {}
        for entry in models:
            try:
                ref = parse_reference(entry.name)
                self.tagged_bytes += len(entry.manifest.raw)
                if self.tagged_bytes > MAX_TAGGED_BYTES:
                    raise BundleError(
                        "the layout's manifests come to more than {limit} bytes: refused",
                        limit=MAX_TAGGED_BYTES,
                    )
                with self.models.blobs.writing():
                    self._land_all(entry.manifest.blobs)
                    hold(self.models, ref, entry.manifest, self.policy)
                    model = self.models.save(ref, entry.manifest)
                saved[entry.manifest.digest] = model.reference
                self.done.imported.append(model.reference.display)
                self.report(Event(Phrase("imported {model}", model=model.reference.display)))
            except (StorageFullError, StoreBusyError):
                raise
            except CairnError as exc:
                self.done.refused.append((untrusted(entry.name), _said(exc)))
        return saved

    def _keep(
        self,
        referrers: list[tuple[Descriptor, Manifest | Index]],
        saved: dict[Digest, Reference],
    ) -> None:
        """Keep each referrer of a model just tagged in that model's repository."""
        for descriptor, parsed in referrers:
            subject = parsed.subject
            assert subject is not None
            owner = saved.get(subject.digest)
            if owner is None:
                self.done.skipped.append(str(descriptor.digest))
                continue
            try:
                with self.models.blobs.writing():
                    self._land_all(_blobs_of(parsed))
                    self.models.tags.write_by_digest(owner, descriptor.digest, parsed.raw)
                self.done.referrers += 1
            except (StorageFullError, StoreBusyError):
                raise
            except CairnError as exc:
                self.done.refused.append((str(descriptor.digest), _said(exc)))

    def _name_of(self, obj: dict[str, Any]) -> str:
        if self.name is not None:
            return self.name
        name = ref_name(obj)
        if name is None:
            raise BundleError("the entry has no org.opencontainers.image.ref.name: give --name")
        if not any(mark in name for mark in "/:@"):
            raise BundleError(
                "its ref.name {name!r:.200} is a tag alone (as skopeo's oci:DIR:TAG and oras"
                " write one), not a model name: give --name",
                name=name,
            )
        try:
            parse_reference(name)
        except InvalidReferenceError:
            raise BundleError(
                "its ref.name {name!r:.200} is not a model name: give --name", name=name
            ) from None
        return name

    def _land_all(self, descriptors: tuple[Descriptor, ...]) -> None:
        sizes: dict[Digest, int] = {}
        for descriptor in descriptors:
            if sizes.setdefault(descriptor.digest, descriptor.size) != descriptor.size:
                raise ManifestError(
                    "the manifest lists blob {digest} twice, with sizes {one} and {other}",
                    digest=descriptor.digest,
                    one=sizes[descriptor.digest],
                    other=descriptor.size,
                )
        for descriptor in {d.digest: d for d in descriptors}.values():
            why = self.bad.get(descriptor.digest)
            if why is not None:
                raise BundleError(
                    "blob {digest} failed its check: {why}", digest=descriptor.digest, why=why
                )
            self.land(descriptor)
            size = self.models.blobs.size(descriptor.digest)
            if size != descriptor.size:
                raise BundleError(
                    "blob {digest} has {size} bytes; the manifest says {declared}",
                    digest=descriptor.digest,
                    size=size,
                    declared=descriptor.size,
                )


def _said(exc: BaseException) -> str:
    return untrusted(str(exc))[:500]


# -- a directory ---------------------------------------------------------------------


class _FromDirectory(_Import):
    def __init__(self, models: Models, root: Path, name: str | None, report: Report) -> None:
        super().__init__(models, str(root), name, report)
        self.root = root
        if not root.is_dir():
            raise BundleError("{path} is not a directory", path=root)
        self.layout = self._small(root / "oci-layout", MAX_LAYOUT_FILE)
        self.index = self._small(root / "index.json", MAX_INDEX_SIZE)

    def _file(self, path: Path) -> tuple[int, os.stat_result]:
        """An open descriptor of a regular file in the layout (a link or a device is refused)."""
        try:
            # Not blocking: a FIFO would wait for a writer before fstat could refuse it.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise BundleError(
                "{path} cannot be read: {reason}", path=path, reason=exc.strerror or exc
            ) from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise BundleError("{path} is not a regular file", path=path)
        return fd, info

    def _small(self, path: Path, limit: int) -> bytes | None:
        try:
            fd, info = self._file(path)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            if info.st_size > limit:
                raise BundleError("{path} is larger than {limit} bytes", path=path, limit=limit)
            return f.read(limit + 1)[:limit]

    def _blob(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def read_small(self, descriptor: Descriptor) -> bytes:
        if descriptor.size > MAX_MANIFEST_SIZE:
            raise BundleError(
                "manifest {digest} is larger than {limit} bytes",
                digest=descriptor.digest,
                limit=MAX_MANIFEST_SIZE,
            )
        data = self._small(self._blob(descriptor.digest), MAX_MANIFEST_SIZE)
        if data is None:
            raise BundleError(
                "index.json names {digest}, which is not in {path}",
                digest=descriptor.digest,
                path=self.shown,
            )
        return data

    def land(self, descriptor: Descriptor) -> None:
        blobs = self.models.blobs
        if blobs.has(descriptor.digest):
            self.done.present += 1
            self.report(_landed(descriptor))
            return
        path = self._blob(descriptor.digest)
        try:
            fd, info = self._file(path)
        except FileNotFoundError:
            raise BundleError(
                "blob {digest} is not in {path}", digest=descriptor.digest, path=self.shown
            ) from None
        # Copied from the file checked, through its descriptor: a name swapped for a link
        # meanwhile changes nothing, and no more than the declared size is read.
        with os.fdopen(fd, "rb", buffering=0) as source:
            if info.st_size != descriptor.size:
                raise BundleError(
                    "blob {digest} has {size} bytes; the manifest says {declared}",
                    digest=descriptor.digest,
                    size=info.st_size,
                    declared=descriptor.size,
                )
            self.report(_landing(descriptor, 0))
            blob = blobs.put_file(source, descriptor.digest, expected_size=descriptor.size)
        self.done.blobs += 1
        self.done.bytes += blob.size
        self.report(_landed(descriptor))


def _landing(descriptor: Descriptor, completed: int) -> Event:
    label = Phrase("importing {digest}", digest=descriptor.digest.short)
    return Event(label, str(descriptor.digest), descriptor.size, completed)


def _landed(descriptor: Descriptor) -> Event:
    return _landing(descriptor, descriptor.size)


# -- a tar stream ----------------------------------------------------------------------


class _FromStream(_Import):
    """A tar stream, taken in one pass.

    Large blobs go into the store as they pass. Small ones (up to a
    manifest's limit: manifests, configs, templates) wait in a staging folder
    beside the store until the index says what they are: the models' enter
    the store, manifests are read from there, and the folder goes at the end,
    so no manifest is left in the store as a blob.
    """

    def __init__(self, models: Models, shown: str, name: str | None, report: Report) -> None:
        super().__init__(models, shown, name, report)
        self.staging: Path | None = None
        self.landed: set[Digest] = set()

    def _staged(self, digest: Digest) -> Path | None:
        if self.staging is None:
            return None
        path = self.staging / digest.filename
        return path if path.is_file() else None

    def read_small(self, descriptor: Descriptor) -> bytes:
        if descriptor.digest in self.bad:
            raise BundleError(
                "manifest {digest} failed its check: {why}",
                digest=descriptor.digest,
                why=self.bad[descriptor.digest],
            )
        if descriptor.size > MAX_MANIFEST_SIZE:
            raise BundleError(
                "manifest {digest} is larger than {limit} bytes",
                digest=descriptor.digest,
                limit=MAX_MANIFEST_SIZE,
            )
        staged = self._staged(descriptor.digest)
        try:
            with staged.open("rb") if staged else self.models.blobs.open(descriptor.digest) as f:
                return f.read(MAX_MANIFEST_SIZE + 1)
        except (StoreError, OSError):
            raise BundleError(
                "index.json names {digest}, which is not in {path}",
                digest=descriptor.digest,
                path=self.shown,
            ) from None

    def land(self, descriptor: Descriptor) -> None:
        if self.models.blobs.has(descriptor.digest):
            return
        staged = self._staged(descriptor.digest)
        if staged is None:
            raise BundleError(
                "blob {digest} is not in {path}", digest=descriptor.digest, path=self.shown
            )
        self.models.blobs.put_file(staged, descriptor.digest)
        self.done.blobs += 1
        self.done.bytes += descriptor.size

    def read(self, stream: Any) -> None:
        """Take every entry of the tar ``stream``; raise when it is cut short or unsafe."""
        ahead = ReadAhead(stream)
        try:
            for entry, reader in entries(ahead):
                self._entry(entry, reader)
        except TarCutOff as exc:
            raise BundleError(
                "{path} is cut off or damaged ({exc}); nothing was tagged, the {count} blobs"
                " verified before stay in the store for the next try or cairn prune",
                path=self.shown,
                exc=exc,
                count=self.done.blobs,
            ) from None
        except TarDamaged as exc:
            raise BundleError(
                "{path} is not a tar archive ({exc})", path=self.shown, exc=exc
            ) from None
        except _ZSTD_ERRORS as exc:
            raise BundleError(
                "{path} is not a zstd stream ({exc})", path=self.shown, exc=exc
            ) from None
        finally:
            ahead.close()

    def _entry(self, member: Entry, reader: EntryReader) -> None:
        name = member.name.removeprefix("./")
        parts = name.rstrip("/").split("/")
        if member.name.startswith("/") or ".." in parts:
            raise BundleError(
                "{path} holds {name!r:.200}, a path outside the layout: refused"
                " (nothing was written outside the store)",
                path=self.shown,
                name=member.name,
            )
        if not (member.isfile() or member.isdir()):
            raise BundleError(
                "{path} holds {name!r:.200}, a link or device file: refused"
                " (nothing was written outside the store)",
                path=self.shown,
                name=member.name,
            )
        if member.isdir():
            return
        if name == "oci-layout":
            self.layout = _capped(reader, member, MAX_LAYOUT_FILE, self.shown)
            self.check_layout()  # an unknown version stops before any blob is taken
            return
        if name == "index.json":
            self.index = _capped(reader, member, MAX_INDEX_SIZE, self.shown)
            return
        if len(parts) != 3 or parts[0] != "blobs":
            return  # not part of the layout (a README beside it): not read
        digest = from_hex(parts[2]) if parts[1] == "sha256" else _sha512(parts[1], parts[2])
        if digest is None:
            raise BundleError(
                "{path} holds {name!r:.200}, not blobs/<algorithm>/<hex>",
                path=self.shown,
                name=member.name,
            )
        if self.models.blobs.has(digest):
            self.done.present += 1
            return
        if member.size <= MAX_MANIFEST_SIZE:
            self._stage(reader, digest, member.size)
            return
        descriptor = Descriptor("application/octet-stream", digest, member.size)
        self.report(_landing(descriptor, 0))
        try:
            self.models.blobs.put(reader, digest, member.size)  # under import_layout's lock
        except (StorageFullError, StoreBusyError):
            raise
        except StoreError as exc:
            self.bad[digest] = _said(exc)
            return
        self.landed.add(digest)
        self.done.blobs += 1
        self.done.bytes += member.size
        self.report(_landed(descriptor))

    def _stage(self, source: EntryReader, digest: Digest, size: int) -> None:
        """Keep a small blob aside, checked, until the index says what it is."""
        assert self.staging is not None
        hasher = digest.hasher()
        target = self.staging / digest.filename
        written = 0
        try:
            with open(target, "wb") as out:
                while piece := source.read(_READ_BUFFER):
                    hasher.update(piece)
                    out.write(piece)
                    written += len(piece)
        except OSError as exc:
            raise storage_error(exc, "staging {path}", path=self.shown) from exc
        if written != size or hasher.hexdigest() != digest.hex:
            target.unlink()
            actual = Digest(hasher.hexdigest(), digest.algorithm)
            self.bad[digest] = _said(DigestMismatchError(str(digest), str(actual)))

    def unused(self) -> set[Digest]:
        """Large blobs this import placed that no model or referrer it tagged uses (a
        bundle's junk, a decompression bomb's): not kept for the grace period."""
        used = {d.digest for m in self.parsed.values() if isinstance(m, Manifest) for d in m.blobs}
        return self.landed - used


def _sha512(algorithm: str, hex_: str) -> Digest | None:
    if algorithm != "sha512":
        return None
    with contextlib.suppress(CairnError):
        return Digest.parse(f"sha512:{hex_}")
    return None


def _capped(reader: EntryReader, member: Entry, limit: int, shown: str) -> bytes:
    if member.size > limit:
        raise BundleError(
            "{path}: {name} is larger than {limit} bytes", path=shown, name=member.name, limit=limit
        )
    return reader.read(limit)


try:
    import zstandard

    _ZSTD_ERRORS: tuple[type[BaseException], ...] = (zstandard.ZstdError,)
except ImportError:  # pragma: no cover - a dependency
    _ZSTD_ERRORS = ()


class _Peeked:
    """A stream whose first bytes were looked at."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head = head
        self.rest = rest

    def read(self, size: int = -1) -> bytes:
        if self.head:
            if size < 0:
                data, self.head = self.head + self.rest.read(), b""
                return data
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self.rest.read(size)


def _open_stream(path: str) -> tuple[Any, Callable[[], None]]:
    """A readable of ``path``'s tar bytes (decompressed), and how to close it."""
    # Unbuffered: the read-ahead thread may be blocked in a read when Ctrl-C ends the
    # process, and a buffered stdin's lock would then abort the interpreter's exit.
    try:
        if path == "-":
            raw: BinaryIO = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115
        else:
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the returned function
    except OSError as exc:
        raise BundleError(
            "cannot read {path}: {reason}", path=path, reason=exc.strerror or exc
        ) from exc
    head = b""
    while len(head) < 4 and (more := raw.read(4 - len(head))):
        head += more
    zstd = bundle_kind(path) == "zst" or head == ZSTD_MAGIC
    source: Any = _Peeked(head, raw)
    if zstd:
        import zstandard

        source = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=_READ_BUFFER, read_across_frames=True
        )

    def close() -> None:
        raw.close()

    return source, close


def import_layout(
    models: Models, path: str, name: str | None = None, report: Report = quiet
) -> ImportReport:
    """Import every model of the layout at ``path`` (a directory, tar, tar.zst, or ``-``)."""
    if name is not None:
        parse_reference(name)
    if path != "-" and Path(path).is_dir():
        job: _Import = _FromDirectory(models, Path(path), name, report)
        # One writer's lock from the first referrer kept to the last tag: a prune in
        # between would take a model's signatures for orphans before it is tagged.
        with models.blobs.writing():
            return job.settle()
    shown = "standard input" if path == "-" else path
    job = _FromStream(models, shown, name, report)
    whole = False
    # The writer's lock for the whole stream: blobs that landed early are not collected
    # (a prune) before the index, at the end, says which model they belong to.
    try:
        with models.blobs.writing(), models.blobs.staging() as job.staging:
            source, close = _open_stream(path)
            try:
                job.read(source)
            finally:
                close()
            whole = True  # a stream cut short keeps its blobs for the next try
            return job.settle()
    finally:
        if whole:
            _collect(models, job.unused())


def _collect(models: Models, digests: set[Digest]) -> None:
    """Remove these blobs unless a manifest in the store mentions them (best effort)."""
    if not digests:
        return
    with contextlib.suppress(CairnError), models.blobs.collecting(timeout=5.0):
        referenced = models.referenced(grace=0.0)
        for digest in digests - referenced:
            if models.blobs.links(digest):
                continue  # pushed into a repository of `cairn registry serve` meanwhile
            models.blobs.delete(digest)
