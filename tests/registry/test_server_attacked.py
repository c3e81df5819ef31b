"""``cairn registry serve`` against what a third attack on it proved (each failed before)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx

from tests.conftest import cairn_env, serve_command, serving

OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image(http: httpx.Client, repo: str, pad: int = 0, layers: list[object] | None = None) -> bytes:
    config = b"{}"
    http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(config)}, content=config)
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(config),
            "size": 2,
        },
        "layers": layers or [],
    }
    if pad:
        body["annotations"] = {"pad": "x" * pad}
    return json.dumps(body).encode()


def test_manifests_count_against_the_quota_at_once(tmp_path: Path) -> None:
    with (
        serving(tmp_path / "served", "--quota", "1M") as host,
        httpx.Client(base_url=f"http://{host}") as http,
    ):
        answers = [
            http.put(
                f"/v2/lab/q/manifests/t{i}",
                content=image(http, "lab/q", 400_000 + i),
                headers={"Content-Type": OCI},
            ).status_code
            for i in range(3)
        ]
        assert answers == [201, 201, 403]


def test_tags_differing_in_case_pushed_at_once_never_both_land(tmp_path: Path) -> None:
    with (
        serving(tmp_path / "served") as host,
        httpx.Client(base_url=f"http://{host}") as http,
    ):
        bodies = {tag: image(http, "lab/c", len(tag) + i) for i, tag in enumerate(["tag", "TAG"])}
        for round_ in range(10):

            def put(tag: str, round_: int = round_) -> None:
                httpx.put(
                    f"http://{host}/v2/lab/c/manifests/{tag}{round_}",
                    content=bodies[tag],
                    headers={"Content-Type": OCI},
                )

            threads = [threading.Thread(target=put, args=(tag,)) for tag in bodies]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        folder = tmp_path / "served" / "manifests" / "registry.ollama.ai" / "lab" / "c"
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        assert len(names) == 10 and len({n.lower() for n in names}) == 10
        for name in names:  # each file holds what was pushed under its own spelling
            assert (folder / name).read_bytes() == bodies[name.rstrip("0123456789")]


def chunks(data: bytes) -> Iterator[bytes]:
    yield data[:3]
    yield data[3:]


def test_a_chunked_body_is_held_to_its_range(tmp_path: Path) -> None:
    data = b"0123456789"
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        session = http.post("/v2/lab/r/blobs/uploads/").headers["Location"]
        lying = http.patch(session, content=chunks(data[:4]), headers={"Content-Range": "0-999"})
        assert lying.status_code == 416
        assert http.get(session).headers["Range"] == "0-0"  # taken back: nothing appended
        for header in ("abc-def", "7-8"):
            bad = http.put(
                session,
                params={"digest": sha(data)},
                content=chunks(data),
                headers={"Content-Range": header},
            )
            assert bad.status_code == 416, header
        ok = http.patch(session, content=chunks(data[:4]), headers={"Content-Range": "0-3"})
        assert ok.status_code == 202
        done = http.put(
            session,
            params={"digest": sha(data)},
            content=chunks(data[4:]),
            headers={"Content-Range": "4-9"},
        )
        assert done.status_code == 201
        assert http.get(f"/v2/lab/r/blobs/{sha(data)}").content == data


def test_a_login_flood_is_answered_not_queued(tmp_path: Path) -> None:
    users = tmp_path / "htpasswd"
    users.write_text(f"carol:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=12)).decode()}\n")
    with serving(tmp_path / "served", "--htpasswd", str(users)) as host:
        answers: list[int] = []

        def wrong() -> None:
            answers.append(
                httpx.get(f"http://{host}/v2/", auth=("x", "y"), timeout=120).status_code
            )

        threads = [threading.Thread(target=wrong) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert 429 in answers and set(answers) <= {401, 429}
        assert httpx.get(f"http://{host}/v2/", auth=("carol", "pw"), timeout=60).status_code == 200


def test_a_malformed_htpasswd_line_stops_the_server_from_starting(tmp_path: Path) -> None:
    users = tmp_path / "htpasswd"
    good = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    users.write_text(f"carol:{good}\neve:$2y$31$abc\n")
    started = subprocess.run(
        serve_command(tmp_path / "s", 1, "--htpasswd", str(users)),
        env=cairn_env(tmp_path / "s"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 1
    assert started.stderr == (
        f"Error: {users} line 2: not a bcrypt hash of cost 4 to 16 ($2y$10$ and 53 more)\n"
    )


def test_foreign_layers_are_only_what_the_spec_says(tmp_path: Path) -> None:
    missing = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": sha(b"gone"),
        "size": 4,
    }
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        for urls in ([], None, "x", ["file:///etc/passwd"]):
            body = image(http, "lab/f", layers=[{**missing, "urls": urls}])
            put = http.put("/v2/lab/f/manifests/v1", content=body, headers={"Content-Type": OCI})
            assert put.status_code == 400, urls
        odd = {**missing, "mediaType": "application/x-nondistributable-ish"}
        put = http.put(
            "/v2/lab/f/manifests/v1",
            content=image(http, "lab/f", layers=[odd]),
            headers={"Content-Type": OCI},
        )
        assert put.status_code == 400


def test_an_index_referrer_without_a_media_type_is_listed_as_an_index(tmp_path: Path) -> None:
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        subject_body = image(http, "lab/i")
        http.put("/v2/lab/i/manifests/v1", content=subject_body, headers={"Content-Type": OCI})
        subject = {"mediaType": OCI, "digest": sha(subject_body), "size": len(subject_body)}
        index = json.dumps(
            {"schemaVersion": 2, "manifests": [subject], "subject": subject}
        ).encode()
        http.put(
            f"/v2/lab/i/manifests/{sha(index)}", content=index, headers={"Content-Type": INDEX}
        )
        listed = http.get(f"/v2/lab/i/referrers/{sha(subject_body)}").json()["manifests"]
        assert [m["mediaType"] for m in listed] == [INDEX]


def test_asking_for_an_uploads_status_keeps_nothing_alive(tmp_path: Path) -> None:
    with (
        serving(tmp_path / "served", "--upload-expiry", "1") as host,
        httpx.Client(base_url=f"http://{host}") as http,
    ):
        session = http.post("/v2/lab/s/blobs/uploads/").headers["Location"]
        deadline = time.monotonic() + 15
        while http.get(session).status_code == 204 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert http.get(session).status_code == 404


# A fourth attack: writes racing each other and a held store lock.


def hold_store(root: Path) -> int:
    """The store's lock, held as a `cairn prune` in another process holds it."""
    import fcntl
    import os

    (root / ".cairn" / "locks").mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".cairn" / "locks" / "store.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def stored_bytes(root: Path) -> int:
    files = [
        *(root / "blobs").iterdir(),
        *(p for p in (root / "manifests").rglob("*") if p.is_file()),
    ]
    return sum(p.stat().st_size for p in files)


