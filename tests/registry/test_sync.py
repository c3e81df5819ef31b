"""``cairn sync``: registry to registry (two real docker-registries), and into a layout."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp import web

from cairn.blobstore import Digest
from cairn.errors import RegistryError
from cairn.registry.client import RegistryClient
from cairn.registry.locations import FILE_NAME, BlobLocations
from cairn.registry.mirror.sync import TAGS_LIMIT, TAGS_MAX, list_tags
from cairn.registry.mirror.syncfile import backtracks_badly
from tests.conftest import Runner, free_port, serving, start_registry, stop, wait_until_serving
from tests.registry.hostile import HostileRegistry
from tests.registry.hostile import digest as sha256
from tests.registry.test_pull_push import login, make_model, other_store
from tests.tokenserver import TokenServer

ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


class LoggedRegistry:
    """A docker-registry whose access log (every request) goes to a file."""

    def __init__(self, root: Path) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:  # no skip: `make sysdeps` installs it
            pytest.fail("docker-registry is not installed (make sysdeps installs it)")
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = root / "registry.yml"
        config.write_text(
            "version: 0.1\nlog: {level: info}\nstorage:\n"
            f"  filesystem: {{rootdirectory: {root / 'data'}}}\n  delete: {{enabled: true}}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        self.log = root / "registry.log"
        with open(self.log, "wb") as sink:
            self.proc = subprocess.Popen(
                [binary, "serve", str(config)], stdout=sink, stderr=subprocess.STDOUT
            )
        wait_until_serving(self.proc, port, "docker-registry")
        self.host = f"127.0.0.1:{port}"

    def requests(self, method: str, fragment: str) -> int:
        """How many requests of ``method`` to a path holding ``fragment`` were answered."""
        count = 0
        for line in self.log.read_text(errors="replace").splitlines():
            if "response completed" in line and f"http.request.method={method} " in line:
                count += fragment in line
        return count


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[LoggedRegistry]:
    registry = LoggedRegistry(tmp_path / "dest-registry")
    yield registry
    stop(registry.proc)


def manifest_digest(host: str, repository: str, tag: str) -> str | None:
    response = httpx.head(
        f"http://{host}/v2/{repository}/manifests/{tag}", headers={"Accept": ACCEPT}
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response
    return str(response.headers["Docker-Content-Digest"])


def catalog(host: str) -> list[str]:
    return list(httpx.get(f"http://{host}/v2/_catalog").json()["repositories"] or [])


def sync_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sync.yaml"
    path.write_text(text)
    return path


def summary_of(output: str) -> dict[str, object]:
    last: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    assert "copied" in last and "failed" in last
    return last


@pytest.fixture
def source(cairn: Runner, tmp_path: Path, registry: str) -> str:
    """``registry`` holding lab/a (tags 1, rc1, rc2, old) and lab/b (v1, v2)."""
    make_model(cairn, tmp_path, "one:1", size_mb=3)
    make_model(cairn, tmp_path, "two:1", size_mb=2)
    for model, ref in [
        ("one:1", "lab/a:1"),
        ("two:1", "lab/a:rc1"),
        ("one:1", "lab/a:rc2"),
        ("two:1", "lab/a:old"),
        ("one:1", "lab/b:v1"),
        ("two:1", "lab/b:v2"),
    ]:
        cairn("push", model, f"{registry}/{ref}", "--insecure", "-q")
    return registry


def test_yaml_sync_into_an_empty_registry_then_again(
    cairn: Runner, tmp_path: Path, source: str, dest: LoggedRegistry
) -> None:
    config = sync_file(
        tmp_path,
        f"""
{source}:
  tls-verify: false
  images:
    lab/a: ["1"]
    lab/b: []
  images-by-tag-regex:
    lab/a: ^rc
