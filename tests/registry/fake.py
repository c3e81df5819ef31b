"""A scripted registry for httpx.MockTransport: the failures a real one won't produce on demand."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from cairn.manifests import mediatypes as mt

Hook = Callable[[httpx.Request], httpx.Response | None]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DroppingStream(httpx.AsyncByteStream):
    """A body that sends ``limit`` bytes, then fails like a dropped connection."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data = data
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, self.limit, 1 << 16):
            yield self.data[start : min(self.limit, start + (1 << 16))]
        raise httpx.ReadError("connection reset by peer")


@dataclass
class FakeRegistry:
    host: str = "registry.test"
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)
    ignore_range: bool = False
    bytes_served: int = 0

    def add_model(self, repository: str, tag: str, layers: list[bytes]) -> bytes:
        config = json.dumps({"model_format": "gguf", "model_family": "test"}).encode()
        self.blobs[digest(config)] = config
        entries = []
        for data in layers:
            self.blobs[digest(data)] = data
            entries.append(
                {"mediaType": mt.OLLAMA_MODEL, "digest": digest(data), "size": len(data)}
            )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.DOCKER_MANIFEST,
                "config": {
                    "mediaType": mt.DOCKER_CONFIG,
                    "digest": digest(config),
                    "size": len(config),
                },
                "layers": entries,
            }
        ).encode()
        self.manifests[(repository, tag)] = (manifest, mt.DOCKER_MANIFEST)
        self.manifests[(repository, digest(manifest))] = (manifest, mt.DOCKER_MANIFEST)
        return manifest

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for r in self.requests if r.method == method and fragment in str(r.url))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for hook in self.hooks:
            answer = hook(request)
            if answer is not None:
                return answer
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200)
        if "/manifests/" in path:
            repository, _, reference = path[len("/v2/") :].partition("/manifests/")
            found = self.manifests.get((repository, reference))
            if found is None:
                return httpx.Response(
                    404,
                    json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                )
            body, content_type = found
            headers = {"Content-Type": content_type, "Docker-Content-Digest": digest(body)}
            return httpx.Response(
                200, content=body if request.method == "GET" else b"", headers=headers
            )
        if "/blobs/" in path:
            blob_digest = path.rpartition("/")[2]
            data = self.blobs.get(blob_digest)
            if data is None:
                return httpx.Response(
                    404, json={"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}
                )
            if request.method == "HEAD":
                return httpx.Response(200, headers={"Content-Length": str(len(data))})
            wanted = request.headers.get("Range")
            if wanted and not self.ignore_range:
                first, _, last = wanted.removeprefix("bytes=").partition("-")
                start, end = int(first), int(last) + 1 if last else len(data)
                part = data[start:end]
                self.bytes_served += len(part)
                return httpx.Response(
                    206,
                    content=part,
                    headers={"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"},
                )
            self.bytes_served += len(data)
            return httpx.Response(200, content=data)
        return httpx.Response(404)
