"""Failures a real registry won't produce on demand, through a scripted httpx transport."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cairn.errors import (
    AuthenticationError,
    DigestMismatchError,
    ManifestError,
    RemoteNotFoundError,
    TransferError,
)
from cairn.manifests import mediatypes as mt
from cairn.manifests.models import Models
from cairn.manifests.reference import parse_reference
from cairn.registry import fetch
from cairn.registry.auth import Credentials, parse_challenges
from cairn.registry.client import RegistryClient, RetryPolicy
from cairn.registry.pull import pull
from tests.registry.fake import DroppingStream, FakeRegistry, digest

FAST = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)


def run_pull(
    registry: FakeRegistry,
    store: Path,
    name: str = "registry.test/lab/model:1",
    credentials: Credentials | None = None,
    retry: RetryPolicy = FAST,
) -> Models:
    models = Models(store)

    async def go() -> None:
        async with RegistryClient(
            registry.host, transport=registry.transport(), retry=retry, credentials=credentials
        ) as client:
            await pull(models, parse_reference(name), client)

    asyncio.run(go())
    return models


def stored_blobs(store: Path) -> list[str]:
    blobs = store / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []


def test_pull_through_the_httpx_path(store: Path) -> None:
    registry = FakeRegistry()
    weights = os.urandom(300_000)
    registry.add_model("lab/model", "1", [weights])
    models = run_pull(registry, store)
    model = models.get("registry.test/lab/model:1")
    assert models.blobs.path(model.manifest.layers[0].digest).read_bytes() == weights


def test_wrong_blob_bytes_store_nothing(store: Path) -> None:
    registry = FakeRegistry()
    registry.add_model("lab/model", "1", [b"the real weights" * 1000])
    bad = digest(b"the real weights" * 1000)
    registry.blobs[bad] = b"tampered weights" * 1000
    with pytest.raises(DigestMismatchError) as caught:
        run_pull(registry, store)
    assert bad in str(caught.value)
    assert f"sha256-{bad[7:]}" not in stored_blobs(store)
    assert not (store / "manifests").exists()
    assert not list((store / ".cairn" / "tmp").glob(f"{bad[7:]}*"))


def test_dropped_connection_resumes(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "PARALLEL_THRESHOLD", 1 << 40)  # one stream, so the drop is clear
    registry = FakeRegistry()
    weights = os.urandom(4 << 20)
    registry.add_model("lab/model", "1", [weights])
    dropped: list[bool] = []

    def drop_first(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and digest(weights) in str(request.url) and not dropped:
            dropped.append(True)
            return httpx.Response(200, stream=DroppingStream(weights, 3 << 20))
        return None

    registry.hooks.append(drop_first)
    run_pull(registry, store)
    assert f"sha256-{digest(weights)[7:]}" in stored_blobs(store)
    # The retry asked only for the rest: bytes sent in all stay close to the blob's size.
    resumed = [r for r in registry.requests if r.headers.get("Range")]
    assert resumed and resumed[0].headers["Range"] == f"bytes={3 << 20}-{len(weights) - 1}"
    assert registry.bytes_served + (3 << 20) <= len(weights) * 1.05 + (3 << 20)


def test_server_that_ignores_range(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "PARALLEL_THRESHOLD", 1 << 20)
    monkeypatch.setattr(fetch, "START_PARTS", 4)  # ask for ranges from the start
    registry = FakeRegistry(ignore_range=True)
    weights = os.urandom(3 << 20)
    registry.add_model("lab/model", "1", [weights])
    models = run_pull(registry, store)
    assert models.blobs.verify(models.get("registry.test/lab/model:1").manifest.layers[0].digest)


def test_5xx_then_success(store: Path) -> None:
    registry = FakeRegistry()
    registry.add_model("lab/model", "1", [b"w" * 1000])
    failures = iter([503, 500, 502])

    def flaky(request: httpx.Request) -> httpx.Response | None:
        status = next(failures, None)
        return httpx.Response(status) if status else None

    registry.hooks.append(flaky)
    run_pull(registry, store)
    assert registry.count("GET", "/manifests/1") == 4  # three failures, then the answer


def test_5xx_storm_gives_up_with_a_clear_error(store: Path) -> None:
    registry = FakeRegistry()
    registry.add_model("lab/model", "1", [b"w"])
    registry.hooks.append(lambda request: httpx.Response(503))
    with pytest.raises(Exception) as caught:
        run_pull(registry, store)
    assert "HTTP 503" in str(caught.value)


def test_429_honours_retry_after(store: Path) -> None:
    registry = FakeRegistry()
    registry.add_model("lab/model", "1", [b"w" * 10])
    limited: list[float] = []

    def rate_limit(request: httpx.Request) -> httpx.Response | None:
        if "/manifests/" in request.url.path and not limited:
            limited.append(time.monotonic())
            return httpx.Response(429, headers={"Retry-After": "1"})
        return None

    registry.hooks.append(rate_limit)
    started = time.monotonic()
    run_pull(registry, store)
    assert time.monotonic() - started >= 1.0


def token_registry(registry: FakeRegistry, issued: list[str]) -> None:
    """Bearer auth: a token from https://registry.test/token; only the newest one is valid."""

    def guard(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/token":
            token = f"token-{len(issued)}"
            issued.append(token)
            assert request.url.params["service"] == "registry.test"
            return httpx.Response(200, json={"token": token})
        if request.url.host != registry.host:
            return None
        if request.headers.get("Authorization") != f"Bearer {issued[-1] if issued else ''}":
            challenge = 'Bearer realm="https://registry.test/token",service="registry.test",scope="repository:lab/model:pull"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return None

    registry.hooks.insert(0, guard)


def test_bearer_token_and_refresh_after_expiry(store: Path) -> None:
    registry = FakeRegistry()
    registry.add_model("lab/model", "1", [os.urandom(1000), os.urandom(1000)])
    issued: list[str] = []
    token_registry(registry, issued)
    served: list[bool] = []

    def expire_after_manifest(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" in request.url.path and not served:
            served.append(True)
            issued.append("rotated-by-server")  # the token the client holds is now stale
        return None

    registry.hooks.insert(0, expire_after_manifest)
    run_pull(registry, store)
    assert len([t for t in issued if t.startswith("token-")]) == 2


def test_redirect_to_storage_drops_authorization(store: Path) -> None:
    registry = FakeRegistry()
    weights = os.urandom(5000)
    registry.add_model("lab/model", "1", [weights])
    issued: list[str] = []
    token_registry(registry, issued)
    seen_at_storage: list[httpx.Request] = []

    def storage(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "storage.test":
            seen_at_storage.append(request)
            return httpx.Response(200, content=weights)
        if (
            "/blobs/" in request.url.path
            and digest(weights) in request.url.path
            and request.method == "GET"
            and request.headers.get("Authorization")
        ):
            return httpx.Response(307, headers={"Location": "https://storage.test/signed?sig=x"})
        return None

    registry.hooks.append(storage)
    run_pull(registry, store)
    assert seen_at_storage
    assert all("Authorization" not in r.headers for r in seen_at_storage)


def test_token_realm_on_another_site_is_refused(store: Path) -> None:
    registry = FakeRegistry()
    registry.add_model("lab/model", "1", [b"w"])
    registry.hooks.append(
        lambda r: httpx.Response(
            401,
            headers={"WWW-Authenticate": 'Bearer realm="https://evil.example/token",service="x"'},
        )
    )
    with pytest.raises(AuthenticationError, match=r"evil\.example"):
        run_pull(registry, store)


def test_basic_challenge_without_credentials(store: Path) -> None:
    registry = FakeRegistry()
    registry.add_model("lab/model", "1", [b"w"])
    registry.hooks.append(
        lambda r: (
            None
            if r.headers.get("Authorization") == Credentials("u", "p").basic()
            else httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="Harbor"'})
        )
    )
    with pytest.raises(AuthenticationError, match=r"cairn login registry\.test"):
        run_pull(registry, store)
    run_pull(registry, store, credentials=Credentials("u", "p"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{" + b" " * (4 << 20) + b"}", "limit"),
        (b"<html>not json</html>", "not valid JSON"),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.DOCKER_MANIFEST,
                    "config": {"mediaType": mt.DOCKER_CONFIG, "digest": "sha256:zz", "size": 1},
                    "layers": [],
                }
            ).encode(),
            "digest",
        ),
    ],
)
def test_bad_manifests_are_refused(store: Path, body: bytes, message: str) -> None:
    registry = FakeRegistry()
    registry.manifests[("lab/model", "1")] = (body, mt.DOCKER_MANIFEST)
    with pytest.raises(ManifestError, match=message):
        run_pull(registry, store)
    assert not (store / "manifests").exists()