""",
    )
    target = dest.host
    done = cairn("sync", str(config), target, "--dest-insecure", "--json")
    summary = summary_of(done.stdout)
    wanted = ["lab/a:1", "lab/a:rc1", "lab/a:rc2", "lab/b:v1", "lab/b:v2"]
    assert summary["copied"] == sorted(f"{source}/{w}" for w in wanted)
    assert summary["failed"] == [] and summary["skipped"] == []
    assert manifest_digest(dest.host, "lab/a", "old") is None  # not asked for

    # Each model pulls from the destination, byte for byte the source's.
    elsewhere = other_store(tmp_path, cairn)
    for name in wanted:
        repository, _, tag = name.partition(":")
        digest = manifest_digest(dest.host, repository, tag)
        assert digest == manifest_digest(source, repository, tag)
        elsewhere("pull", f"{dest.host}/{name}", "--insecure", "-q")
        kept = tmp_path / "other" / "manifests" / dest.host / repository / tag
        assert f"sha256:{hashlib.sha256(kept.read_bytes()).hexdigest()}" == digest
    assert "all intact" in elsewhere("verify").stdout
    uploads = dest.requests("POST", "/blobs/uploads/")
    patches = dest.requests("PATCH", "/blobs/uploads/")
    assert uploads > 0 and dest.requests("PUT", "/manifests/") == 5

    again = cairn("sync", str(config), target, "--dest-insecure", "--json")
    second = summary_of(again.stdout)
    assert second["copied"] == [] and len(second["skipped"]) == 5  # type: ignore[arg-type]
    assert second["blobs"] == {"copied": 0, "mounted": 0, "present": 0, "bytes": 0}
    assert dest.requests("POST", "/blobs/uploads/") == uploads  # no upload, no mount
    assert dest.requests("PATCH", "/blobs/uploads/") == patches
    assert dest.requests("PUT", "/manifests/") == 5


def test_one_repository_reference_and_one_tag(
    cairn: Runner, source: str, dest: LoggedRegistry
) -> None:
    cairn("sync", f"{source}/lab/b:v2", dest.host, "--insecure", "--dest-insecure", "-q")
    assert catalog(dest.host) == ["lab/b"]
    assert manifest_digest(dest.host, "lab/b", "v2") == manifest_digest(source, "lab/b", "v2")
    assert manifest_digest(dest.host, "lab/b", "v1") is None
    out = cairn("sync", f"http://{source}/lab/b", dest.host, "--dest-insecure").stdout
    assert "1 copied, 1 skipped, 0 failed" in out
    assert manifest_digest(dest.host, "lab/b", "v1") == manifest_digest(source, "lab/b", "v1")


def test_the_same_blobs_into_a_second_repository_are_mounted(
    cairn: Runner, source: str, dest: LoggedRegistry, tmp_path: Path
) -> None:
    home = {"CAIRN_HOME": str(tmp_path / "home")}
    cairn("sync", f"{source}/lab/b:v1", f"{dest.host}/x", "--insecure", "--dest-insecure", env=home)
    before = dest.requests("PATCH", "/blobs/uploads/")
    out = cairn(
        "sync",
        f"{source}/lab/b:v1",
        f"{dest.host}/y",
        "--insecure",
        "--dest-insecure",
        "--json",
        env=home,
    ).stdout
    manifest = httpx.get(
        f"http://{source}/v2/lab/b/manifests/v1", headers={"Accept": ACCEPT}
    ).json()
    blobs = len({d["digest"] for d in [manifest["config"], *manifest["layers"]]})
    assert summary_of(out)["blobs"] == {"copied": 0, "mounted": blobs, "present": 0, "bytes": 0}
    assert dest.requests("PATCH", "/blobs/uploads/") == before
    assert dest.requests("POST", "mount=") == blobs
    assert manifest_digest(dest.host, "y/lab/b", "v1") == manifest_digest(source, "lab/b", "v1")


def test_dry_run_writes_nothing(
    cairn: Runner, tmp_path: Path, source: str, dest: LoggedRegistry
) -> None:
    out = cairn(
        "sync",
        f"{source}/lab/a",
        dest.host,
        "--insecure",
        "--dest-insecure",
        "--dry-run",
        "--json",
    ).stdout
    summary = summary_of(out)
    assert summary["dry_run"] is True and len(summary["copied"]) == 4  # type: ignore[arg-type]
    assert catalog(dest.host) == []
    assert dest.requests("POST", "") == dest.requests("PUT", "") == 0
    layout = tmp_path / "layout"
    cairn("sync", f"{source}/lab/a", str(layout), "--insecure", "--dry-run", "-q")
    assert not layout.exists()


def test_unknown_key_names_its_line(cairn: Runner, tmp_path: Path, dest: LoggedRegistry) -> None:
    config = sync_file(
        tmp_path, "127.0.0.1:5000:\n  images:\n    lab/a: []\n  imagez:\n    lab/b: []\n"
    )
    failed = cairn("sync", str(config), dest.host, check=False)
    assert failed.returncode == 1
    assert f"Error: {config}:4: unknown key 'imagez' under 127.0.0.1:5000" in failed.stderr


def test_a_tag_regex_that_does_not_compile(
    cairn: Runner, tmp_path: Path, dest: LoggedRegistry
) -> None:
    config = sync_file(tmp_path, "127.0.0.1:5000:\n  images-by-tag-regex:\n    lab/a: '^v(1'\n")
    failed = cairn("sync", str(config), dest.host, check=False)
    assert failed.returncode == 1
    assert f"{config}:3: the tag regex '^v(1' does not compile" in failed.stderr


def test_keep_going_past_a_missing_repository(
    cairn: Runner, tmp_path: Path, source: str, dest: LoggedRegistry
) -> None:
    config = sync_file(tmp_path, f"{source}:\n  images:\n    lab/nothing: []\n    lab/b: [v1]\n")
    stopped = cairn("sync", str(config), dest.host, "--insecure", "--dest-insecure", check=False)
    assert stopped.returncode == 1
    assert "lab/nothing" in stopped.stderr.splitlines()[-1]
    went_on = cairn(
        "sync",
        str(config),
        dest.host,
        "--insecure",
        "--dest-insecure",
        "--keep-going",
        "--json",
        check=False,
    )
    assert went_on.returncode == 1
    summary = summary_of(went_on.stdout)
    failed = summary["failed"]
    assert isinstance(failed, list) and len(failed) == 1
    assert failed[0]["image"] == f"{source}/lab/nothing (tags)"
    assert "NAME_UNKNOWN" in failed[0]["error"]
    assert summary["copied"] == [f"{source}/lab/b:v1"] or summary["skipped"] == [
        f"{source}/lab/b:v1"
    ]
    assert manifest_digest(dest.host, "lab/b", "v1") == manifest_digest(source, "lab/b", "v1")


def test_a_source_sending_wrong_bytes_leaves_no_blob(
    cairn: Runner, tmp_path: Path, dest: LoggedRegistry
) -> None:
    fake = HostileRegistry()
    try:
        weights = bytes(range(256)) * 8192  # 2 MiB
        fake.add_model("lab/bad", "1", [weights])
        wrong = bytearray(weights)
        wrong[12345] ^= 1
        fake.blobs[sha256(weights)] = bytes(wrong)
        failed = cairn(
            "sync",
            f"{fake.host}/lab/bad:1",
            dest.host,
            "--insecure",
            "--dest-insecure",
            check=False,
        )
    finally:
        fake.stop()
    assert failed.returncode == 1
    assert "digest mismatch" in failed.stderr and sha256(weights) in failed.stderr
    blob = httpx.head(f"http://{dest.host}/v2/lab/bad/blobs/{sha256(weights)}")
    assert blob.status_code == 404
    assert manifest_digest(dest.host, "lab/bad", "1") is None


def test_sync_into_a_directory_and_a_bundle(cairn: Runner, tmp_path: Path, source: str) -> None:
    layout = tmp_path / "layout"
    cairn("sync", f"{source}/lab/b", str(layout), "--insecure", "-q")
    index = json.loads((layout / "index.json").read_bytes())
    names = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    assert names == {
        f"{source}/lab/b:v1": manifest_digest(source, "lab/b", "v1"),
        f"{source}/lab/b:v2": manifest_digest(source, "lab/b", "v2"),
    }
    for path in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    again = cairn("sync", f"{source}/lab/b", str(layout), "--insecure", "--json").stdout
    assert len(summary_of(again)["skipped"]) == 2  # type: ignore[arg-type]

    bundle = tmp_path / "b.tar.zst"
    cairn("sync", f"{source}/lab/b:v1", str(bundle), "--insecure", "-q")
    import zstandard

    with zstandard.open(bundle, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        members = [m.name for m in tar]
    assert members[0] == "oci-layout" and members[-1] == "index.json"

    cut = tmp_path / "cut.tar"  # a failure leaves no bundle that looks whole
    failed = cairn("sync", f"{source}/lab/nothing:1", str(cut), "--insecure", check=False)
    assert failed.returncode == 1
    assert not cut.exists() and not list(tmp_path.glob("*cut.tar*.partial"))


def test_tags_are_followed_through_link_pages(tmp_path: Path, cairn: Runner) -> None:
    """docker-registry 2.8 ignores ``n``; ``cairn registry serve`` pages with ``Link``."""
    make_model(cairn, tmp_path, "tiny:1", size_mb=1)
    root = tmp_path / "served"
    with serving(root) as host:
        for tag in ["a", "b", "c", "d", "e"]:
            cairn("push", "tiny:1", f"{host}/lab/paged:{tag}", "--insecure", "-q")

        async def listed() -> list[str]:
            async with RegistryClient(host, insecure=True) as client:
                return await list_tags(client, "lab/paged", page=2)

        assert sorted(asyncio.run(listed())) == ["a", "b", "c", "d", "e"]
        first = httpx.get(f"http://{host}/v2/lab/paged/tags/list?n=2")
        assert 'rel="next"' in first.headers["Link"]  # three pages were walked


def test_referrers_travel_with_the_model(
    cairn: Runner, tmp_path: Path, dest: LoggedRegistry
) -> None:
    make_model(cairn, tmp_path, "tiny:1", size_mb=1)
    with serving(tmp_path / "served") as host:
        cairn("push", "tiny:1", f"{host}/lab/signed:1", "--insecure", "--format", "oci", "-q")
        subject = manifest_digest(host, "lab/signed", "1")
        assert subject is not None
        signature = b'{"signature": "test"}'
        upload = httpx.post(f"http://{host}/v2/lab/signed/blobs/uploads/")
        location = httpx.URL(f"http://{host}").join(upload.headers["Location"])
        put = httpx.put(
            location.copy_merge_params({"digest": sha256(signature)}), content=signature
        )
        assert put.status_code == 201, put.text
        referrer = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.example.signature",
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": sha256(b"{}"),
                    "size": 2,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.example.signature",
                        "digest": sha256(signature),
                        "size": len(signature),
                    }
                ],
                "subject": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": subject,
                    "size": int(
                        httpx.head(
                            f"http://{host}/v2/lab/signed/manifests/1", headers={"Accept": ACCEPT}
                        ).headers["Content-Length"]
                    ),
                },
            }
        ).encode()
        empty = httpx.post(f"http://{host}/v2/lab/signed/blobs/uploads/")
        httpx.put(
            httpx.URL(f"http://{host}")
            .join(empty.headers["Location"])
            .copy_merge_params({"digest": sha256(b"{}")}),
            content=b"{}",
        ).raise_for_status()
        httpx.put(
            f"http://{host}/v2/lab/signed/manifests/{sha256(referrer)}",
            content=referrer,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        ).raise_for_status()
        cairn("sync", f"{host}/lab/signed:1", dest.host, "--insecure", "--dest-insecure", "-q")
    assert manifest_digest(dest.host, "lab/signed", "1") == subject
    assert manifest_digest(dest.host, "lab/signed", sha256(referrer)) == sha256(referrer)
    copied = httpx.get(f"http://{dest.host}/v2/lab/signed/blobs/{sha256(signature)}")
    assert copied.content == signature


def test_skopeo_reads_what_sync_copied(
    cairn: Runner, tmp_path: Path, registry: str, dest: LoggedRegistry
) -> None:
    if shutil.which("skopeo") is None:  # no skip: `make sysdeps` installs it
        pytest.fail("skopeo is not installed (make sysdeps installs it)")
    gguf = make_model(cairn, tmp_path, "tiny:1", size_mb=1)
    cairn("push", "tiny:1", f"{registry}/oci/tiny:1", "--insecure", "--format", "oci", "-q")
    cairn("sync", f"{registry}/oci/tiny", dest.host, "--insecure", "--dest-insecure", "-q")
    out = tmp_path / "skopeo-dir"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--src-tls-verify=false",
            f"docker://{dest.host}/oci/tiny:1",
            f"dir:{out}",
        ],
        check=True,
        timeout=120,
    )
    assert (out / hashlib.sha256(gguf.read_bytes()).hexdigest()).read_bytes() == gguf.read_bytes()


def test_blobs_copied_once_per_run_and_mounted_into_the_next_repository(
    cairn: Runner, tmp_path: Path, source: str, dest: LoggedRegistry
) -> None:
    """lab/a:1 and lab/b:v1 are the same model: its blobs go up once, then are mounted."""
    config = sync_file(tmp_path, f"{source}:\n  images:\n    lab/a: ['1']\n    lab/b: [v1]\n")
    home = {"CAIRN_HOME": str(tmp_path / "fresh-home")}  # no blob-location cache to help
    lines = cairn(
        "sync", str(config), dest.host, "--insecure", "--dest-insecure", "--json", env=home
    ).stdout.splitlines()
    manifest = httpx.get(
        f"http://{source}/v2/lab/b/manifests/v1", headers={"Accept": ACCEPT}
    ).json()
    blobs = {d["digest"]: d["size"] for d in [manifest["config"], *manifest["layers"]]}
    summary = summary_of("\n".join(lines))
    assert summary["blobs"] == {
        "copied": len(blobs),
        "mounted": len(blobs),
        "present": 0,
        "bytes": sum(blobs.values()),
    }
    assert dest.requests("PATCH", "/blobs/uploads/") == len(blobs)
    assert dest.requests("POST", "mount=") == len(blobs)
    events = [json.loads(line) for line in lines[:-1]]
    for digest, size in blobs.items():  # progress as `cairn pull --json` gives it
        assert {"status": f"copying {digest[7:19]}", "digest": digest, "total": size,
                "completed": size} in events  # fmt: skip
    for repository, tag in [("lab/a", "1"), ("lab/b", "v1")]:
        assert manifest_digest(dest.host, repository, tag) == manifest_digest(
            source, repository, tag
        )


# -- attacked: mounts, stalls, endless lists, hostile patterns, duplicate keys -----------


class DenyingTokenServer(TokenServer):
    """Grants every scope asked for except those of ``secret/...`` repositories."""

    asked: list[str]

    def token(self, scopes: list[str]) -> str:
        wanted = " ".join(scopes).split()
        self.asked = [*getattr(self, "asked", []), *wanted]
        return super().token([s for s in wanted if not s.startswith("repository:secret/")])


def test_a_mount_from_a_repository_the_user_cannot_read_falls_back_to_an_upload(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    """The blob-location cache names secret/model, which this user may not read: the
    mount is refused (401 on a real token-auth distribution), the blob is uploaded, and
    the location is forgotten. Before: the image failed."""
    make_model(cairn, tmp_path, "m:1", size_mb=1)
    cairn("push", "m:1", f"{registry}/lab/m:1", "--insecure", "-q")
    root = tmp_path / "token-dest"
    root.mkdir()
    server = DenyingTokenServer(root, "bob", "t0ken-pw")
    host, proc = start_registry(root, auth=server.registry_auth())
    try:
        env = {
            "CAIRN_HOME": str(tmp_path / "home"),
            "DOCKER_CONFIG": str(tmp_path / "no-docker"),
            "CAIRN_TOKEN_REALMS": f"http://{urlsplit(server.url).netloc}",
        }
        login(cairn, host, "bob", "t0ken-pw", env)
        manifest = httpx.get(
            f"http://{registry}/v2/lab/m/manifests/1", headers={"Accept": ACCEPT}
        ).json()
        digests = {d["digest"] for d in [manifest["config"], *manifest["layers"]]}
        cache = BlobLocations(tmp_path / "home" / FILE_NAME)
        cache.remember(host, "secret/model", [Digest.parse(d) for d in digests])
        done = cairn(
            "sync",
            f"{registry}/lab/m:1",
            host,
            "--insecure",
            "--dest-insecure",
            "--json",
            env=env,
        )
        summary = summary_of(done.stdout)
        assert summary["copied"] == [f"{registry}/lab/m:1"] and summary["failed"] == []
        assert summary["blobs"]["copied"] == len(digests)  # type: ignore[index]
        # The mount was tried with the pull scope of the repository it names.
        assert "repository:secret/model:pull" in server.asked
        for each in digests:
            assert cache.where(host, Digest.parse(each)) == ["lab/m"]
        theirs = other_store(tmp_path, cairn)
        theirs("pull", f"{host}/lab/m:1", "--insecure", "-q", env=env)
        assert "all intact" in theirs("verify").stdout
    finally:
        stop(proc)
        server.stop()


def _dripping(fake: HostileRegistry, blob: str, where: str) -> None:
    """Make ``fake`` send ``blob``'s answer a byte every 0.2 s: its headers or its body."""

    async def hook(request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET" or not request.path.endswith(blob):
            return None
        data = fake.blobs[blob]
        transport = request.transport
        assert transport is not None
        if where == "headers":
            transport.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(600):
                await asyncio.sleep(0.2)
                if transport.is_closing():
                    break
                transport.write(b"X: y\r\n")
            transport.close()
            return web.Response()
        answer = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await answer.prepare(request)
        with contextlib.suppress(Exception):
            for i in range(min(600, len(data))):
                await answer.write(data[i : i + 1])
                await asyncio.sleep(0.2)
        transport.close()
        return answer

    fake.hook(hook)


@pytest.mark.parametrize("into", ["registry", "directory"])
@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_dripping_source_fails_its_image_and_keep_going_goes_on(
    cairn: Runner, tmp_path: Path, dest: LoggedRegistry, where: str, into: str
) -> None:
    """A byte every 0.2 s, each well inside any socket timeout, far under the floor:
    the image fails as a stall (as a pull would), the next image is copied."""
    fake = HostileRegistry()
    try:
        dripped = bytes(range(256)) * 1024
        fine = bytes(reversed(range(256))) * 1024
        fake.add_model("lab/drip", "1", [dripped])
        fake.add_model("lab/fine", "1", [fine])
        _dripping(fake, sha256(dripped), where)
        config = sync_file(
            tmp_path,
            f"{fake.host}:\n  tls-verify: false\n  images:\n    lab/drip: ['1']\n"
            "    lab/fine: ['1']\n",
        )
        target = dest.host if into == "registry" else str(tmp_path / "layout")
        synced = cairn(
            "sync",
            str(config),
            target,
            "--dest-insecure",
            "--keep-going",
            "--json",
            env={"CAIRN_STALL_SECONDS": "2", "CAIRN_HOME": str(tmp_path / "home")},
            check=False,
        )
    finally:
        fake.stop()
    assert synced.returncode == 1
    summary = summary_of(synced.stdout)
    assert summary["copied"] == [f"{fake.host}/lab/fine:1"]
    failed = summary["failed"]
    assert isinstance(failed, list) and [f["image"] for f in failed] == [f"{fake.host}/lab/drip:1"]
    assert "the source stalled" in failed[0]["error"] and sha256(dripped) in failed[0]["error"]
    if into == "registry":
        assert manifest_digest(dest.host, "lab/fine", "1") is not None
        assert manifest_digest(dest.host, "lab/drip", "1") is None
    else:
        assert (tmp_path / "layout" / "blobs" / "sha256" / sha256(fine)[7:]).exists()
        assert not (tmp_path / "layout" / "blobs" / "sha256" / sha256(dripped)[7:]).exists()


def _endless_tags(fake: HostileRegistry, per_page: int, padding: int) -> None:
    """Every ``/tags/list`` page leads to a next one, for ever."""

    async def hook(request: web.Request) -> web.StreamResponse | None:
        if not request.path.endswith("/tags/list"):
            return None
        page = int(request.query.get("page", "0"))
        body = json.dumps({"tags": [f"t{page}-{i}" for i in range(per_page)]}) + " " * padding
        link = f'</v2/lab/m/tags/list?n=1000&page={page + 1}>; rel="next"'
        return web.Response(text=body, content_type="application/json", headers={"Link": link})

    fake.hook(hook)


@pytest.mark.parametrize("kind", ["tags", "bytes"])
def test_a_tag_list_that_never_ends_fails_naming_the_repository(kind: str) -> None:
    fake = HostileRegistry()
    try:
        if kind == "tags":
            _endless_tags(fake, per_page=1000, padding=0)
        else:
            _endless_tags(fake, per_page=1, padding=1 << 20)

        async def listed() -> list[str]:
            async with RegistryClient(fake.host, insecure=True) as client:
                return await list_tags(client, "lab/m")

        with pytest.raises(RegistryError) as failed:
            asyncio.run(listed())
        pages = fake.main.count("GET", "/tags/list")
    finally:
        fake.stop()
    assert "tags of lab/m" in str(failed.value)
    if kind == "tags":
        assert "more than 100000 tags" in str(failed.value)
        assert pages == TAGS_MAX // 1000 + 1
    else:
        assert "larger than 16 MiB, all pages together" in str(failed.value)
        assert pages <= TAGS_LIMIT >> 20


def test_a_tag_regex_that_backtracks_badly_is_refused(
    cairn: Runner, tmp_path: Path, dest: LoggedRegistry
) -> None:
    """Python's `re` backtracks: '^(\\d+\\.?)+$' took for ever on one 41-character tag."""
    config = sync_file(
        tmp_path,
        "127.0.0.1:5000:\n  images-by-tag-regex:\n    lab/a: '^v[0-9]+(-rc[0-9]*)?$'\n"
        "    lab/b: '^(\\d+\\.?)+$'\n",
    )
    failed = cairn("sync", str(config), dest.host, "--dry-run", check=False)
    assert failed.returncode == 1
    assert f"{config}:4: the tag regex '^(\\\\d+\\\\.?)+$' repeats a repeat" in failed.stderr
    for fine in [r"^(\d+\.)+\d+$", r"^(?:[0-9]+[.-])+$", r"^v\d+$|^latest$", r"^rc"]:
        assert not backtracks_badly(fine), fine
    for bad in [r"(.+-)+", r"(a|a+)*", r"(\d+\d)+", r"(?i)(a+A)+x"]:
        assert backtracks_badly(bad), bad


def test_a_key_given_twice_is_refused_naming_both_lines(
    cairn: Runner, tmp_path: Path, dest: LoggedRegistry
) -> None:
    """PyYAML keeps the last of two equal keys silently (YAML forbids them)."""
    config = sync_file(
        tmp_path,
        "127.0.0.1:5000:\n  images:\n    lab/a: ['1']\n  images:\n    lab/b: ['2']\n",
    )
    failed = cairn("sync", str(config), dest.host, "--dry-run", check=False)
    assert failed.returncode == 1
    assert (
        f"{config}:4: key 'images' of 127.0.0.1:5000 is given twice: on line 2 and here"
        in failed.stderr
    )
    hosts = sync_file(
        tmp_path,
        "127.0.0.1:5000:\n  images: {lab/a: ['1']}\n127.0.0.1:5000:\n  tls-verify: false\n",
    )
    failed = cairn("sync", str(hosts), dest.host, "--dry-run", check=False)
    assert f"{hosts}:3: key '127.0.0.1:5000' of the file is given twice" in failed.stderr
