"""Ollama's own registry client against ``cairn registry serve``, replayed request by request.

Ollama cannot run here (not on PyPI or Debian, no network), so these tests
make the requests its pull and push make, in their order, with their
headers, as written in Ollama's source (github.com/ollama/ollama):

- pull, ``server/download.go`` (commit 01ca4ec3): ``Prepare`` HEADs the
  blob for its size and cuts it into parts (``total / 16``, at least 100 MB,
  at most 1 GB); ``run`` GETs the blob with no Range, following redirects
  on the same host only, and takes ``resp.Location()`` on 302/307 or the
  request's own URL on 200; releases before ollama#7244 was fixed took
  ``resp.Location()`` on every answer, and failed without a ``Location``;
  ``downloadChunk`` GETs each part from that URL with ``Range:
  bytes=a-b`` through ``http.DefaultClient``: no Authorization.
- push, ``server/upload.go`` (commit 084d8466): ``uploadBlob`` HEADs the
  blob; ``Prepare`` POSTs ``blobs/uploads/`` and parses the
  ``Docker-Upload-Location`` or ``Location`` as it is (``url.Parse``: a
  relative one has no host to send the PATCH to); each part is a PATCH with
  ``X-Redirect-Uploads: 1`` and ``Content-Range: a-b`` (no ``bytes``
  prefix), to the Location the previous answer gave; the commit is a PUT
  with ``?digest=...&etag=<md5 of the parts' md5s>-<parts>`` and an empty
  body. The manifest is PUT as Docker schema 2.

Part sizes here are the file's rule scaled down (a 100 MB minimum would
make every test blob one part); the sequence is unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import bcrypt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import cairn_json, server_log, serving, start_cairn_registry, stop

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Ollama:
    """Ollama's ``makeRequestWithRetry`` (server/images.go) and, with a key, its login
    (server/auth.go, auth/auth.go at commit fb307609): on a 401 it reads the Bearer
    challenge's realm, service and scope, refuses a realm on another host, GETs the realm
    with ``service``, ``scope``, ``ts`` and a random ``nonce`` (Go's ``Values.Encode``:
    keys sorted, query-escaped) and ``Authorization: <key>:<signature>`` over
    ``GET,<url>,<base64 of the hex sha256 of nothing>``, then sends ``Bearer <token>``
    and tries once more."""

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self.key = key
        self.token = ""
        self.logins = 0

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for _ in range(2):
            headers = dict(kwargs.pop("headers", None) or {})
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            answer = httpx.request(method, url, headers=headers, **kwargs)
            kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
            if answer.status_code != 401 or self.key is None:
                return answer
            self.token = self.login(answer.headers["WWW-Authenticate"], urlsplit(url).netloc)
        return answer

    def login(self, challenge: str, host: str) -> str:
        def value(key: str) -> str:  # images.go getValue
            found = re.search(key + r'="([^"]*)"', challenge)
            return found.group(1) if found else ""

        realm = urlsplit(value("realm"))
        assert challenge.startswith("Bearer ") and realm.netloc == host, challenge
        query = {"service": [value("service")], "scope": value("scope").split(" ")}
        query["ts"] = [str(int(time.time()))]
        query["nonce"] = [base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")]
        encoded = urlencode([(k, v) for k in sorted(query) for v in query[k]])
        url = f"{realm.scheme}://{realm.netloc}{realm.path}?{encoded}"
        assert self.key is not None
        answer = httpx.get(url, headers={"Authorization": ollama_signature(self.key, url)})
        assert answer.status_code == 200, answer.text
        self.logins += 1
        token: str = answer.json()["token"]
        return token


def ollama_public_key(key: Ed25519PrivateKey) -> str:
    """The SSH wire form of the key, base64: what ``ssh.MarshalAuthorizedKey`` writes."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    wire = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + raw
    return base64.b64encode(wire).decode()


def ollama_signature(key: Ed25519PrivateKey, url: str) -> str:
    empty = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    signed = key.sign(f"GET,{url},{empty}".encode())
    return f"{ollama_public_key(key)}:{base64.b64encode(signed).decode()}"