def test_manifest_whose_digest_header_lies(store: Path) -> None:
    registry = FakeRegistry()
    registry.add_model("lab/model", "1", [b"w"])

    def lying(request: httpx.Request) -> httpx.Response | None:
        if "/manifests/" in request.url.path:
            body, kind = registry.manifests[("lab/model", "1")]
            return httpx.Response(
                200,
                content=body,
                headers={"Content-Type": kind, "Docker-Content-Digest": digest(b"other")},
            )
        return None

    registry.hooks.append(lying)
    with pytest.raises(DigestMismatchError, match="manifest"):
        run_pull(registry, store)


def test_pull_by_digest_checks_it(store: Path) -> None:
    registry = FakeRegistry()
    manifest = registry.add_model("lab/model", "1", [b"w"])
    models = run_pull(registry, store, f"registry.test/lab/model@{digest(manifest)}")
    [model] = models.catalog()[0]
    assert model.manifest.to_bytes() == manifest
    wrong = "sha256:" + "0" * 64
    registry.manifests[("lab/model", wrong)] = (manifest, mt.DOCKER_MANIFEST)
    with pytest.raises(DigestMismatchError):
        run_pull(registry, store, f"registry.test/lab/model@{wrong}")


def test_missing_model(store: Path) -> None:
    with pytest.raises(RemoteNotFoundError, match="MANIFEST_UNKNOWN"):
        run_pull(FakeRegistry(), store)


