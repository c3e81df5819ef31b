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
