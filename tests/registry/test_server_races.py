"""``cairn registry serve`` under interleavings a review proved harmful, forced, not hoped for.

Each test drives the order of events through the protocol itself: a request
body held back on a raw socket keeps its handler inside the upload (the
upload's status shows when it got there), and the next requests are sent
only then.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import cairn_json, serving

CHUNK = 1 << 20  # more than one socket read: the server has surely started appending


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def start(http: httpx.Client, repo: str) -> str:
    answer = http.post(f"/v2/{repo}/blobs/uploads/")
    assert answer.status_code == 202
    return str(answer.headers["Location"])


def held_patch(host: str, location: str, body: bytes, sent: int) -> socket.socket:
    """A PATCH whose first ``sent`` bytes of ``body`` went out; the rest is held back."""
    path = location.split(host, 1)[1]
    conn = socket.create_connection(tuple(host.split(":")))  # type: ignore[arg-type]
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    conn.sendall(head.encode() + body[:sent])
    return conn


def answer_of(conn: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        piece = conn.recv(4096)
        if not piece:
            break
        data += piece
    conn.close()
    return int(data.split(b" ", 2)[1])


def wait_for_offset(http: httpx.Client, location: str, offset: int) -> None:
    """Until the upload's status says ``offset`` bytes arrived: its writer holds it now."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = http.get(location)
        if status.headers.get("Range") == f"0-{offset - 1}":
            return
        time.sleep(0.01)
    raise AssertionError(f"the upload never reached byte {offset}")


def test_a_cancelled_session_never_writes_into_another(tmp_path: Path) -> None:
    a_bytes = b"A" * (CHUNK + 10)
    b_bytes = b"B" * 1000
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        a = start(http, "lab/a")
        held = held_patch(host, a, a_bytes, CHUNK + 5)
        wait_for_offset(http, a, CHUNK + 5)  # PATCH A is inside the upload, its body held back
        cancelled: list[int] = []
        cancel = threading.Thread(
            target=lambda: cancelled.append(httpx.delete(a, timeout=60).status_code)
        )
        cancel.start()
        time.sleep(0.2)  # the DELETE is in; it waits for PATCH A
        b = start(http, "lab/b")
        patched = httpx.patch(b, content=b_bytes)
        assert patched.status_code == 202
        held.sendall(a_bytes[CHUNK + 5 :])  # now A's body ends
        assert answer_of(held) == 202
        cancel.join(60)
        assert cancelled == [204]  # after PATCH A, not in its middle
        done = httpx.put(str(patched.headers["Location"]), params={"digest": sha(b_bytes)})
        assert done.status_code == 201, done.text
        assert http.get(f"/v2/lab/b/blobs/{sha(b_bytes)}").content == b_bytes
        gone = httpx.put(a, params={"digest": sha(a_bytes)})
        assert gone.status_code == 404
        assert gone.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        assert http.head(f"/v2/lab/a/blobs/{sha(a_bytes)}").status_code == 404


def test_a_finished_session_takes_no_more_requests(tmp_path: Path) -> None:
    data, other = b"finished" * 100, b"another upload" * 100
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        first = start(http, "lab/x")
        location = str(httpx.patch(first, content=data).headers["Location"])
        assert httpx.put(location, params={"digest": sha(data)}).status_code == 201
        second = start(http, "lab/x")
        for retried in (
            httpx.patch(location, content=b"late"),
            httpx.put(location, params={"digest": sha(data)}),
            httpx.delete(location),
        ):
            assert retried.status_code == 404
            assert retried.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        patched = httpx.patch(second, content=other)
        finished = httpx.put(str(patched.headers["Location"]), params={"digest": sha(other)})
        assert finished.status_code == 201
        assert http.get(f"/v2/lab/x/blobs/{sha(data)}").content == data
        assert http.get(f"/v2/lab/x/blobs/{sha(other)}").content == other


def manifest_of(http: httpx.Client, repo: str, padding: int) -> bytes:
    config = b"{}"
    http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(config)}, content=config)
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": 2,
            },
            "layers": [],
            "annotations": {"padding": "x" * padding},
        }
    ).encode()