def test_connection_refused_is_a_transfer_error(store: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    models = Models(store)

    async def go() -> None:
        async with RegistryClient(
            "registry.test", transport=httpx.MockTransport(refuse), retry=FAST
        ) as client:
            await pull(models, parse_reference("registry.test/lab/model:1"), client)

    with pytest.raises(TransferError, match="connection refused"):
        asyncio.run(go())


def test_index_resolves_to_the_model(store: Path) -> None:
    registry = FakeRegistry()
    manifest = registry.add_model("lab/model", "inner", [b"weights"])
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {"mediaType": mt.DOCKER_MANIFEST, "digest": digest(manifest), "size": len(manifest)}
            ],
        }
    ).encode()
    registry.manifests[("lab/model", "1")] = (index, mt.OCI_INDEX)
    models = run_pull(registry, store)
    assert models.get("registry.test/lab/model:1").manifest.to_bytes() == manifest


def test_challenge_parsing() -> None:
    [bearer] = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/x:pull,push"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/x:pull,push",
    }
    basic, other = parse_challenges('Basic realm="Harbor", Bearer realm="https://h/service/token"')
    assert basic.scheme == "basic" and basic.params["realm"] == "Harbor"
    assert other.params["realm"] == "https://h/service/token"


def test_credentials_never_show_their_secret() -> None:
    credentials = Credentials("alice", "hunter2")
    assert "hunter2" not in repr(credentials)


class SlowStream(httpx.AsyncByteStream):
    """A body that trickles out, as over a long, thin link."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 1 << 16):
            await asyncio.sleep(0.002)
            yield self.data[start : start + (1 << 16)]


def test_a_slow_stream_is_split_into_parallel_ranges(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "PARALLEL_THRESHOLD", 1 << 20)
    monkeypatch.setattr(fetch, "STEAL_AT_LEAST", 2 << 20)
    registry = FakeRegistry()
    weights = os.urandom(24 << 20)
    registry.add_model("lab/model", "1", [weights])

    def slow(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and digest(weights) in str(request.url):
            wanted = request.headers.get("Range")
            if wanted is None:
                return httpx.Response(200, stream=SlowStream(weights))
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            part = weights[int(first) : int(last) + 1]
            headers = {"Content-Range": f"bytes {first}-{last}/{len(weights)}"}
            return httpx.Response(206, stream=SlowStream(part), headers=headers)
        return None

    registry.hooks.append(slow)
    models = run_pull(registry, store)
    ranged = [r for r in registry.requests if r.headers.get("Range")]
    # The first stream kept a share; streams that joined it asked for ranges of what was
    # left, each its own (no byte was asked for twice).
    assert len(ranged) >= 2
    starts = [int(r.headers["Range"].removeprefix("bytes=").partition("-")[0]) for r in ranged]
    assert len(set(starts)) == len(starts)
    layer = models.get("registry.test/lab/model:1").manifest.layers[0]
    assert models.blobs.path(layer.digest).read_bytes() == weights


def test_ollama_signed_token_request(store: Path, tmp_path: Path) -> None:
    """registry.ollama.ai's flow: the token request to ollama.com is signed with ed25519."""
    import base64
    import hashlib
    import struct

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cairn.registry.ollama_auth import OllamaKey

    registry = FakeRegistry(host="registry.ollama.ai")
    registry.add_model("library/model", "1", [b"weights"])
    verified: list[str] = []

    def ollama(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "ollama.com":
            public, _, signature = request.headers["Authorization"].partition(":")
            blob = base64.b64decode(public)
            (n,) = struct.unpack(">I", blob[:4])
            assert blob[4 : 4 + n] == b"ssh-ed25519"
            raw = blob[8 + n :]
            body_hash = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
            key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
            seen = str(request.url)
            candidates = {seen, seen.replace("https://ollama.com/", "https://ollama.com:443/")}
            for url in candidates:
                try:
                    key.verify(base64.b64decode(signature), f"GET,{url},{body_hash}".encode())
                except Exception:
                    continue
                verified.append(url)
            assert verified, "the signature does not match the request"
            for field in ("ts", "nonce", "scope", "service"):
                assert request.url.params.get(field)
            return httpx.Response(200, json={"token": "signed-token"})
        if request.headers.get("Authorization") != "Bearer signed-token":
            challenge = (
                'Bearer realm="https://ollama.com:443/token",service="ollama.com",'
                'scope="repository:library/model:pull"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return None

    registry.hooks.append(ollama)
    key = OllamaKey(tmp_path / "home" / "id_ed25519")
    models = Models(store)

    async def go() -> None:
        async with RegistryClient(
            "registry.ollama.ai", transport=registry.transport(), retry=FAST, ollama_key=key
        ) as client:
            await pull(models, parse_reference("model:1"), client)

    asyncio.run(go())
    assert verified
    assert (tmp_path / "home" / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "home" / "id_ed25519.pub").read_text().startswith("ssh-ed25519 ")
    assert models.get("model:1").manifest.layers