def parts(total: int, count: int = 16, smallest: int = 64 * 1024) -> list[tuple[int, int]]:
    """(offset, size) of each part: download.go's and upload.go's rule, scaled down."""
    size = max(total // count, smallest)
    cut = []
    offset = 0
    while offset < total:
        cut.append((offset, min(size, total - offset)))
        offset += size
    return cut


def ollama_push_blob(base: str, repository: str, data: bytes, ollama: Ollama | None = None) -> None:
    digest = sha(data)
    ollama = ollama or Ollama()
    assert ollama.request("HEAD", f"{base}/v2/{repository}/blobs/{digest}").status_code == 404
    started = ollama.request("POST", f"{base}/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers.get("Docker-Upload-Location") or started.headers["Location"]
    next_url = urlsplit(location)
    assert next_url.scheme == "http" and next_url.netloc, location  # Ollama can't resolve it
    md5s = hashlib.md5()
    cut = parts(len(data))
    for offset, size in cut:
        body = data[offset : offset + size]
        answer = ollama.request(
            "PATCH",
            location,
            content=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "X-Redirect-Uploads": "1",
                "Content-Range": f"{offset}-{offset + size - 1}",
            },
        )
        assert answer.status_code == 202, answer.text
        location = answer.headers.get("Docker-Upload-Location") or answer.headers["Location"]
        assert urlsplit(location).netloc, location
        md5s.update(hashlib.md5(body).digest())
    done = ollama.request(
        "PUT",
        location,
        params={"digest": digest, "etag": f"{md5s.hexdigest()}-{len(cut)}"},
        headers={"Content-Type": "application/octet-stream", "Content-Length": "0"},
    )
    assert done.status_code == 201, done.text


def ollama_pull_blob(
    base: str, repository: str, digest: str, old_client: bool, ollama: Ollama | None = None
) -> bytes:
    request_url = f"{base}/v2/{repository}/blobs/{digest}"
    ollama = ollama or Ollama()
    total = int(ollama.request("HEAD", request_url).headers["Content-Length"])
    # The unranged GET, same-host redirects followed; Ollama closes the body unread.
    first = ollama.request("GET", request_url, follow_redirects=True)
    assert first.status_code in (200, 302, 307)
    if old_client or first.status_code != 200:
        assert "Location" in first.headers, "resp.Location(): http: no Location header"
        direct = urljoin(str(first.url), first.headers["Location"])
    else:
        direct = request_url
    data = bytearray(total)
    for offset, size in parts(total):
        # http.DefaultClient: no Authorization, no redirect rules of the registry's.
        piece = httpx.get(direct, headers={"Range": f"bytes={offset}-{offset + size - 1}"})
        assert piece.status_code == 206, piece.status_code
        data[offset : offset + size] = piece.content[:size]
    assert sha(bytes(data)) == digest
    return bytes(data)


def test_ollama_push_then_pull_through_cairn_registry_serve(tmp_path: Path) -> None:
    root = tmp_path / "served"
    weights = bytes(range(256)) * 4000  # 1 MB: 16 parts
    config = json.dumps({"model_format": "gguf", "model_family": "test"}).encode()
    with serving(root) as host:
        base = f"http://{host}"
        repository = "me/replayed"
        for blob in (weights, config):
            ollama_push_blob(base, repository, blob)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": SCHEMA2,
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": sha(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": sha(weights),
                        "size": len(weights),
                    }
                ],
            },
            separators=(",", ":"),
        ).encode()
        put = httpx.put(
            f"{base}/v2/{repository}/manifests/v1",
            content=manifest,
            headers={"Content-Type": SCHEMA2},
        )
        assert put.status_code == 201, put.text

        pulled = httpx.get(f"{base}/v2/{repository}/manifests/v1", headers={"Accept": SCHEMA2})
        assert pulled.status_code == 200 and pulled.content == manifest
        for old_client in (True, False):
            assert ollama_pull_blob(base, repository, sha(weights), old_client) == weights
            assert ollama_pull_blob(base, repository, sha(config), old_client) == config

    # What Ollama pushed is a model in the store's Ollama layout.
    stored = root / "manifests" / "registry.ollama.ai" / "me" / "replayed" / "v1"
    assert stored.read_bytes() == manifest
    listed = cairn_json(root, "list", "--json")
    assert [m["name"] for m in listed["models"]] == ["me/replayed:v1"]


def test_every_location_is_absolute(tmp_path: Path) -> None:
    data = b"mounted and single-request"
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as c:
        single = c.post("/v2/a/b/blobs/uploads/", params={"digest": sha(data)}, content=data)
        mounted = c.post("/v2/c/d/blobs/uploads/", params={"mount": sha(data), "from": "a/b"})
        got = c.get(f"/v2/a/b/blobs/{sha(data)}")
        head = c.head(f"/v2/a/b/blobs/{sha(data)}")
    for answer in (single, mounted, got, head):
        assert answer.headers["Location"].startswith(f"http://{host}/v2/"), answer.headers
    assert got.headers["Location"] == f"http://{host}/v2/a/b/blobs/{sha(data)}"


