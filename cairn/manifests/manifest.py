"""Descriptors, image manifests (OCI and Docker schema 2) and indexes.

Parsing keeps the bytes exactly as received, because a manifest's digest is
the sha256 of those bytes; what cairn builds itself is serialized
canonically (compact JSON, fields in the spec's order).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cairn.blobstore.digest import Digest
from cairn.errors import ManifestError, StoreError
from cairn.manifests import mediatypes as mt

MAX_MANIFEST_SIZE = 4 << 20
# RFC 6838 type/subtype, as the OCI spec requires of mediaType.
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)


def _media_type(value: object, where: str) -> str:
    if not isinstance(value, str) or not _MEDIA_TYPE.fullmatch(value):
        raise ManifestError(
            "{where}: mediaType {value!r:.80} is not a media type", where=where, value=value
        )
    return value


def _string_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError("{where}: annotations must map strings to strings", where=where)
    return dict(value)


_DESCRIBED = frozenset({"mediaType", "digest", "size", "annotations", "artifactType", "platform"})


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: media type, digest and size (plus optional extras)."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    platform: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Fields kept as they came: Ollama's ``name`` (a tensor's) and ``from``, OCI ``urls``."""

    @classmethod
    def from_json(cls, obj: object, where: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError("{where} must be a JSON object", where=where)
        media_type = _media_type(obj.get("mediaType"), where)
        try:
            digest = Digest.parse(obj.get("digest"))  # type: ignore[arg-type]
        except StoreError:
            raise ManifestError(
                "{where}: digest {digest!r:.100} is not sha256:<64 hex digits>"
                " nor sha512:<128 hex digits>",
                where=where,
                digest=obj.get("digest"),
            ) from None
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(
                "{where}: size {size!r:.40} is not a non-negative integer", where=where, size=size
            )
        artifact_type = obj.get("artifactType")
        if artifact_type is not None:
            artifact_type = _media_type(artifact_type, f"{where} artifactType")
        platform = obj.get("platform")
        if platform is not None and not isinstance(platform, dict):
            raise ManifestError("{where}: platform must be a JSON object", where=where)
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=_string_map(obj.get("annotations"), where),
            artifact_type=artifact_type,
            platform=platform,
            extra={k: v for k, v in obj.items() if k not in _DESCRIBED},
        )

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
            **{k: v for k, v in self.extra.items() if k not in _DESCRIBED},
        }
        if self.artifact_type is not None:
            obj["artifactType"] = self.artifact_type
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        if self.platform is not None:
            obj["platform"] = dict(self.platform)
        return obj

    @property
    def name(self) -> str | None:
        """The tensor name Ollama records on an ``image.tensor`` layer."""
        value = self.extra.get("name")
        return value if isinstance(value, str) else None

    @property
    def title(self) -> str | None:
        """The file name oras records in ``org.opencontainers.image.title``."""
        return self.annotations.get(mt.OCI_TITLE_ANNOTATION)


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _envelope(
    media_type: str | None,
    artifact_type: str | None,
    body: dict[str, Any],
    annotations: Mapping[str, str],
) -> dict[str, Any]:
    """A manifest or index as JSON, its fields in the spec's order."""
    obj: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        obj["mediaType"] = media_type
    if artifact_type is not None:
        obj["artifactType"] = artifact_type
    obj.update(body)
    if annotations:
        obj["annotations"] = dict(annotations)
    return obj


