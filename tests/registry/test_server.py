"""``cairn registry serve``: the spec's endpoints and error codes, and real clients."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import Runner, server_log, serving, start_cairn_registry, stop
from tests.ggufmaker import write_gguf

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload(client: httpx.Client, repo: str, data: bytes) -> str:
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(data)}, content=data)
    assert response.status_code == 201, response.text
    return sha(data)


def artifact(
    client: httpx.Client,
    repo: str,
    layer: bytes,
    subject: str | None = None,
    artifact_type: str = "application/vnd.test",
) -> bytes:
    config = b"{}"
    upload(client, repo, config)
    upload(client, repo, layer)
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha(config),
            "size": 2,
        },
        "layers": [
            {"mediaType": "application/octet-stream", "digest": sha(layer), "size": len(layer)}
        ],
    }
    if subject:
        body["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
    return json.dumps(body).encode()


@pytest.fixture
def http(cairn_registry: tuple[str, Path]) -> httpx.Client:
    host, _ = cairn_registry
    return httpx.Client(base_url=f"http://{host}", timeout=30)


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["errors"][0]["code"]
    return code


def test_base(http: httpx.Client) -> None:
    response = http.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_monolithic_and_chunked_uploads_and_blob_reads(http: httpx.Client) -> None:
    data = os.urandom(300_000)
    digest = upload(http, "lab/model", data)
    head = http.head(f"/v2/lab/model/blobs/{digest}")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest
    assert http.get(f"/v2/lab/model/blobs/{digest}").content == data
    ranged = http.get(f"/v2/lab/model/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == data[100:200]

    other = os.urandom(250_000)
    start = http.post("/v2/lab/model/blobs/uploads/")
    assert start.status_code == 202
    location = start.headers["Location"]
    first = http.patch(
        location,
        content=other[:100_000],
        headers={"Content-Range": "0-99999", "Content-Type": "application/octet-stream"},
    )
    assert first.status_code == 202 and first.headers["Range"] == "0-99999"
    location = first.headers["Location"]
    status = http.get(location)
    assert status.status_code == 204 and status.headers["Range"] == "0-99999"
    gap = http.patch(location, content=other[150_000:], headers={"Content-Range": "150000-249999"})
    assert gap.status_code == 416 and error_code(gap) == "RANGE_INVALID"
    second = http.patch(
        location, content=other[100_000:], headers={"Content-Range": "100000-249999"}
    )
    assert second.status_code == 202
    done = http.put(second.headers["Location"], params={"digest": sha(other)})
    assert done.status_code == 201 and done.headers["Location"].endswith(sha(other))
    assert http.get(f"/v2/lab/model/blobs/{sha(other)}").content == other
    # a blob is the repository's it was pushed to (issue 16: no name serves every blob)
    assert error_code(http.get(f"/v2/other/repo/blobs/{sha(other)}")) == "BLOB_UNKNOWN"


def test_upload_errors(http: httpx.Client, cairn_registry: tuple[str, Path]) -> None:
    _, root = cairn_registry
    wrong = http.post(
        "/v2/lab/model/blobs/uploads/", params={"digest": sha(b"claimed")}, content=b"actual"
    )
    assert wrong.status_code == 400 and error_code(wrong) == "DIGEST_INVALID"
    assert not (root / "blobs" / f"sha256-{hashlib.sha256(b'actual').hexdigest()}").exists()
    made_up = http.patch("/v2/lab/model/blobs/uploads/not-a-session", content=b"x")
    assert made_up.status_code == 404 and error_code(made_up) == "BLOB_UPLOAD_UNKNOWN"
    session = http.post("/v2/lab/model/blobs/uploads/").headers["Location"]
    assert http.delete(session).status_code == 204
    assert error_code(http.get(session)) == "BLOB_UPLOAD_UNKNOWN"
    truncated = http.post("/v2/lab/model/blobs/uploads/").headers["Location"]
    http.patch(truncated, content=b"half of it")
    bad = http.put(truncated, params={"digest": sha(b"half of it and the rest")})
    assert error_code(bad) == "DIGEST_INVALID"
    assert error_code(http.get(f"/v2/lab/model/blobs/{sha(b'nothing')}")) == "BLOB_UNKNOWN"
    assert error_code(http.get("/v2/lab/model/blobs/sha256:xyz")) == "DIGEST_INVALID"
    assert not any((root / ".cairn" / "uploads").iterdir())


def test_manifests_by_tag_and_digest(http: httpx.Client) -> None:
    manifest = artifact(http, "lab/model", b"weights")
    put = http.put(
        "/v2/lab/model/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert put.status_code == 201 and put.headers["Docker-Content-Digest"] == sha(manifest)
    for reference in ("v1", sha(manifest)):
        got = http.get(f"/v2/lab/model/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200 and got.content == manifest
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == sha(manifest)
        head = http.head(f"/v2/lab/model/manifests/{reference}")
        assert head.status_code == 200 and head.headers["Content-Length"] == str(len(manifest))
    by_digest = http.put(
        f"/v2/lab/model/manifests/{sha(manifest)}",
        content=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert by_digest.status_code == 201
    mismatch = http.put(
        f"/v2/lab/model/manifests/{sha(b'x')}",
        content=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert error_code(mismatch) == "DIGEST_INVALID"
    missing_blob = json.loads(manifest)
    missing_blob["layers"][0]["digest"] = sha(b"never uploaded")
    refused = http.put(
        "/v2/lab/model/manifests/v2",
        content=json.dumps(missing_blob).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert refused.status_code == 400 and error_code(refused) == "MANIFEST_BLOB_UNKNOWN"
    garbage = http.put(
        "/v2/lab/model/manifests/v3", content=b"{not json", headers={"Content-Type": OCI_MANIFEST}
    )
    assert error_code(garbage) == "MANIFEST_INVALID"
    huge = http.put(
        "/v2/lab/model/manifests/v4",
        content=b" " * (4 << 20 + 1),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert huge.status_code == 413
    assert error_code(http.get("/v2/lab/model/manifests/nope")) == "MANIFEST_UNKNOWN"
    assert http.delete("/v2/lab/model/manifests/v1").status_code == 202
    assert http.get("/v2/lab/model/manifests/v1").status_code == 404
    assert http.delete(f"/v2/lab/model/manifests/{sha(manifest)}").status_code == 202
    assert http.get(f"/v2/lab/model/manifests/{sha(manifest)}").status_code == 404


def test_tags_in_lexical_order_with_paging(http: httpx.Client) -> None:
    manifest = artifact(http, "lab/tags", b"w")
    for tag in ("b", "a", "c", "d", "e"):
        http.put(
            f"/v2/lab/tags/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
    assert http.get("/v2/lab/tags/tags/list").json() == {
        "name": "lab/tags",
        "tags": ["a", "b", "c", "d", "e"],
    }
    page = http.get("/v2/lab/tags/tags/list", params={"n": 2})
    assert page.json()["tags"] == ["a", "b"]
    assert page.headers["Link"] == '</v2/lab/tags/tags/list?n=2&last=b>; rel="next"'
    assert http.get("/v2/lab/tags/tags/list", params={"n": 2, "last": "b"}).json()["tags"] == [
        "c",
        "d",
    ]
    assert "Link" not in http.get("/v2/lab/tags/tags/list", params={"n": 10}).headers
    assert error_code(http.get("/v2/lab/nothing/tags/list")) == "NAME_UNKNOWN"


def test_referrers(http: httpx.Client) -> None:
    subject = artifact(http, "lab/ref", b"subject")
    http.put("/v2/lab/ref/manifests/v1", content=subject, headers={"Content-Type": OCI_MANIFEST})
    signature = artifact(
        http, "lab/ref", b"sig", subject=sha(subject), artifact_type="application/vnd.sig"
    )
    sbom = artifact(
        http, "lab/ref", b"sbom", subject=sha(subject), artifact_type="application/vnd.sbom"
    )
    for body in (signature, sbom):
        put = http.put(
            f"/v2/lab/ref/manifests/{sha(body)}",
            content=body,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert put.headers["OCI-Subject"] == sha(subject)
    index = http.get(f"/v2/lab/ref/referrers/{sha(subject)}")
    assert index.headers["Content-Type"].startswith("application/vnd.oci.image.index.v1+json")
    found = {m["digest"]: m["artifactType"] for m in index.json()["manifests"]}
    assert found == {sha(signature): "application/vnd.sig", sha(sbom): "application/vnd.sbom"}
    filtered = http.get(
        f"/v2/lab/ref/referrers/{sha(subject)}", params={"artifactType": "application/vnd.sig"}
    )
    assert [m["digest"] for m in filtered.json()["manifests"]] == [sha(signature)]
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert http.get(f"/v2/lab/ref/referrers/{sha(b'none')}").json()["manifests"] == []


def test_mount_and_blob_delete(http: httpx.Client) -> None:
    data = b"shared weights"
    digest = upload(http, "lab/one", data)
    mounted = http.post("/v2/lab/two/blobs/uploads/", params={"mount": digest, "from": "lab/one"})
    assert (
        mounted.status_code == 201
    )  # absolute, as Ollama's uploader needs (see test_ollama_client)
    assert (
        mounted.headers["Location"] == f"{str(http.base_url).rstrip('/')}/v2/lab/two/blobs/{digest}"
    )
    fallback = http.post(
        "/v2/lab/two/blobs/uploads/", params={"mount": sha(b"absent"), "from": "lab/one"}
    )
    assert fallback.status_code == 202
    manifest = artifact(http, "lab/one", b"kept")
    http.put("/v2/lab/one/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    in_use = http.delete(f"/v2/lab/one/blobs/{sha(b'kept')}")
    assert in_use.status_code == 405 and error_code(in_use) == "UNSUPPORTED"
    assert http.delete(f"/v2/lab/one/blobs/{digest}").status_code == 202
    assert http.head(f"/v2/lab/one/blobs/{digest}").status_code == 404


def test_names_that_escape_are_refused(http: httpx.Client) -> None:
    for name in ("a/b/c/d", "..%2F..%2Fetc", "UPPER..", "a/../b"):
        response = http.get(f"/v2/{name}/tags/list")
        assert response.status_code in (400, 404)
        if response.status_code == 400:
            assert error_code(response) == "NAME_INVALID"


def test_store_layout_and_list(
    cairn: Runner, cairn_registry: tuple[str, Path], tmp_path: Path
) -> None:
    """What is pushed in Ollama's format lands in the store's layout; `cairn list` shows it."""
    host, root = cairn_registry
    gguf = write_gguf(tmp_path / "m.gguf", fill=os.urandom(64))
    (tmp_path / "MF").write_text(f"FROM {gguf}\n")
    cairn("create", "tiny:1", "-f", str(tmp_path / "MF"))
    cairn("push", "tiny:1", f"{host}/library/tiny:1", "--insecure", "-q")
    assert (root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "1").is_file()
    listed = cairn("list", "--json", env={"CAIRN_MODELS": str(root)}).stdout
    assert [m["name"] for m in json.loads(listed)["models"]] == ["tiny:1"]
    # and cairn pulls it back, as Ollama would: Docker schema 2 Accept, HEAD then GET of blobs
    elsewhere = tmp_path / "elsewhere"
    cairn(
        "pull", f"{host}/library/tiny:1", "--insecure", "-q", env={"CAIRN_MODELS": str(elsewhere)}
    )
    assert "all intact" in cairn("verify", env={"CAIRN_MODELS": str(elsewhere)}).stdout


def test_skopeo_and_oras_against_cairn(cairn_registry: tuple[str, Path], tmp_path: Path) -> None:
    import oras.client

    host, _ = cairn_registry
    os.chdir(tmp_path)
    weights = write_gguf(tmp_path / "weights.gguf", fill=os.urandom(4096))
    client = oras.client.OrasClient(hostname=host, insecure=True)
    client.push(
        files=["weights.gguf"], target=f"{host}/oras/model:v1", do_chunked=True, chunk_size=16384
    )
    pulled = client.pull(target=f"{host}/oras/model:v1", outdir=str(tmp_path / "out"))
    assert Path(pulled[0]).read_bytes() == weights.read_bytes()
    flags = ["--src-tls-verify=false", "--dest-tls-verify=false"]
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            *flags,
            f"docker://{host}/oras/model:v1",
            f"dir:{tmp_path / 'sk'}",
        ],
        check=True,
        timeout=60,
    )
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            *flags,
            f"dir:{tmp_path / 'sk'}",
            f"docker://{host}/skopeo/model:v2",
        ],
        check=True,
        timeout=60,
    )
    again = client.pull(target=f"{host}/skopeo/model:v2", outdir=str(tmp_path / "out2"))
    assert Path(again[0]).read_bytes() == weights.read_bytes()


def test_htpasswd_and_read_only(tmp_path: Path) -> None:
    import bcrypt

    root = tmp_path / "secured"
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"carol:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    with (
        serving(root, "--htpasswd", str(htpasswd), "--public-read") as host,
        httpx.Client(base_url=f"http://{host}") as http,
    ):
        denied = http.post("/v2/lab/x/blobs/uploads/")
        assert denied.status_code == 401 and error_code(denied) == "UNAUTHORIZED"
        assert denied.headers["WWW-Authenticate"].startswith("Basic")
        assert http.get("/v2/").status_code == 200  # public read
        ok = http.post("/v2/lab/x/blobs/uploads/", auth=("carol", "pw"))
        assert ok.status_code == 202
        assert http.post("/v2/lab/x/blobs/uploads/", auth=("carol", "wrong")).status_code == 401
    with serving(root, "--read-only") as host, httpx.Client(base_url=f"http://{host}") as http:
        refused = http.post("/v2/lab/x/blobs/uploads/")
        assert refused.status_code == 405 and error_code(refused) == "UNSUPPORTED"
        assert http.get("/v2/").status_code == 200


def test_quota(tmp_path: Path) -> None:
    root = tmp_path / "quota"
    with serving(root, "--quota", "100K") as host, httpx.Client(base_url=f"http://{host}") as http:
        upload(http, "lab/q", os.urandom(60_000))
        over = http.post(
            "/v2/lab/q/blobs/uploads/",
            params={"digest": sha(b"x" * 60_000)},
            content=b"x" * 60_000,
        )
        assert over.status_code == 403 and error_code(over) == "DENIED"
        assert "quota" in over.json()["errors"][0]["message"]
        assert len(list((root / "blobs").iterdir())) == 1


def test_abandoned_uploads_expire(tmp_path: Path) -> None:
    import time

    root = tmp_path / "expiry"
    with (
        serving(root, "--upload-expiry", "0.5") as host,
        httpx.Client(base_url=f"http://{host}") as http,
    ):
        old = http.post("/v2/lab/e/blobs/uploads/").headers["Location"]
        http.patch(old, content=b"abandoned bytes")
        assert len(list((root / ".cairn" / "uploads").iterdir())) == 1
        time.sleep(1.0)
        http.post("/v2/lab/e/blobs/uploads/")  # any new session sweeps the old ones
        assert error_code(http.get(old)) == "BLOB_UPLOAD_UNKNOWN"
        assert len(list((root / ".cairn" / "uploads").iterdir())) == 1  # just the new one


def test_concurrent_uploads_of_the_same_blob(
    http: httpx.Client, cairn_registry: tuple[str, Path]
) -> None:
    import concurrent.futures

    host, root = cairn_registry
    data = os.urandom(8 << 20)

    def send() -> int:
        with httpx.Client(base_url=f"http://{host}", timeout=60) as client:
            status: int = client.post(
                "/v2/lab/c/blobs/uploads/", params={"digest": sha(data)}, content=data
            ).status_code
            return status

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: send(), range(4))) == [201] * 4
    assert [p.name for p in (root / "blobs").iterdir()] == [f"sha256-{sha(data)[7:]}"]
    assert (
        hashlib.sha256((root / "blobs" / f"sha256-{sha(data)[7:]}").read_bytes()).hexdigest()
        == sha(data)[7:]
    )


def test_ollama_request_pattern(
    cairn: Runner, cairn_registry: tuple[str, Path], tmp_path: Path
) -> None:
    """As `ollama pull --insecure` asks: Docker schema 2 Accept, HEAD, then ranged GETs of blobs."""
    host, _ = cairn_registry
    gguf = write_gguf(tmp_path / "m.gguf", fill=os.urandom(256))
    (tmp_path / "MF").write_text(f"FROM {gguf}\nTEMPLATE {{{{ .Prompt }}}}\n")
    cairn("create", "tiny:1", "-f", str(tmp_path / "MF"))
    cairn("push", "tiny:1", f"{host}/library/tiny:1", "--insecure", "-q")
    with httpx.Client(base_url=f"http://{host}") as http:
        got = http.get(
            "/v2/library/tiny/manifests/1",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        assert got.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
        manifest = got.json()
        for layer in [manifest["config"], *manifest["layers"]]:
            head = http.head(f"/v2/library/tiny/blobs/{layer['digest']}")
            assert head.status_code == 200 and int(head.headers["Content-Length"]) == layer["size"]
            half = layer["size"] // 2
            first = http.get(
                f"/v2/library/tiny/blobs/{layer['digest']}", headers={"Range": f"bytes=0-{half}"}
            )
            rest = http.get(
                f"/v2/library/tiny/blobs/{layer['digest']}", headers={"Range": f"bytes={half + 1}-"}
            )
            assert sha(first.content + rest.content) == layer["digest"]


def test_tls_and_json_logs(cairn: Runner, tmp_path: Path) -> None:
    from tests.conftest import self_signed

    root = tmp_path / "tls-served"
    root.mkdir()
    cert, key = self_signed(tmp_path)
    port_host, proc = start_cairn_registry(
        root, "--tls-cert", str(cert), "--tls-key", str(key), "--json-logs"
    )
    try:
        gguf = write_gguf(tmp_path / "m.gguf", fill=os.urandom(64))
        (tmp_path / "MF").write_text(f"FROM {gguf}\n")
        cairn("create", "tiny:1", "-f", str(tmp_path / "MF"))
        env = {"CAIRN_CA_BUNDLE": str(cert)}
        cairn("push", "tiny:1", f"{port_host}/library/tiny:1", "-q", env=env)
        elsewhere = {"CAIRN_MODELS": str(tmp_path / "elsewhere"), **env}
        cairn("pull", f"{port_host}/library/tiny:1", "-q", env=elsewhere)
        assert "all intact" in cairn("verify", env=elsewhere).stdout
    finally:
        stop(proc)
    lines = [json.loads(line) for line in server_log(proc).splitlines() if line.startswith("{")]
    assert {"method", "path", "status", "seconds", "remote"} <= set(lines[0])
    assert any(entry["method"] == "PUT" and entry["status"] == 201 for entry in lines)