def test_a_push_that_replaces_a_pulled_model_says_so(tmp_path: Path) -> None:
    """``HOST/library/gemma3`` maps onto the store's registry.ollama.ai/library/gemma3."""
    root = tmp_path / "served"
    pulled = b'{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"%s","size":2},"layers":[]}'
    config = b"{}"
    stored = root / "manifests" / "registry.ollama.ai" / "library" / "gemma3" / "270m"
    stored.parent.mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "blobs" / sha(config).replace(":", "-")).write_bytes(config)
    original = pulled % sha(config).encode()
    stored.write_bytes(original)
    other = original.replace(b'"layers":[]', b'"layers":[],"annotations":{"a":"b"}')

    def put(base: str, name: str, body: bytes) -> httpx.Response:
        return httpx.put(
            f"{base}/v2/{name}/manifests/270m",
            content=body,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )

    host, proc = start_cairn_registry(root, "--protect-upstream")
    try:
        refused = put(f"http://{host}", "library/gemma3", other)
        same = put(f"http://{host}", "library/gemma3", original)
    finally:
        stop(proc)
    assert refused.status_code == 403 and refused.json()["errors"][0]["code"] == "DENIED"
    assert "--protect-upstream refuses to replace it" in refused.text
    host, proc = start_cairn_registry(root, "--protect-upstream")
    try:  # nor by deleting it first, by tag or by digest
        by_tag = httpx.delete(f"http://{host}/v2/library/gemma3/manifests/270m")
        by_digest = httpx.delete(f"http://{host}/v2/library/gemma3/manifests/{sha(original)}")
    finally:
        stop(proc)
    assert by_tag.status_code == 403 and by_digest.status_code == 403
    assert same.status_code == 201 and "Warning" not in same.headers  # nothing replaced
    assert stored.read_bytes() == original

    host, proc = start_cairn_registry(root)
    try:
        replaced = put(f"http://{host}", "library/gemma3", other)
        explicit = put(f"http://{host}", "registry.ollama.ai/library/gemma3", original)
    finally:
        stop(proc)
    said = "library/gemma3:270m replaced registry.ollama.ai/library/gemma3:270m in the store"
    assert replaced.status_code == 201
    assert replaced.headers["Warning"].startswith(f'299 cairn "{said} (it was {sha(original)})')
    assert said in server_log(proc)
    # Named in full, the store's own name: an ordinary replacement, not reported.
    assert explicit.status_code == 201 and "Warning" not in explicit.headers
    assert stored.read_bytes() == original


