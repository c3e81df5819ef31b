"""``cairn registry serve``: what the spec refuses is refused, and nothing is read two ways."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import bcrypt
import httpx

from tests.conftest import serving

OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config(http: httpx.Client, repo: str) -> dict[str, object]:
    data = b"{}"
    http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(data)}, content=data)
    return {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(data), "size": 2}


def test_a_manifest_is_one_kind_for_every_reader(tmp_path: Path) -> None:
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        image = {"schemaVersion": 2, "config": config(http, "lab/k"), "layers": []}
        # No mediaType, the fields of both kinds: one reader sees an image, another an index.
        both = json.dumps({**image, "manifests": []}).encode()
        refused = http.put("/v2/lab/k/manifests/a", content=both, headers={"Content-Type": OCI})
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["code"] == "MANIFEST_INVALID"
        # A mediaType that says one kind, sent as the other.
        declared = json.dumps({**image, "mediaType": OCI}).encode()
        mixed = http.put("/v2/lab/k/manifests/b", content=declared, headers={"Content-Type": INDEX})
        assert mixed.status_code == 400 and "disagrees with Content-Type" in mixed.text
        assert http.get("/v2/lab/k/tags/list").status_code == 404  # nothing was stored
        ok = http.put("/v2/lab/k/manifests/c", content=declared, headers={"Content-Type": OCI})
        assert ok.status_code == 201


def test_names_that_differ_only_in_case(tmp_path: Path) -> None:
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI, "config": config(http, "lab/c"), "layers": []}
        ).encode()
        headers = {"Content-Type": OCI}
        assert http.put("/v2/lab/c/manifests/v1.0-rc", content=body, headers=headers).is_success
        other = body.replace(b'"layers": []', b'"layers": [], "annotations": {"a": "b"}')
        clash = http.put("/v2/lab/c/manifests/v1.0-RC", content=other, headers=headers)
        assert clash.status_code == 400 and "differs only in case" in clash.text
        assert http.get("/v2/lab/c/manifests/v1.0-rc").content == body  # not overwritten
        upper = http.put("/v2/Lab/C/manifests/v1", content=body, headers=headers)
        assert upper.status_code == 400 and upper.json()["errors"][0]["code"] == "NAME_INVALID"


def test_small_deviations_from_the_spec(tmp_path: Path) -> None:
    users = tmp_path / "htpasswd"
    users.write_text(f"carol:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    auth = {"Authorization": "Basic " + base64.b64encode(b"carol:pw").decode()}
    root = tmp_path / "served"
    with (
        serving(root, "--htpasswd", str(users), "--public-read") as host,
        httpx.Client(base_url=f"http://{host}", headers=auth) as http,
    ):
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI, "config": config(http, "lab/s"), "layers": []}
        ).encode()
        assert http.put("/v2/lab/s/manifests/v1", content=body, headers={"Content-Type": OCI})
        # tag@digest is no tag: it must not quietly drop the digest
        wrong = "v1@sha256:" + "0" * 64
        assert httpx.get(f"http://{host}/v2/lab/s/manifests/{wrong}").status_code == 404
        # a digest in the store's file form is no digest
        file_form = "sha256-" + sha(b"{}")[7:]
        assert http.get(f"/v2/lab/s/blobs/{file_form}").status_code == 400
        # --public-read opens pulls, not somebody's upload session
        session = http.post("/v2/lab/s/blobs/uploads/").headers["Location"]
        assert httpx.get(session).status_code == 401
        assert http.get(session).status_code == 204
        # a Content-Range that does not span the body sent
        lying = http.patch(session, content=b"abc", headers={"Content-Range": "0-9"})
        assert lying.status_code == 416
        assert (
            http.patch(session, content=b"abc", headers={"Content-Range": "0-2"}).status_code == 202
        )


def test_the_quota_counts_uploads_in_flight_and_manifests(tmp_path: Path) -> None:
    part = b"q" * 600_000
    with (
        serving(tmp_path / "served", "--quota", "1M") as host,
        httpx.Client(base_url=f"http://{host}") as http,
    ):
        first = http.post("/v2/lab/q/blobs/uploads/").headers["Location"]
        assert httpx.patch(first, content=part).status_code == 202  # in flight, not finished
        second = http.post("/v2/lab/q/blobs/uploads/").headers["Location"]
        denied = httpx.patch(second, content=part)
        assert denied.status_code == 403 and denied.json()["errors"][0]["code"] == "DENIED"
        assert httpx.put(first, params={"digest": sha(part)}).status_code == 201
        again = http.post(
            "/v2/lab/q/blobs/uploads/", params={"digest": sha(part + b"!")}, content=part + b"!"
        )
        assert again.status_code == 403
        # what is stored stays under the quota
        root = tmp_path / "served"
        stored = sum(p.stat().st_size for p in (root / "blobs").iterdir())
        assert stored <= 1_000_000
        # a manifest too counts against it
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI,
                "config": {"mediaType": "a/b", "digest": sha(part), "size": len(part)},
                "layers": [],
                "annotations": {"pad": "x" * 500_000},
            }
        ).encode()
        big = http.put("/v2/lab/q/manifests/v1", content=body, headers={"Content-Type": OCI})
        assert big.status_code == 403


def test_upload_sessions_are_bounded_and_expire_on_their_own(tmp_path: Path) -> None:
    from cairn.registry.server.uploads import MAX_SESSIONS_PER_CLIENT

    with (
        serving(tmp_path / "served", "--upload-expiry", "1") as host,
        httpx.Client(base_url=f"http://{host}") as http,
    ):
        idle = http.post("/v2/lab/e/blobs/uploads/").headers["Location"]
        # No other upload starts meanwhile: only a timer can expire it. (Its file is
        # watched, not its status: asking for the status is activity.)
        uploads = tmp_path / "served" / ".cairn" / "uploads"
        deadline = time.monotonic() + 15
        while list(uploads.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not list(uploads.iterdir())
        assert http.get(idle).status_code == 404
        opened = [http.post("/v2/lab/e/blobs/uploads/") for _ in range(MAX_SESSIONS_PER_CLIENT)]
        assert all(answer.status_code == 202 for answer in opened)
        refused = http.post("/v2/lab/e/blobs/uploads/")
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "10"
        assert refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert http.delete(opened[0].headers["Location"]).status_code == 204
        assert http.post("/v2/lab/e/blobs/uploads/").status_code == 202


def test_referrers_of_an_index_and_foreign_layers(tmp_path: Path) -> None:
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        image = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI, "config": config(http, "lab/r"), "layers": []}
        ).encode()
        assert http.put("/v2/lab/r/manifests/v1", content=image, headers={"Content-Type": OCI})
        subject = {"mediaType": OCI, "digest": sha(image), "size": len(image)}
        # An index may refer to a manifest too (OCI 1.1): its PUT names the subject.
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": INDEX,
                "artifactType": "application/vnd.test.index",
                "manifests": [subject],
                "subject": subject,
            }
        ).encode()
        put = http.put(
            f"/v2/lab/r/manifests/{sha(index)}", content=index, headers={"Content-Type": INDEX}
        )
        assert put.status_code == 201 and put.headers["OCI-Subject"] == sha(image)
        listed = http.get(f"/v2/lab/r/referrers/{sha(image)}")
        assert listed.headers["Content-Type"] == INDEX  # exactly: no "; charset=utf-8"
        assert [m["digest"] for m in listed.json()["manifests"]] == [sha(index)]
        # Layers the publisher keeps to itself: accepted without their blobs.
        foreign = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI,
                "config": config(http, "lab/r"),
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                        "digest": sha(b"not here"),
                        "size": 8,
                    },
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha(b"elsewhere"),
                        "size": 9,
                        "urls": ["https://example.com/layer"],
                    },
                ],
            }
        ).encode()
        taken = http.put(
            "/v2/lab/r/manifests/foreign", content=foreign, headers={"Content-Type": OCI}
        )
        assert taken.status_code == 201
        # but an ordinary layer must still be there
        missing = foreign.replace(b'"urls": ["https://example.com/layer"]', b'"annotations": {}')
        refused = http.put("/v2/lab/r/manifests/m", content=missing, headers={"Content-Type": OCI})
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


def test_a_final_chunk_out_of_order_is_a_range_error(tmp_path: Path) -> None:
    data = b"0123456789"
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        session = http.post("/v2/lab/o/blobs/uploads/").headers["Location"]
        assert http.patch(session, content=data[:4], headers={"Content-Range": "0-3"}).is_success
        late = http.put(
            session,
            params={"digest": sha(data)},
            content=data[6:],
            headers={"Content-Range": "6-9"},
        )
        assert late.status_code == 416 and late.json()["errors"][0]["code"] == "RANGE_INVALID"
        done = http.put(
            session,
            params={"digest": sha(data)},
            content=data[4:],
            headers={"Content-Range": "4-9"},
        )
        assert done.status_code == 201


def test_a_three_part_name_names_a_host_the_store_holds(tmp_path: Path) -> None:
    root = tmp_path / "served"
    with serving(root) as host, httpx.Client(base_url=f"http://{host}") as http:
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI, "config": config(http, "lab/h"), "layers": []}
        ).encode()
        headers = {"Content-Type": OCI}
        made_up = http.put("/v2/evil.com/x/y/manifests/v1", content=body, headers=headers)
        assert made_up.status_code == 404
        assert made_up.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        assert not (root / "manifests" / "evil.com").exists()  # nothing served as from it
        assert http.put("/v2/lab/h/manifests/v1", content=body, headers=headers).is_success
        # the default host, and a host the store holds, take three-part names
        held = http.put("/v2/registry.ollama.ai/lab/h/manifests/v2", content=body, headers=headers)
        assert held.status_code == 201
        (root / "manifests" / "mirror.example").mkdir()
        config(http, "mirror.example/a/b")  # its blobs are pushed to it, as to any repository
        there = http.put("/v2/mirror.example/a/b/manifests/v1", content=body, headers=headers)
        assert there.status_code == 201


def test_blobs_belong_to_the_repositories_they_were_pushed_to(tmp_path: Path) -> None:
    root = tmp_path / "served"
    with serving(root) as host, httpx.Client(base_url=f"http://{host}") as http:

        def code(response: httpx.Response) -> str:
            found: str = response.json()["errors"][0]["code"]
            return found

        layer = b"the weights of lab/a"
        assert http.post("/v2/lab/a/blobs/uploads/", params={"digest": sha(layer)}, content=layer)
        assert http.get(f"/v2/lab/a/blobs/{sha(layer)}").content == layer
        for stranger in ("lab/b", "never/existed", "x"):  # no name serves every blob
            assert code(http.get(f"/v2/{stranger}/blobs/{sha(layer)}")) == "BLOB_UNKNOWN"
            assert http.head(f"/v2/{stranger}/blobs/{sha(layer)}").status_code == 404

        # A manifest of lab/b cannot use what was pushed to lab/a.
        layer_descriptor = {"mediaType": OCI_LAYER, "digest": sha(layer), "size": len(layer)}
        image = {
            "schemaVersion": 2,
            "mediaType": OCI,
            "config": config(http, "lab/b"),
            "layers": [layer_descriptor],
        }
        body = json.dumps(image).encode()
        refused = http.put("/v2/lab/b/manifests/v1", content=body, headers={"Content-Type": OCI})
        assert code(refused) == "MANIFEST_BLOB_UNKNOWN"

        # A mount from a repository without the blob is an upload, not a mount.
        wrong = http.post(
            "/v2/lab/b/blobs/uploads/", params={"mount": sha(layer), "from": "lab/nothing"}
        )
        assert wrong.status_code == 202
        assert http.delete(wrong.headers["Location"]).status_code == 204
        assert code(http.get(f"/v2/lab/b/blobs/{sha(layer)}")) == "BLOB_UNKNOWN"
        mounted = http.post(
            "/v2/lab/b/blobs/uploads/", params={"mount": sha(layer), "from": "lab/a"}
        )
        assert mounted.status_code == 201
        assert http.get(f"/v2/lab/b/blobs/{sha(layer)}").content == layer
        taken = http.put("/v2/lab/b/manifests/v1", content=body, headers={"Content-Type": OCI})
        assert taken.status_code == 201
        in_use = http.delete(f"/v2/lab/b/blobs/{sha(layer)}")
        assert code(in_use) == "UNSUPPORTED"

        # A pending upload (no manifest yet) is safe from every other name.
        pending = b"a layer whose manifest has not come yet"
        assert http.post(
            "/v2/lab/a/blobs/uploads/", params={"digest": sha(pending)}, content=pending
        )
        assert code(http.delete(f"/v2/lab/c/blobs/{sha(pending)}")) == "BLOB_UNKNOWN"
        assert http.get(f"/v2/lab/a/blobs/{sha(pending)}").content == pending

        # DELETE unlinks from one repository; the bytes go with the last link.
        shared = http.post(
            "/v2/lab/d/blobs/uploads/", params={"mount": sha(pending), "from": "lab/a"}
        )
        assert shared.status_code == 201
        assert http.delete(f"/v2/lab/a/blobs/{sha(pending)}").status_code == 202
        assert code(http.get(f"/v2/lab/a/blobs/{sha(pending)}")) == "BLOB_UNKNOWN"
        assert http.get(f"/v2/lab/d/blobs/{sha(pending)}").content == pending
        stored = root / "blobs" / f"sha256-{sha(pending)[7:]}"
        assert stored.exists()
        assert http.delete(f"/v2/lab/d/blobs/{sha(pending)}").status_code == 202
        assert not stored.exists()
        assert not (root / ".cairn" / "links" / stored.name).exists()

        # A foreign layer names a digest without its bytes: it shows nothing.
        foreign = dict(image, layers=[{**layer_descriptor, "urls": ["https://example.com/l"]}])
        foreign_body = json.dumps(foreign).encode()
        config(http, "lab/e")
        put = http.put(
            "/v2/lab/e/manifests/v1", content=foreign_body, headers={"Content-Type": OCI}
        )
        assert put.status_code == 201
        assert code(http.get(f"/v2/lab/e/blobs/{sha(layer)}")) == "BLOB_UNKNOWN"


def test_a_blob_pushed_or_mounted_again_is_young_again_for_prune(tmp_path: Path) -> None:
    """Found by the attack on the registry: an old unreferenced blob pushed (or mounted)
    again kept its old age, so a prune between the upload and its manifest removed it,
    and the manifest that followed the protocol was refused."""
    import subprocess
    import sys

    from tests.conftest import cairn_env

    root = tmp_path / "served"

    def prune() -> dict[str, list[str]]:
        command = [sys.executable, "-m", "cairn", "prune", "--grace", "2s", "--json"]
        done = subprocess.run(
            command, env=cairn_env(root), capture_output=True, text=True, check=True
        )
        found: dict[str, list[str]] = json.loads(done.stdout)
        return found

    with serving(root) as host, httpx.Client(base_url=f"http://{host}") as http:
        pushed, mounted = b"pushed twice", b"mounted later"
        for data in (pushed, mounted):
            made = http.post("/v2/lab/a/blobs/uploads/", params={"digest": sha(data)}, content=data)
            assert made.status_code == 201
        time.sleep(2.2)  # both older than the grace, and no manifest names them
        again = http.post(
            "/v2/lab/a/blobs/uploads/", params={"digest": sha(pushed)}, content=pushed
        )
        assert again.status_code == 201
        mount = {"mount": sha(mounted), "from": "lab/a"}
        assert http.post("/v2/lab/b/blobs/uploads/", params=mount).status_code == 201
        assert sorted(prune()["young"]) == sorted([sha(pushed), sha(mounted)])
        for repo, data in (("lab/a", pushed), ("lab/b", mounted)):
            layer = {"mediaType": OCI_LAYER, "digest": sha(data), "size": len(data)}
            image = {"schemaVersion": 2, "mediaType": OCI, "config": config(http, repo)}
            body = json.dumps({**image, "layers": [layer]}).encode()
            stored = http.put(
                f"/v2/{repo}/manifests/v1", content=body, headers={"Content-Type": OCI}
            )
            assert stored.status_code == 201, stored.text
