"""``cairn registry serve`` against what a user or a client may throw at it: catalog and
tag queries that are no numbers or lead nowhere, a store whose folders hold odd names,
listen addresses that are no host, TLS files that are damaged. Every answer is a
registry error (never a 500), every refusal to start one line and exit 1."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import Runner, self_signed, serving
from tests.registry.test_server_catalog import put_repository

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.cairn.test+json",
            "digest": "sha256:" + "0" * 64,
            "size": 1,
        },
        "layers": [],
    }
).encode()


def fails(result: object) -> str:
    """The one line of a command that refused to start: exit 1, no traceback, no "serving"."""
    assert getattr(result, "returncode", None) == 1, result
    out, err = getattr(result, "stdout", ""), getattr(result, "stderr", "")
    assert "Traceback" not in out + err
    assert "serving" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return str(lines[0])


@pytest.mark.parametrize(
    "query",
    ["n=-1", "n=abc", "n=", "n=99999999999999999999", "n=%EF%BC%91", "n=1.5", "n=0x10"],
)
def test_a_page_size_that_is_no_number_is_refused_as_distribution_refuses_it(
    tmp_path: Path, query: str
) -> None:
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        put_repository(http, "lab/a")
        refused = http.get(f"/v2/_catalog?{query}")
        assert refused.status_code == 400, refused.text
        assert refused.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
        tags = http.get(f"/v2/lab/a/tags/list?{query}")
        assert tags.status_code == 400, tags.text


def test_last_is_a_name_to_start_after_never_a_path(tmp_path: Path) -> None:
    with serving(tmp_path / "served") as host, httpx.Client(base_url=f"http://{host}") as http:
        for repo in ("lab/a", "lab/b", "team/c"):
            put_repository(http, repo)
        for last in ("../../etc", "/", "%00", "lab/a/../b", "\x1b[2J", "z" * 5000):
            answer = http.get("/v2/_catalog", params={"last": last, "n": "2"})
            assert answer.status_code == 200, (last, answer.text)
            listed = answer.json()["repositories"]
            assert listed == [r for r in ("lab/a", "lab/b", "team/c") if r > last][:2]
        # a huge n is every repository, and no Link
        every = http.get("/v2/_catalog?n=999999999999999999")
        assert every.json()["repositories"] == ["lab/a", "lab/b", "team/c"]
        assert "Link" not in every.headers
        # the Link of a tag page leads to the next page, and the last page has none
        page = http.get("/v2/lab/a/tags/list?n=1&last=%2F..")
        assert page.status_code == 200 and page.json()["tags"] == ["1"]


def test_odd_folders_in_the_store_are_never_listed_nor_a_500(tmp_path: Path) -> None:
    root = tmp_path / "served"
    repositories = root / "manifests" / "registry.ollama.ai"
    for namespace, name in [
        ("odd", "esc\x1b[2J"),
        ("odd", "with space"),
        ("odd", "semi;colon"),
        ("odd", "Upper"),  # Ollama's names ignore case: listed as it is reached, lower case
        ("odd", "ü"),
        ("lab", "fine"),
    ]:
        folder = repositories / namespace / name
        folder.mkdir(parents=True)
        (folder / "1").write_bytes(MANIFEST)
    (repositories / "lab" / "fine" / "a\x1btag").write_bytes(MANIFEST)  # no tag can be that
    (repositories / "lab" / "fine" / "sub").mkdir()  # a folder where tags are files
    (repositories / "lab" / "loop").symlink_to(repositories / "lab")
    (repositories / "lab" / "file").write_bytes(b"not a folder")
    (root / "manifests" / "a-file-for-a-host").write_bytes(b"x")
    (root / "blobs").mkdir()
    with serving(root) as host, httpx.Client(base_url=f"http://{host}") as http:
        listed = http.get("/v2/_catalog")
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"repositories": ["lab/fine", "odd/upper"]}
        for name in listed.json()["repositories"]:  # every name listed reaches its tags
            tags = http.get(f"/v2/{name}/tags/list")
            assert tags.status_code == 200, tags.text
            assert tags.json()["tags"] == ["1"]
        paged = [http.get("/v2/_catalog", params={"n": "1", "last": last}) for last in ("", "lab")]
        assert [p.json()["repositories"] for p in paged] == [["lab/fine"], ["lab/fine"]]


def test_a_listen_address_that_is_no_host_is_one_line(cairn: Runner, store: Path) -> None:
    for addr in ("a..b:5000", "-x:5000", "host/path:5000", f"{'a' * 64}:5000", "a b:5000"):
        line = fails(cairn("registry", "serve", "--addr", addr, check=False))
        assert "is not a host name or an IP address" in line, line
        assert "--addr" in line


def test_a_port_in_use_on_one_of_a_names_addresses_is_one_line(cairn: Runner, store: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for addr in (f"localhost:{port}", f"127.0.0.1:{port}"):
            line = fails(cairn("registry", "serve", "--addr", addr, check=False))
            assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in line


def test_damaged_tls_files_are_named_in_one_line(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    damaged_cert = tmp_path / "damaged.crt"
    damaged_cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    damaged_key = tmp_path / "damaged.key"
    damaged_key.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    key_only = tmp_path / "key-only.pem"  # a key where the certificate should be
    key_only.write_bytes(key.read_bytes())
    cases = [
        (damaged_cert, key, "--tls-cert damaged.crt: its certificate cannot be read"),
        (cert, damaged_key, "--tls-key damaged.key: its private key cannot be read"),
        (key_only, key, "--tls-cert key-only.pem is not a PEM certificate"),
        (cert, cert, "--tls-key registry.crt is not a PEM private key"),
    ]
    for cert_file, key_file, said in cases:
        result = cairn(
            "registry",
            "serve",
            "--addr",
            "127.0.0.1:1",  # never reached: the files are read first
            "--tls-cert",
            cert_file.name,
            "--tls-key",
            key_file.name,
            cwd=tmp_path,
            check=False,
        )
        line = fails(result)
        assert said in line, line
        assert "_ssl.c" not in line and "PEM lib" not in line
    # a device that never ends is read up to a cap, not until memory runs out
    zero = ("--tls-cert", "/dev/zero", "--tls-key", str(key))
    line = fails(cairn("registry", "serve", *zero, check=False))
    assert "--tls-cert /dev/zero is larger than 1048576 bytes: not a PEM file" in line
    directory = tmp_path / "a-folder.crt"
    directory.mkdir()
    result = cairn(
        "registry", "serve", "--tls-cert", str(directory), "--tls-key", str(key), check=False
    )
    assert result.returncode == 2 and "is a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_pages_after_the_first_read_the_listing_the_first_page_walked(
    cairn: Runner, store: Path
) -> None:
    # A walk reads every repository's folder: one per page would make paging through
    # N repositories n at a time cost N*N/n walks' worth (2 s a page at 20,000).
    with serving(store) as host, httpx.Client(base_url=f"http://{host}") as http:
        for repo in ("lab/a", "lab/b", "lab/c"):
            put_repository(http, repo)
        first = http.get("/v2/_catalog?n=1")
        assert first.json()["repositories"] == ["lab/a"]
        cairn("rm", "lab/b:1")  # gone between the first page and the next
        url: str | None = first.headers["Link"].partition("<")[2].partition(">")[0]
        rest = []
        while url:
            answer = http.get(url)
            rest += answer.json()["repositories"]
            url = answer.headers.get("Link", "").partition("<")[2].partition(">")[0]
        assert rest == ["lab/b", "lab/c"]  # the listing of the first page, to its end
        fresh = http.get("/v2/_catalog?n=5")  # a first page walks the store again
        assert fresh.json()["repositories"] == ["lab/a", "lab/c"]
        assert http.get("/v2/lab/b/tags/list").status_code == 404


def test_an_ipv4_address_written_as_ipv6_is_named(cairn: Runner, store: Path) -> None:
    line = fails(cairn("registry", "serve", "--addr", "[::ffff:127.0.0.1]:5000", check=False))
    assert "'::ffff:127.0.0.1' is an IPv4 address written as IPv6; write 127.0.0.1:5000" in line