def _load(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ManifestError("a manifest must be bytes")
    if len(data) > MAX_MANIFEST_SIZE:
        raise ManifestError(
            "manifest of {size} bytes is larger than the {limit} byte limit",
            size=len(data),
            limit=MAX_MANIFEST_SIZE,
        )
    try:
        obj = json.loads(bytes(data))
    except (ValueError, RecursionError) as exc:
        raise ManifestError("manifest is not valid JSON: {exc!s:.200}", exc=exc) from None
    if not isinstance(obj, dict):
        raise ManifestError("manifest must be a JSON object")
    if obj.get("schemaVersion") != 2 or isinstance(obj.get("schemaVersion"), bool):
        raise ManifestError(
            "schemaVersion {version!r:.40} is not 2", version=obj.get("schemaVersion")
        )
    if "mediaType" in obj:
        _media_type(obj["mediaType"], "manifest")
    return obj


@dataclass(frozen=True)
class Manifest:
    """An image manifest: OCI ``image.manifest.v1`` or Docker schema 2."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str | None = mt.DOCKER_MANIFEST
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw: bytes = field(default=b"", compare=False, repr=False)

    @classmethod
    def build(
        cls,
        config: Descriptor,
        layers: list[Descriptor] | tuple[Descriptor, ...],
        media_type: str = mt.DOCKER_MANIFEST,
        artifact_type: str | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> Manifest:
        """A new manifest, serialized canonically."""
        draft = cls(config, tuple(layers), media_type, artifact_type, None, annotations or {})
        return cls(**{**draft.__dict__, "raw": _canonical(draft.to_json())})

    @classmethod
    def from_json_object(cls, obj: dict[str, Any], raw: bytes) -> Manifest:
        media_type = obj.get("mediaType")
        if media_type is not None and media_type not in mt.MANIFEST_TYPES:
            raise ManifestError(
                "mediaType {media_type!r:.80} is not an image manifest type", media_type=media_type
            )
        layers = obj.get("layers")
        if layers is None and "layers" in obj:
            layers = []  # Go's encoding of an empty slice: Ollama writes it for a model with none
        if not isinstance(layers, list):
            raise ManifestError("manifest has no layers list")
        artifact_type = obj.get("artifactType")
        if artifact_type is not None:
            artifact_type = _media_type(artifact_type, "manifest artifactType")
        subject = obj.get("subject")
        return cls(
            config=Descriptor.from_json(obj.get("config"), "manifest config"),
            layers=tuple(
                Descriptor.from_json(layer, f"manifest layer {i}") for i, layer in enumerate(layers)
            ),
            media_type=media_type,
            artifact_type=artifact_type,
            subject=None if subject is None else Descriptor.from_json(subject, "manifest subject"),
            annotations=_string_map(obj.get("annotations"), "manifest"),
            raw=bytes(raw),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        parsed = parse_manifest(data)
        if not isinstance(parsed, Manifest):
            raise ManifestError("expected an image manifest, got an index")
        return parsed

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.subject is not None:
            body["subject"] = self.subject.to_json()
        return _envelope(self.media_type, self.artifact_type, body, self.annotations)

    def to_bytes(self) -> bytes:
        """The exact bytes: as received, or canonical for a built manifest."""
        return self.raw or _canonical(self.to_json())

    @property
    def digest(self) -> Digest:
        return Digest.of(self.to_bytes())

    @property
    def content_type(self) -> str:
        return self.media_type or mt.OCI_MANIFEST

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Every blob the manifest references: the config, then the layers."""
        return (self.config, *self.layers)

    @property
    def size(self) -> int:
        return sum(d.size for d in self.blobs)

    def layers_of(self, media_type: str) -> tuple[Descriptor, ...]:
        return tuple(layer for layer in self.layers if layer.media_type == media_type)

    def layer_of(self, media_type: str) -> Descriptor | None:
        found = self.layers_of(media_type)
        return found[-1] if found else None


@dataclass(frozen=True)
class Index:
    """An OCI image index or Docker manifest list."""

    manifests: tuple[Descriptor, ...]
    media_type: str | None = mt.OCI_INDEX
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw: bytes = field(default=b"", compare=False, repr=False)
    subject: Descriptor | None = None
    """The manifest this index refers to (OCI 1.1: an index can be a referrer too)."""

    @classmethod
    def from_json_object(cls, obj: dict[str, Any], raw: bytes) -> Index:
        media_type = obj.get("mediaType")
        if media_type is not None and media_type not in mt.INDEX_TYPES:
            raise ManifestError(
                "mediaType {media_type!r:.80} is not an index type", media_type=media_type
            )
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("index has no manifests list")
        artifact_type = obj.get("artifactType")
        if artifact_type is not None:
            artifact_type = _media_type(artifact_type, "index artifactType")
        subject = obj.get("subject")
        return cls(
            manifests=tuple(
                Descriptor.from_json(entry, f"index entry {i}") for i, entry in enumerate(entries)
            ),
            media_type=media_type,
            artifact_type=artifact_type,
            annotations=_string_map(obj.get("annotations"), "index"),
            raw=bytes(raw),
            subject=None if subject is None else Descriptor.from_json(subject, "index subject"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Index:
        parsed = parse_manifest(data)
        if not isinstance(parsed, Index):
            raise ManifestError("expected an index, got an image manifest")
        return parsed

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"manifests": [entry.to_json() for entry in self.manifests]}
        if self.subject is not None:
            body["subject"] = self.subject.to_json()
        return _envelope(self.media_type, self.artifact_type, body, self.annotations)

    def to_bytes(self) -> bytes:
        return self.raw or _canonical(self.to_json())

    @property
    def content_type(self) -> str:
        return self.media_type or mt.OCI_INDEX

    @property
    def digest(self) -> Digest:
        return Digest.of(self.to_bytes())


def parse_manifest(
    data: bytes, content_type: str | None = None, strict: bool = False
) -> Manifest | Index:
    """Parse manifest bytes into a :class:`Manifest` or an :class:`Index`.

    The kind comes from ``mediaType`` in the body, else from the
    ``content_type`` the server sent, else from the fields present.
    ``strict`` (a registry taking a push) refuses a body another reader could
    take as the other kind: a ``mediaType`` that disagrees with
    ``content_type``, or none and the fields of both kinds (as distribution).
    Anything malformed raises :class:`ManifestError`.
    """
    obj = _load(data)
    declared = obj.get("mediaType")
    if strict and declared is not None and content_type is not None and declared != content_type:
        raise ManifestError(
            "mediaType {declared!r:.100} disagrees with Content-Type {content_type!r:.100}",
            declared=declared,
            content_type=content_type,
        )
    if strict and declared is None and "layers" in obj and "manifests" in obj:
        raise ManifestError(
            "a manifest with both layers and manifests, and no mediaType, is ambiguous"
        )
    kind = declared or content_type
    if kind in mt.INDEX_TYPES or (kind not in mt.MANIFEST_TYPES and "manifests" in obj):
        return Index.from_json_object(obj, bytes(data))
    return Manifest.from_json_object(obj, bytes(data))