def test_a_manifest_is_read_whole_however_it_arrives(tmp_path: Path) -> None:
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        big = manifest_of(http, "lab/m", 200_000)
        put = http.put(
            "/v2/lab/m/manifests/big",
            content=big,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert put.status_code == 201 and put.headers["Docker-Content-Digest"] == sha(big)
        assert http.get("/v2/lab/m/manifests/big").content == big
        # The same body in two writes, a pause between them.
        small = manifest_of(http, "lab/m", 100)
        conn = socket.create_connection(tuple(host.split(":")))  # type: ignore[arg-type]
        head = (
            f"PUT /v2/lab/m/manifests/split HTTP/1.1\r\nHost: {host}\r\nContent-Type:"
            f" application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {len(small)}\r\n"
            "Connection: close\r\n\r\n"
        )
        conn.sendall(head.encode() + small[:100])
        time.sleep(0.3)
        conn.sendall(small[100:])
        assert answer_of(conn) == 201
        assert http.get("/v2/lab/m/manifests/split").content == small
        # Past the limit, chunked (no Content-Length to refuse it by): 413, nothing stored.
        huge = manifest_of(http, "lab/m", 4 * 1024 * 1024 + 1)
        refused = http.put(
            "/v2/lab/m/manifests/huge",
            content=iter([huge[i : i + 65536] for i in range(0, len(huge), 65536)]),
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert refused.status_code == 413
        assert http.get("/v2/lab/m/manifests/huge").status_code == 404


def test_a_manifest_fetched_by_digest_hashes_to_it(tmp_path: Path) -> None:
    root = tmp_path / "served"
    oci = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    with serving(root) as host, httpx.Client(base_url=f"http://{host}") as http:
        m1, m2 = manifest_of(http, "lab/d", 1), manifest_of(http, "lab/d", 2)
        assert (
            http.put(f"/v2/lab/d/manifests/{sha(m1)}", content=m1, headers=oci).status_code == 201
        )
        # A user's tag of the shape of a digest (the referrers tag schema, cosign's .sig):
        planted = "sha256-" + sha(m1)[7:]
        assert (
            http.put(f"/v2/lab/d/manifests/{planted}", content=m2, headers=oci).status_code == 201
        )
        by_digest = http.get(f"/v2/lab/d/manifests/{sha(m1)}")
        assert by_digest.content == m1 and by_digest.headers["Docker-Content-Digest"] == sha(m1)
        assert http.get(f"/v2/lab/d/manifests/{planted}").content == m2
        assert http.get("/v2/lab/d/tags/list").json()["tags"] == [planted]  # an ordinary tag
        assert http.delete(f"/v2/lab/d/manifests/{sha(m1)}").status_code == 202
        assert http.get(f"/v2/lab/d/manifests/{sha(m1)}").status_code == 404
        assert http.get(f"/v2/lab/d/manifests/{planted}").content == m2
        # Pushed by digest alone: kept, but never as a tag (ollama list would show one).
        assert (
            http.put(f"/v2/lab/d/manifests/{sha(m1)}", content=m1, headers=oci).status_code == 201
        )
    repository = root / "manifests" / "registry.ollama.ai" / "lab" / "d"
    assert sorted(p.name for p in repository.iterdir()) == [".by-digest", planted]
    listed = cairn_json(root, "list", "--json")
    assert [m["name"] for m in listed["models"]] == [f"lab/d:{planted}"]
    # and a collection keeps what it references
    assert cairn_json(root, "prune", "--grace", "0", "--json")["blobs"] == []


def put_and_delete_racing(root: Path, layer: bytes) -> tuple[dict[str, int], int, int]:
    """A manifest PUT naming ``layer`` and a DELETE of ``layer`` released at once; their
    answers, then the statuses of GETs of the manifest and of the blob."""
    import fcntl
    import os

    oci = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    answers: dict[str, int] = {}
    with serving(root) as host, httpx.Client(base_url=f"http://{host}", timeout=60) as http:
        assert http.post(
            "/v2/lab/m/blobs/uploads/", params={"digest": sha(layer)}, content=layer
        ).is_success
        body = json.loads(manifest_of(http, "lab/m", 1))
        body["layers"] = [
            {"mediaType": "application/octet-stream", "digest": sha(layer), "size": len(layer)}
        ]
        manifest = json.dumps(body).encode()

        def put() -> None:
            answers["put"] = httpx.put(
                f"http://{host}/v2/lab/m/manifests/v1", content=manifest, headers=oci, timeout=60
            ).status_code

        def delete() -> None:
            url = f"http://{host}/v2/lab/m/blobs/{sha(layer)}"
            answers["delete"] = httpx.delete(url, timeout=60).status_code

        # A collection holds the store (as `cairn prune` in another process would): the
        # PUT and the DELETE both wait for it, then race.
        lock = os.open(root / ".cairn" / "locks" / "store.lock", os.O_RDWR)
        fcntl.flock(lock, fcntl.LOCK_EX)
        threads = [threading.Thread(target=put), threading.Thread(target=delete)]
        for thread in threads:
            thread.start()
            time.sleep(0.2)
        os.close(lock)
        for thread in threads:
            thread.join(60)
        return (
            answers,
            http.get("/v2/lab/m/manifests/v1").status_code,
            http.get(f"/v2/lab/m/blobs/{sha(layer)}").status_code,
        )


def test_a_manifest_never_outlives_a_blob_deleted_meanwhile(tmp_path: Path) -> None:
    for trial in range(3):
        answers, stored, blob = put_and_delete_racing(tmp_path / f"s{trial}", b"layer %d" % trial)
        assert (stored, blob) != (200, 404), answers  # a manifest naming a missing blob
        assert sorted(answers.values()) in ([201, 405], [202, 400]), answers


def test_numbers_and_vanishing_clients_are_not_server_errors(tmp_path: Path) -> None:
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        session = start(http, "lab/n")
        for header in ("9" * 5000 + "-1", "²-0"):
            answer = httpx.patch(session, content=b"x", headers={b"Content-Range": header.encode()})
            assert answer.status_code == 416, (header, answer.status_code)
        for count in ("²", "9" * 5000):
            assert http.get("/v2/lab/n/tags/list", params={"n": count}).status_code in (400, 404)
        # Clients that go away mid-body: nothing to answer, nothing broken.
        for method, path in (
            ("PATCH", session.split(host, 1)[1]),
            ("POST", f"/v2/lab/n/blobs/uploads/?digest={sha(b'y' * 100)}"),
            ("PUT", "/v2/lab/n/manifests/t"),
        ):
            conn = socket.create_connection(tuple(host.split(":")))  # type: ignore[arg-type]
            conn.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\n".encode()
                + b"{" * 10
            )
            time.sleep(0.2)
            conn.close()
        time.sleep(0.3)
        assert http.get("/v2/").status_code == 200  # still serving
        status = http.get(session)
        assert status.status_code == 204  # the session lives on, consistent
        held = int(status.headers["Range"].split("-")[1]) + 1
        data = b"{" * held + b"rest"
        resumed = httpx.patch(
            session, content=b"rest", headers={"Content-Range": f"{held}-{held + 3}"}
        )
        assert resumed.status_code == 202
        done = httpx.put(str(resumed.headers["Location"]), params={"digest": sha(data)})
        assert done.status_code == 201
