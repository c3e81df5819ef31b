"""``GET /v2/_catalog`` on ``cairn registry serve``: what distribution answers, page by page."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import bcrypt
import httpx

from tests.conftest import Runner, serving
from tests.registry.test_pull_push import make_model

OCI = "application/vnd.oci.image.manifest.v1+json"
CONFIG = b'{"model_format":"gguf"}'
REPOSITORIES = ["lab/b", "lab/a", "team/x", "lab/c", "zoo/m", "lab/a-b"]


def put_repository(http: httpx.Client, repo: str, tag: str = "1") -> None:
    """A one-blob image in ``repo``, pushed as any client does (POST, then PUT the blob)."""
    digest = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
    started = http.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    done = http.put(
        location + ("&" if "?" in location else "?") + f"digest={digest}", content=CONFIG
    )
    assert done.status_code == 201, done.text
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI,
        "config": {"mediaType": "application/vnd.cairn.test+json", "digest": digest, "size": 23},
        "layers": [],
    }
    put = http.put(
        f"/v2/{repo}/manifests/{tag}",
        content=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI},
    )
    assert put.status_code == 201, put.text


def answers(http: httpx.Client, query: str) -> tuple[int, object, str | None]:
    response = http.get("/v2/_catalog" + query)
    return response.status_code, response.json(), response.headers.get("Link")


def pages(http: httpx.Client, n: int) -> list[list[str]]:
    """Every page of the catalog ``n`` at a time, following each ``Link``."""
    found = []
    url: str | None = f"/v2/_catalog?n={n}"
    while url is not None:
        response = http.get(url)
        assert response.status_code == 200
        found.append(response.json()["repositories"])
        link = response.headers.get("Link")
        url = link.partition("<")[2].partition(">")[0] if link else None
        assert len(found) < 20
    return found


def test_the_catalog_pages_as_distribution_does(tmp_path: Path, registry: str) -> None:
    with (
        serving(tmp_path / "served") as host,
        httpx.Client(base_url=f"http://{host}") as ours,
        httpx.Client(base_url=f"http://{registry}") as theirs,
    ):
        for repo in REPOSITORIES:
            put_repository(ours, repo)
            put_repository(theirs, repo)
        listed = sorted(REPOSITORIES)
        assert answers(ours, "") == (200, {"repositories": listed}, None)
        queries = ["", "?n=2", "?n=0", "?n=6", "?n=5", "?last=lab/b", "?last=lab/a&n=2"]
        queries += ["?last=zoo/m", "?last=m&n=1", "?last=zzz&n=3", "?n=100"]
        for query in queries:
            assert answers(ours, query) == answers(theirs, query), query
        # The Link carries `last` escaped, as distribution writes it.
        assert answers(ours, "?n=2")[2] == '</v2/_catalog?last=lab%2Fa-b&n=2>; rel="next"'
        for n in (1, 2, 4, 6):
            assert pages(ours, n) == pages(theirs, n)
            assert [name for page in pages(ours, n) for name in page] == listed
        refused = ours.get("/v2/_catalog?n=many")
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


def test_the_catalog_lists_what_the_store_holds_by_the_names_that_reach_it(
    tmp_path: Path, cairn: Runner, store: Path
) -> None:
    make_model(cairn, tmp_path, "tiny:1", size_mb=1)
    cairn("cp", "tiny:1", "lab/one:1")
    cairn("cp", "tiny:1", "lab/one:2")
    cairn("cp", "tiny:1", "ghcr.io/org/model:1")  # pulled from another registry, say
    cairn("cp", "tiny:1", "127.0.0.1:5000/lab/ported:1")  # no OCI name can carry the port
    with serving(store) as host, httpx.Client(base_url=f"http://{host}") as http:
        listed = http.get("/v2/_catalog").json()["repositories"]
        assert listed == ["ghcr.io/org/model", "lab/one", "library/tiny"]
        for name in listed:  # every name listed reaches its repository
            tags = http.get(f"/v2/{name}/tags/list")
            assert tags.status_code == 200, name
        assert http.get("/v2/lab/one/tags/list").json()["tags"] == ["1", "2"]
        cairn("push", "tiny:1", f"{host}/fresh/pushed:7", "--insecure", "-q")
        listed = http.get("/v2/_catalog").json()["repositories"]
        assert listed == ["fresh/pushed", "ghcr.io/org/model", "lab/one", "library/tiny"]
        cairn("rm", "lab/one:1", "lab/one:2")
        assert "lab/one" not in http.get("/v2/_catalog").json()["repositories"]


def test_the_catalog_is_read_as_every_other_read_is(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"pw-of-alice", bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    root = tmp_path / "served"
    alice = httpx.BasicAuth("alice", "pw-of-alice")
    with serving(root, "--htpasswd", str(htpasswd)) as host:
        with httpx.Client(base_url=f"http://{host}", auth=alice) as http:
            put_repository(http, "lab/secret")
            assert answers(http, "") == (200, {"repositories": ["lab/secret"]}, None)
        anonymous = httpx.get(f"http://{host}/v2/_catalog")
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
        assert "lab/secret" not in anonymous.text
        wrong = httpx.get(f"http://{host}/v2/_catalog", auth=httpx.BasicAuth("alice", "no"))
        assert wrong.status_code == 401
    with serving(root, "--htpasswd", str(htpasswd), "--public-read") as host:
        anonymous = httpx.get(f"http://{host}/v2/_catalog")
        assert anonymous.status_code == 200
        assert anonymous.json() == {"repositories": ["lab/secret"]}