def seal_both_at_once(root: Path) -> int:
    """A blob's finishing PUT and a manifest PUT, both waiting on a held store lock,
    released together; the bytes stored afterwards."""
    import os

    blob = b"b" * 600_000
    with (
        serving(root, "--quota", "1M") as host,
        httpx.Client(base_url=f"http://{host}", timeout=60) as http,
    ):
        manifest = image(http, "lab/q", 500_000)
        session = http.post("/v2/lab/q/blobs/uploads/").headers["Location"]
        assert http.patch(session, content=blob).status_code == 202

        def put_manifest() -> None:
            http.put("/v2/lab/q/manifests/v1", content=manifest, headers={"Content-Type": OCI})

        def finish_blob() -> None:
            http.put(session, params={"digest": sha(blob)})

        lock = hold_store(root)
        threads = [threading.Thread(target=put_manifest), threading.Thread(target=finish_blob)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        os.close(lock)
        for thread in threads:
            thread.join(60)
    return stored_bytes(root)


def test_a_blob_and_a_manifest_sealed_at_once_keep_to_the_quota(tmp_path: Path) -> None:
    for trial in range(4):
        assert seal_both_at_once(tmp_path / f"q{trial}") <= 1_000_000


def race_writes_and_deletes(http: httpx.Client, body: bytes, i: int) -> list[int]:
    """A repository's only tag deleted while another is written into its folder, and a
    blob read while it is deleted; every answer."""
    data = b"deleted while read"
    assert http.put(f"/v2/lab/r{i}/manifests/a", content=body, headers={"Content-Type": OCI})
    http.post("/v2/lab/d/blobs/uploads/", params={"digest": sha(data)}, content=data)
    answers: list[int] = []

    def put_tag() -> None:
        headers = {"Content-Type": OCI}
        answers.append(
            http.put(f"/v2/lab/r{i}/manifests/b", content=body, headers=headers).status_code
        )

    def delete_tag() -> None:
        answers.append(http.delete(f"/v2/lab/r{i}/manifests/a").status_code)

    def read_blob() -> None:
        answers.append(http.head(f"/v2/lab/d/blobs/{sha(data)}").status_code)

    def delete_blob() -> None:
        answers.append(http.delete(f"/v2/lab/d/blobs/{sha(data)}").status_code)

    threads = [
        threading.Thread(target=job) for job in (put_tag, delete_tag, read_blob, delete_blob)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def test_writes_racing_deletes_are_no_server_errors(tmp_path: Path) -> None:
    with (
        serving(tmp_path / "served") as host,
        httpx.Client(base_url=f"http://{host}", timeout=60) as http,
    ):
        body = image(http, "lab/d")
        answers = [a for i in range(15) for a in race_writes_and_deletes(http, body, i)]
        assert 500 not in answers, answers


def test_a_held_store_lock_does_not_stall_reads(tmp_path: Path) -> None:
    import os

    root = tmp_path / "served"
    with (
        serving(root) as host,
        httpx.Client(base_url=f"http://{host}", timeout=60) as http,
    ):
        kept = b"readable"
        http.post("/v2/lab/h/blobs/uploads/", params={"digest": sha(kept)}, content=kept)
        sessions = []
        for i in range(8):
            session = http.post("/v2/lab/h/blobs/uploads/").headers["Location"]
            sessions.append((session, b"blob %d" % i))
            assert http.patch(session, content=sessions[-1][1]).status_code == 202
        lock = hold_store(root)
        finishing = [
            threading.Thread(target=lambda s=s, d=d: http.put(s, params={"digest": sha(d)}))
            for s, d in sessions
        ]
        for thread in finishing:
            thread.start()
        time.sleep(0.5)  # all eight wait for the store now
        try:
            started = time.monotonic()
            head = httpx.head(f"http://{host}/v2/lab/h/blobs/{sha(kept)}", timeout=10)
            assert head.status_code == 200 and time.monotonic() - started < 5
        finally:
            os.close(lock)
        for thread in finishing:
            thread.join(60)
        assert all(http.head(f"/v2/lab/h/blobs/{sha(d)}").status_code == 200 for _, d in sessions)
