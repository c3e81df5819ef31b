"""Manifest, tag and referrer endpoints of ``cairn registry serve``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import quote

from aiohttp import web

from cairn.blobstore import Digest
from cairn.errors import (
    CairnError,
    InvalidReferenceError,
    ManifestError,
)
from cairn.manifests import mediatypes as mt
from cairn.manifests.manifest import (
    MAX_MANIFEST_SIZE,
    Manifest,
    parse_manifest,
)
from cairn.manifests.reference import is_tag
from cairn.registry.server.catalog import page
from cairn.registry.server.errors import OCIError
from cairn.registry.server.registry import (
    Registry,
    absolute_url,
    body_chunks,
    foreign,
    is_digest,
    parse_digest,
    warn,
)


async def get_manifest(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name, reference = request.match_info["name"], request.match_info["reference"]
    if registry.cache is not None:
        data = await registry.cache.manifest(name, reference, request.method == "GET")
    else:
        data = await asyncio.to_thread(registry.find_manifest, name, reference)
    try:
        parsed = parse_manifest(data)
    except ManifestError:
        raise OCIError(
            "MANIFEST_INVALID", f"the stored manifest {name}:{reference} is damaged"
        ) from None
    # by digest, that digest (it may be sha512); by tag, the sha256 of the bytes
    digest = parse_digest(reference) if is_digest(reference) else Digest.of(data)
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": parsed.content_type,
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
    async for part in body_chunks(request, "MANIFEST_INVALID"):
        size += len(part)
        if size > limit:
            raise OCIError("SIZE_INVALID", f"manifests are limited to {limit} bytes", status=413)
        parts.append(part)
    return b"".join(parts)


def _mapped(name: str) -> bool:
    """One or two parts (``ns/name``): mapped onto --default-host, registry.ollama.ai's place."""
    return len(name.split("/")) < 3


async def put_manifest(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name, reference = request.match_info["name"], request.match_info["reference"]
    if request.content_length is not None and request.content_length > MAX_MANIFEST_SIZE:
        raise OCIError(
            "SIZE_INVALID", f"manifests are limited to {MAX_MANIFEST_SIZE} bytes", status=413
        )
    by_digest = is_digest(reference)
    if not by_digest and not is_tag(reference):
        raise OCIError("MANIFEST_INVALID", f"{reference!r:.100} is not a tag (nor a digest)")
    data = await _whole_body(request, MAX_MANIFEST_SIZE)
    registry.check_quota(len(data))  # early; again, afresh, when it is written
    digest = Digest.of(data, parse_digest(reference).algorithm if by_digest else "sha256")
    content_type = request.headers.get("Content-Type", "").partition(";")[0].strip() or None
    try:
        parsed = parse_manifest(data, content_type, strict=True)
    except ManifestError as exc:
        raise OCIError("MANIFEST_INVALID", str(exc)) from None
    if by_digest and parse_digest(reference) != digest:
        raise OCIError("DIGEST_INVALID", f"the manifest's digest is {digest}, not {reference}")
    tag = "latest" if by_digest else reference
    ref = registry.reference(name, tag)
    blobs = registry.models.blobs
    mapped = _mapped(name)

    def check() -> None:
        """What the manifest names is here: called holding the writer lock, so no blob
        DELETE or prune (which take the collector's) comes between this and the write."""
        if isinstance(parsed, Manifest):
            for descriptor in parsed.blobs:
                if foreign(descriptor, parsed):
                    continue  # the spec lets a registry take these without their blobs
                if not registry.visible(ref, descriptor.digest):
                    raise OCIError(
                        "MANIFEST_BLOB_UNKNOWN",
                        f"blob {descriptor.digest} is not in {name}",
                        {"digest": str(descriptor.digest)},
                    )
                size = blobs.size(descriptor.digest)
                if descriptor.size != size:  # nobody could pull it back
                    raise OCIError(
                        "MANIFEST_INVALID",
                        f"blob {descriptor.digest} is {size} bytes, not {descriptor.size}",
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
        """Store the manifest; what it replaced under a mapped name, if anything.

        Under ``Registry.write``: the case check and the quota are decided and acted on
        with no other write in between."""
        with blobs.writing():
            check()
            registry.check_quota(len(data), fresh=True)
            if by_digest:
                registry.models.tags.write_by_digest(ref, digest, data)
                registry.stored(len(data))
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
                        replaced = str(Digest.of(old))
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
            registry.stored(len(data))
            return replaced

    replaced = await registry.write(save)
    headers = {
        "Location": absolute_url(request, f"/v2/{name}/manifests/{digest}"),
        "Docker-Content-Digest": str(digest),
    }
    if parsed.subject is not None:
        headers["OCI-Subject"] = str(parsed.subject.digest)
    if replaced:
        said = f"{name}:{tag} replaced {ref} in the store (it was {replaced})"
        level = {"level": "warning", "message": said}
        warn.warning("%s", json.dumps(level) if registry.options.json_logs else said)
        headers["Warning"] = f'299 cairn "{said}"'
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name, reference = request.match_info["name"], request.match_info["reference"]

    if registry.options.protect_upstream and _mapped(name):
        raise OCIError(
            "DENIED",
            f"{name} is {registry.reference(name)} in this store; --protect-upstream"
            " refuses to delete through a name mapped onto it",
        )

    def remove() -> bool:
        if not is_digest(reference):
            if not is_tag(reference):
                return False
            return registry.models.tags.delete(registry.reference(name, reference))
        ref = registry.reference(name)
        digest = parse_digest(reference)
        removed = registry.models.tags.delete_by_digest(ref, digest)
        for tagged in list(registry.models.tags.tags_of(ref)):
            try:
                data = tagged.path.read_bytes()
            except FileNotFoundError:  # removed meanwhile (by `cairn rm`, say)
                continue
            if Digest.of(data, digest.algorithm) == digest:
                removed = registry.models.tags.delete(tagged.reference) or removed
        return removed

    if not await registry.write(remove):
        raise OCIError("MANIFEST_UNKNOWN", f"manifest {name}:{reference} is unknown")
    registry.forget_usage()
    return web.Response(status=202)


async def list_tags(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    ref = registry.reference(name)
    every = await asyncio.to_thread(registry.tags, ref)
    if not every:
        raise OCIError("NAME_UNKNOWN", f"repository {name} is unknown")
    tags, headers = page(
        list(every),
        request.query,
        lambda last, n: f"/v2/{name}/tags/list?n={n}&last={quote(last)}",
        lambda n: OCIError("UNSUPPORTED", "n must be a number", status=400),
    )
    return web.json_response({"name": name, "tags": tags}, headers=headers)


async def referrers(request: web.Request) -> web.StreamResponse:
    registry: Registry = request.app["registry"]
    name = request.match_info["name"]
    subject = str(parse_digest(request.match_info["digest"]))
    wanted = request.query.get("artifactType")
    ref = registry.reference(name)
    stored = await asyncio.to_thread(lambda: list(registry.stored_manifests(ref)))
    entries: list[dict[str, Any]] = []
    for digest, data in stored:
        try:
            parsed = parse_manifest(data)
        except ManifestError:
            continue
        if parsed.subject is None or str(parsed.subject.digest) != subject:
            continue
        artifact_type = parsed.artifact_type or (
            parsed.config.media_type if isinstance(parsed, Manifest) else None
        )
        if wanted and artifact_type != wanted:
            continue
        entry: dict[str, Any] = {
            "mediaType": parsed.content_type,
            "digest": str(digest),  # as it can be fetched: sha512 if pushed so
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
