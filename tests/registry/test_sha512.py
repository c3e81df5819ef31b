"""sha512 content end to end: ``cairn registry serve`` takes and serves it, ``cairn pull``
fetches and verifies it, ``cairn push`` pushes it; bad digests are refused, nothing kept."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx

from tests.conftest import Runner, serving

OCI = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def code(response: httpx.Response) -> str:
    found: str = response.json()["errors"][0]["code"]
    return found


def push_sha512_image(http: httpx.Client, repo: str, layer: bytes) -> bytes:
    """An OCI image whose config and layer are addressed by sha512; its manifest bytes."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for blob in (config, layer):
        put = http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha512(blob)}, content=blob)
        assert put.status_code == 201, put.text
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI,
            "config": {"mediaType": CONFIG, "digest": sha512(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": sha512(layer), "size": len(layer)}],
        }
    ).encode()
    put = http.put(f"/v2/{repo}/manifests/v1", content=manifest, headers={"Content-Type": OCI})
    assert put.status_code == 201, put.text
    return manifest


def test_the_server_takes_sha512_and_refuses_bad_digests(tmp_path: Path) -> None:
    root = tmp_path / "served"
    with serving(root) as host, httpx.Client(base_url=f"http://{host}") as http:
        data = os.urandom(300_000)
        # chunked: the algorithm is known only at the final PUT
        start = http.post("/v2/lab/x/blobs/uploads/")
        location = start.headers["Location"]
        location = http.patch(location, content=data[:100_000]).headers["Location"]
        done = http.put(location, params={"digest": sha512(data)}, content=data[100_000:])
        assert done.status_code == 201 and done.headers["Docker-Content-Digest"] == sha512(data)
        stored = root / "blobs" / sha512(data).replace(":", "-")
        assert stored.read_bytes() == data
        head = http.head(f"/v2/lab/x/blobs/{sha512(data)}")
        assert head.headers["Docker-Content-Digest"] == sha512(data)
        assert http.get(f"/v2/lab/x/blobs/{sha512(data)}").content == data

        # bytes that hash to another sha512: refused, nothing left (single POST and chunked)
        wrong = http.post(
            "/v2/lab/x/blobs/uploads/", params={"digest": sha512(b"claimed")}, content=b"actual"
        )
        assert wrong.status_code == 400 and code(wrong) == "DIGEST_INVALID"
        session = http.post("/v2/lab/x/blobs/uploads/").headers["Location"]
        http.patch(session, content=b"actual")
        assert code(http.put(session, params={"digest": sha512(b"claimed")})) == "DIGEST_INVALID"
        assert not (root / "blobs" / sha512(b"actual").replace(":", "-")).exists()
        # an algorithm the store does not keep, and a sha512 of the wrong length
        for bad in ("md5:" + hashlib.md5(b"x").hexdigest(), "sha512:" + "a" * 64, "sha512:xyz"):
            assert code(http.get(f"/v2/lab/x/blobs/{bad}")) == "DIGEST_INVALID"
            posted = http.post("/v2/lab/x/blobs/uploads/", params={"digest": bad}, content=b"x")
            assert posted.status_code == 400 and code(posted) == "DIGEST_INVALID"
            put = http.put(f"/v2/lab/x/manifests/{bad}", content=b"{}")
            assert put.status_code == 400 and code(put) == "DIGEST_INVALID"
        assert not any((root / ".cairn" / "uploads").iterdir())  # no session outlived them

        # manifests by sha512 digest
        manifest = push_sha512_image(http, "lab/y", b"layer bytes")
        by512 = http.put(
            f"/v2/lab/y/manifests/{sha512(manifest)}",
            content=manifest,
            headers={"Content-Type": OCI},
        )
        assert by512.status_code == 201
        assert by512.headers["Docker-Content-Digest"] == sha512(manifest)
        got = http.get(f"/v2/lab/y/manifests/{sha512(manifest)}")
        assert got.content == manifest and got.headers["Docker-Content-Digest"] == sha512(manifest)
        assert http.get("/v2/lab/y/manifests/v1").headers["Docker-Content-Digest"] == sha256(
            manifest
        )
        mismatch = http.put(
            f"/v2/lab/y/manifests/{sha512(b'other')}",
            content=manifest,
            headers={"Content-Type": OCI},
        )
        assert mismatch.status_code == 400 and code(mismatch) == "DIGEST_INVALID"
        assert http.delete(f"/v2/lab/y/manifests/{sha512(manifest)}").status_code == 202
        assert http.get("/v2/lab/y/manifests/v1").status_code == 404  # the tag had those bytes

        # a manifest of 4 MiB + 1 byte: refused, nothing stored
        huge = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
        too_big = http.put("/v2/lab/z/manifests/big", content=huge, headers={"Content-Type": OCI})
        assert too_big.status_code == 413
        assert http.get("/v2/lab/z/tags/list").status_code == 404