def test_ollama_logs_in_with_its_key_against_htpasswd(tmp_path: Path) -> None:
    """``--ollama-keys``: Ollama's own login (a signed token request to a realm on the same
    host) works beside ``--htpasswd``; its ranged parts, sent with no credentials, are
    let through by the grant in the unranged GET's Location (download.go takes
    ``resp.Location()`` on every 200 at fb307609)."""
    key = Ed25519PrivateKey.generate()
    stranger = Ed25519PrivateKey.generate()
    keys = tmp_path / "ollama-keys"
    keys.write_text(f"# the lab's machines\nssh-ed25519 {ollama_public_key(key)} lab@gpu1\n")
    users = tmp_path / "htpasswd"
    users.write_text(f"carol:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    weights = os.urandom(700_000)
    with serving(tmp_path / "served", "--htpasswd", str(users), "--ollama-keys", str(keys)) as host:
        base = f"http://{host}"
        refused = httpx.head(f"{base}/v2/lab/m/blobs/{sha(weights)}")
        assert refused.status_code == 401
        challenge = refused.headers["WWW-Authenticate"]
        assert challenge.startswith(f'Bearer realm="{base}/token",service="cairn"')
        assert 'scope="repository:lab/m:pull"' in challenge

        ollama = Ollama(key)
        ollama_push_blob(base, "lab/m", weights, ollama)
        assert ollama.logins == 1
        assert ollama_pull_blob(base, "lab/m", sha(weights), True, ollama) == weights
        # The grant opens that blob of that repository, nothing else.
        located = ollama.request("GET", f"{base}/v2/lab/m/blobs/{sha(weights)}").headers
        grant = urlsplit(located["Location"]).query
        assert grant.startswith("grant=")
        assert httpx.get(f"{base}/v2/lab/m/manifests/x?{grant}").status_code == 401
        assert httpx.get(f"{base}/v2/lab/m/blobs/{sha(b'x')}?{grant}").status_code == 401
        assert httpx.get(f"{base}/v2/lab/m/blobs/{sha(weights)}?grant=1.ab").status_code == 401
        forged = grant.replace("grant=", "grant=9").replace(".", ".0", 1)
        assert httpx.get(f"{base}/v2/lab/m/blobs/{sha(weights)}?{forged}").status_code == 401

        # A key not listed, a replayed request, a stale one: no token.
        with pytest.raises(AssertionError):
            Ollama(stranger).request("HEAD", f"{base}/v2/lab/m/blobs/{sha(weights)}")
        query = urlencode(
            {"nonce": "n1", "scope": "repository:lab/m:pull", "service": "cairn", "ts": ""}
        )
        for ts, times in ((str(int(time.time())), 2), (str(int(time.time()) - 3600), 1)):
            url = f"{base}/token?{query}{ts}".replace("nonce=n1", f"nonce=n{ts}")
            signed = {"Authorization": ollama_signature(key, url)}
            answers = [httpx.get(url, headers=signed).status_code for _ in range(times)]
            assert answers == ([200, 401] if times == 2 else [401])
        # The token flow of docker, skopeo and cairn: Basic credentials at the realm.
        basic = httpx.get(f"{base}/token", auth=("carol", "pw"))
        assert basic.status_code == 200
        bearer = {"Authorization": f"Bearer {basic.json()['token']}"}
        assert httpx.head(f"{base}/v2/lab/m/blobs/{sha(weights)}", headers=bearer).is_success
        assert httpx.get(f"{base}/token", auth=("carol", "wrong")).status_code == 401
        assert httpx.head(f"{base}/v2/lab/m/blobs/{sha(weights)}", auth=("carol", "pw")).is_success


def test_a_login_made_for_another_registry_is_refused(tmp_path: Path) -> None:
    """Found by attack: Ollama signs its token request for whichever registry it talks to;
    a registry it logs in to could relay that request here with its own Host. Only this
    server's own origins (--public-url, or its address) are taken. And a grant gives no
    grant, reveals nothing before credentials, and a bad one is a 401, never a 500."""
    key = Ed25519PrivateKey.generate()
    keys = tmp_path / "ollama-keys"
    keys.write_text(f"ssh-ed25519 {ollama_public_key(key)} lab@gpu1\n")
    layer = b"the lab's weights"
    with serving(tmp_path / "served", "--ollama-keys", str(keys)) as host:
        base = f"http://{host}"
        query = urlencode(
            {"nonce": "relayed", "scope": "repository:x/y:pull", "service": "evil", "ts": ""}
        )
        now = int(time.time())
        signature = ollama_signature(key, f"http://evil.example/token?{query}{now}")
        relayed = httpx.get(
            f"{base}/token?{query}{now}",
            headers={"Host": "evil.example", "Authorization": signature},
        )
        assert relayed.status_code == 401
        quoted = httpx.get(f"{base}/v2/", headers={"Host": 'evil",x="y'})
        assert quoted.status_code == 400  # echoed nowhere

        ollama = Ollama(key)
        ollama_push_blob(base, "lab/m", layer, ollama)
        blob = f"{base}/v2/lab/m/blobs/{sha(layer)}"
        located = ollama.request("GET", blob).headers["Location"]
        grant = urlsplit(located).query
        again = httpx.get(f"{blob}?{grant}")
        assert again.content == layer and "grant=" not in again.headers["Location"]
        assert "grant=" not in ollama.request("HEAD", blob).headers["Location"]
        future = str(int(time.time()) + 60)
        for bad in (f"{future}.%C3%A9", f"{future}.{'Z' * 64}", "", "."):
            assert httpx.get(f"{blob}?grant={bad}").status_code == 401
        # before credentials, every host answers alike: nothing about the store is told
        for name in ("ghcr.io/a/b", "registry.ollama.ai/lab/m", ("h" * 300) + ".io/a/b"):
            assert httpx.get(f"{base}/v2/{name}/blobs/{sha(layer)}?grant=1.x").status_code == 401
        long_host = ollama.request("GET", f"{base}/v2/{'h' * 300}.io/a/b/blobs/{sha(layer)}")
        assert long_host.status_code == 404  # not a 500