def test_a_subject_that_does_not_exist_yet(tmp_path: Path) -> None:
    """The spec: a manifest whose subject is missing is accepted, and listed by the
    referrers API once (and before) the subject arrives."""
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        config = b"{}"
        http.post("/v2/lab/s/blobs/uploads/", params={"digest": sha256(config)}, content=config)
        descriptor = {"mediaType": CONFIG, "digest": sha256(config), "size": 2}
        subject = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI, "config": descriptor, "layers": []}
        ).encode()
        signature = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI,
                "artifactType": "application/vnd.example.signature",
                "config": descriptor,
                "layers": [],
                "subject": {"mediaType": OCI, "digest": sha256(subject), "size": len(subject)},
            }
        ).encode()
        put = http.put(
            f"/v2/lab/s/manifests/{sha256(signature)}",
            content=signature,
            headers={"Content-Type": OCI},
        )
        assert put.status_code == 201 and put.headers["OCI-Subject"] == sha256(subject)
        assert http.get(f"/v2/lab/s/manifests/{sha256(subject)}").status_code == 404
        http.put("/v2/lab/s/manifests/v1", content=subject, headers={"Content-Type": OCI})
        listed = http.get(f"/v2/lab/s/referrers/{sha256(subject)}").json()["manifests"]
        assert [m["digest"] for m in listed] == [sha256(signature)]


def test_cairn_pulls_and_pushes_sha512_content(cairn: Runner, store: Path, tmp_path: Path) -> None:
    layer = os.urandom(200_000)
    with serving(tmp_path / "a") as a, httpx.Client(base_url=f"http://{a}") as http:
        manifest = push_sha512_image(http, "lab/oci", layer)
        cairn("pull", f"{a}/lab/oci:v1", "--insecure", "-q")
    kept = store / "blobs" / sha512(layer).replace(":", "-")
    assert kept.read_bytes() == layer
    assert "all intact" in cairn("verify").stdout
    # a changed byte is found by verify, in sha512
    kept.chmod(0o644)
    kept.write_bytes(b"\0" + layer[1:])
    assert cairn("verify", check=False).returncode != 0
    kept.write_bytes(layer)
    with serving(tmp_path / "b") as b, httpx.Client(base_url=f"http://{b}") as http:
        cairn("push", f"{a}/lab/oci:v1", f"{b}/lab/copy:v1", "--insecure", "-q")
        assert http.get("/v2/lab/copy/manifests/v1").content == manifest
        assert http.get(f"/v2/lab/copy/blobs/{sha512(layer)}").content == layer
    assert (tmp_path / "b" / "blobs" / kept.name).read_bytes() == layer


def test_what_the_attack_on_sha512_found(cairn: Runner, store: Path, tmp_path: Path) -> None:
    """Referrers pushed by sha512 are listed by the digest they are found by; a model
    pulled by @sha512 is found by it; a manifest whose sizes lie is refused."""
    with serving(tmp_path / "a") as a, httpx.Client(base_url=f"http://{a}") as http:
        manifest = push_sha512_image(http, "lab/r", b"weights")
        image = json.loads(manifest)
        signature = json.dumps(
            {
                **image,
                "artifactType": "application/vnd.example.sig",
                "subject": {"mediaType": OCI, "digest": sha512(manifest), "size": len(manifest)},
            }
        ).encode()
        oci = {"Content-Type": OCI}
        assert http.put(f"/v2/lab/r/manifests/{sha512(manifest)}", content=manifest, headers=oci)
        put = http.put(f"/v2/lab/r/manifests/{sha512(signature)}", content=signature, headers=oci)
        assert put.status_code == 201
        listed = http.get(f"/v2/lab/r/referrers/{sha512(manifest)}").json()["manifests"]
        assert [m["digest"] for m in listed] == [sha512(signature)]
        assert http.get(f"/v2/lab/r/manifests/{listed[0]['digest']}").content == signature

        lying = dict(image, config={**image["config"], "size": 5})
        body = json.dumps(lying).encode()
        refused = http.put("/v2/lab/r/manifests/lies", content=body, headers=oci)
        assert refused.status_code == 400 and code(refused) == "MANIFEST_INVALID"

        pinned = f"{a}/lab/r@{sha512(manifest)}"
        cairn("pull", pinned, "--insecure", "-q")
    shown = json.loads(cairn("show", pinned, "--json", check=False).stdout or "{}")
    assert shown, "the model pulled by its sha512 digest is found by it"
    cairn("rm", pinned)
    assert "127.0.0.1" not in cairn("list").stdout
