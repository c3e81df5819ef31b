"""``cairn inspect`` and ``cairn tags`` against real registries, beside skopeo."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cairn.errors import RegistryError
from tests.conftest import Runner, cairn_env, serving
from tests.registry.test_pull_push import login, make_model

OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def cairn_bytes(store: Path, *args: str) -> bytes:
    """What ``cairn ARGS`` writes on stdout, byte for byte (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "cairn", *args],
        env=cairn_env(store),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr
    return done.stdout


def skopeo(*args: str) -> bytes:
    done = subprocess.run(["skopeo", *args], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def fails(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of a failed command: exit 1, nothing on stdout, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_inspect_raw_and_config_are_the_bytes_skopeo_reads(
    cairn: Runner, store: Path, tmp_path: Path, registry: str
) -> None:
    make_model(cairn, tmp_path, "tiny:1", size_mb=1)
    cairn("push", "tiny:1", f"{registry}/lab/art:1", "--format", "oci", "--insecure", "-q")
    cairn("push", "tiny:1", f"{registry}/lab/oll:1", "--insecure", "-q")
    for repo in ("lab/art:1", "lab/oll:1"):
        raw = cairn_bytes(store, "inspect", "--raw", "--insecure", f"{registry}/{repo}")
        theirs = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry}/{repo}")
        assert raw == theirs
    config = cairn_bytes(store, "inspect", "--config", "--insecure", f"{registry}/lab/art:1")
    assert config == skopeo(
        "inspect", "--config", "--raw", "--tls-verify=false", f"docker://{registry}/lab/art:1"
    )
    assert json.loads(config)["model_format"] == "gguf"
    manifest = json.loads(raw)  # lab/oll:1: the Ollama format

    # The summary: what a user looks for, in the one served manifest's terms.
    art = cairn_bytes(store, "inspect", "--raw", "--insecure", f"{registry}/lab/art:1")
    text = cairn("inspect", "--insecure", f"{registry}/lab/art:1").stdout
    assert f"{registry}/lab/art:1" in text
    assert sha256(art) in text
    assert "application/vnd.cairn.model.v1" in text  # the artifact type
    for layer in json.loads(art)["layers"]:  # one row each: media type, digest, title
        title = layer["annotations"]["org.opencontainers.image.title"]
        assert any(
            layer["mediaType"] in row and layer["digest"] in row and row.endswith(title)
            for row in text.splitlines()
        )
    assert "model_format" in text and "gguf" in text  # the config's fields

    summary = json.loads(cairn("inspect", "--json", "--insecure", f"{registry}/lab/oll:1").stdout)
    assert summary["Name"] == f"{registry}/lab/oll"
    assert summary["Tag"] == "1"
    assert summary["Digest"] == sha256(raw)
    assert summary["MediaType"] == manifest["mediaType"]
    assert summary["ArtifactType"] is None
    assert summary["Config"]["Digest"] == manifest["config"]["digest"]
    assert summary["ConfigData"]["model_format"] == "gguf"
    assert [(d["MediaType"], d["Digest"], d["Size"]) for d in summary["Layers"]] == [
        (d["mediaType"], d["digest"], d["size"]) for d in manifest["layers"]
    ]
    by_digest = cairn("inspect", "--json", "--insecure", f"{registry}/lab/oll@{sha256(raw)}")
    assert json.loads(by_digest.stdout)["Digest"] == sha256(raw)
    assert json.loads(by_digest.stdout)["Tag"] is None


def test_inspect_follows_an_index_as_pull_does(
    cairn: Runner, store: Path, tmp_path: Path, registry: str
) -> None:
    make_model(cairn, tmp_path, "tiny:1", size_mb=1)
    cairn("push", "tiny:1", f"{registry}/lab/m:1", "--format", "oci", "--insecure", "-q")
    model = cairn_bytes(store, "inspect", "--raw", "--insecure", f"{registry}/lab/m:1")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    "mediaType": OCI,
                    "digest": sha256(model),
                    "size": len(model),
                    "artifactType": "application/vnd.cairn.model.v1",
                }
            ],
        }
    ).encode()
    put = httpx.put(
        f"http://{registry}/v2/lab/m/manifests/idx", content=index, headers={"Content-Type": INDEX}
    )
    assert put.status_code == 201, put.text
    raw = cairn_bytes(store, "inspect", "--raw", "--insecure", f"{registry}/lab/m:idx")
    assert raw == index  # --raw: what the tag names, as skopeo's --raw
    assert raw == skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry}/lab/m:idx")
    summary = json.loads(cairn("inspect", "--json", "--insecure", f"{registry}/lab/m:idx").stdout)
    assert summary["Digest"] == sha256(model)
    assert summary["Index"] == {"Digest": sha256(index), "MediaType": INDEX}
    text = cairn("inspect", "--insecure", f"{registry}/lab/m:idx").stdout
    assert sha256(model) in text and sha256(index) in text
    config = cairn_bytes(store, "inspect", "--config", "--insecure", f"{registry}/lab/m:idx")
    assert sha256(config) == summary["Config"]["Digest"]


def test_what_is_not_there_is_one_line(cairn: Runner, tmp_path: Path, registry: str) -> None:
    make_model(cairn, tmp_path, "tiny:1", size_mb=1)
    cairn("push", "tiny:1", f"{registry}/lab/x:1", "--insecure", "-q")
    missing_tag = cairn("inspect", "--insecure", f"{registry}/lab/x:2", check=False)
    assert fails(missing_tag) == f"Error: model lab/x:2 not found on {registry}"
    missing_repo = cairn("inspect", "--raw", "--insecure", f"{registry}/lab/nope:1", check=False)
    assert fails(missing_repo) == f"Error: model lab/nope:1 not found on {registry}"
    missing = cairn("tags", "--insecure", f"{registry}/lab/nope", check=False)
    assert fails(missing) == f"Error: repository lab/nope not found on {registry}"
    bare = cairn("tags", "--insecure", registry, check=False)
    assert fails(bare) == (
        f"Error: {registry} is a registry: name a repository on it, as in {registry}/library/NAME"
    )
    bare = cairn("inspect", "--insecure", registry, check=False)
    assert "is a registry" in fails(bare)
    tagged = cairn("tags", "--insecure", f"{registry}/lab/x:1", check=False)
    assert fails(tagged) == (
        f"Error: {registry}/lab/x:1 names a tag or digest: cairn tags takes a repository,"
        f" as in {registry}/lab/x"
    )
    both = cairn("inspect", "--json", "--raw", f"{registry}/lab/x:1", check=False)
    assert both.returncode == 2 and "Traceback" not in both.stderr
    assert "--json" in both.stderr


def test_a_config_over_4_mib_is_refused(cairn: Runner, store: Path, registry: str) -> None:
    big = b"{" + b" " * (4 << 20) + b"}"
    with httpx.Client(base_url=f"http://{registry}") as http:
        started = http.post("/v2/lab/big/blobs/uploads/")
        location = started.headers["Location"]
        done = http.put(f"{location}&digest={sha256(big)}", content=big)
        assert done.status_code == 201, done.text
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI,
            "config": {"mediaType": "application/json", "digest": sha256(big), "size": len(big)},
            "layers": [],
        }
        put = http.put(
            "/v2/lab/big/manifests/1",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": OCI},
        )
        assert put.status_code == 201, put.text
    refused = cairn("inspect", "--config", "--insecure", f"{registry}/lab/big:1", check=False)
    assert fails(refused) == (
        f"Error: the config of lab/big:1 has {len(big)} bytes; cairn reads a config of at"
        f" most {4 << 20}"
    )
    assert "config" in fails(cairn("inspect", "--insecure", f"{registry}/lab/big:1", check=False))
    raw = cairn_bytes(store, "inspect", "--raw", "--insecure", f"{registry}/lab/big:1")
    assert json.loads(raw) == manifest  # the manifest alone needs no config


def test_a_config_larger_than_declared_is_cut_off_at_the_cap() -> None:
    """A registry that sends more than the manifest said (no real one does): the read stops
    at 4 MiB, never holding the whole body."""
    from cairn.blobstore import Digest
    from cairn.cli.remote import CONFIG_LIMIT, read_config
    from cairn.manifests.manifest import Descriptor
    from cairn.manifests.reference import parse_reference
    from cairn.registry.client import RegistryClient

    sent = 0

    async def endless() -> object:
        nonlocal sent
        while sent < 64 << 20:
            sent += 1 << 20
            yield b"x" * (1 << 20)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())  # type: ignore[arg-type]

    async def run() -> None:
        client = RegistryClient("example.test", transport=httpx.MockTransport(answer))
        descriptor = Descriptor("application/json", Digest.of(b"{}"), 2)
        async with client:
            await read_config(client, parse_reference("example.test/lab/m:1"), descriptor)

    with pytest.raises(RegistryError, match="larger than"):
        asyncio.run(run())
    assert sent <= CONFIG_LIMIT + (2 << 20)


def test_inspect_and_tags_use_the_stored_login(
    cairn: Runner, tmp_path: Path, auth_registry: tuple[str, str, str]
) -> None:
    host, user, password = auth_registry
    env = {"CAIRN_HOME": str(tmp_path / "home")}
    make_model(cairn, tmp_path, "tiny:1", size_mb=1)
    refused = cairn("inspect", "--insecure", f"{host}/lab/x:1", check=False, env=env)
    assert fails(refused) == f"Error: {host} needs credentials: run `cairn login {host}`"
    login(cairn, host, user, password, env)
    cairn("push", "tiny:1", f"{host}/lab/x:1", "--insecure", "-q", env=env)
    shown = cairn("inspect", "--json", "--insecure", f"{host}/lab/x:1", env=env)
    assert json.loads(shown.stdout)["Name"] == f"{host}/lab/x"
    assert cairn("tags", "--insecure", f"{host}/lab/x", env=env).stdout == "1\n"


def test_tags_follow_link_pages_and_match_skopeo(
    cairn: Runner, store: Path, tmp_path: Path, registry: str
) -> None:
    from cairn.registry.mirror.sync import TAG_PAGE

    make_model(cairn, tmp_path, "tiny:1", size_mb=1)
    cairn("push", "tiny:1", f"{registry}/lab/t:1", "--format", "oci", "--insecure", "-q")
    cairn("push", "tiny:1", f"{registry}/lab/t:b2", "--format", "oci", "--insecure", "-q")
    ours = cairn_bytes(store, "tags", "--json", "--insecure", f"{registry}/lab/t")
    theirs = skopeo("list-tags", "--tls-verify=false", f"docker://{registry}/lab/t")
    assert ours == theirs
    listed = cairn("tags", "--insecure", f"{registry}/lab/t").stdout.splitlines()
    assert listed == json.loads(theirs)["Tags"]  # in the order the registry sends them
    assert sorted(listed) == ["1", "b2"]

    # cairn's own registry pages tags/list as asked: more tags than one page of cairn's.
    with serving(tmp_path / "served") as host:
        cairn("push", "tiny:1", f"{host}/lab/many:0", "--format", "oci", "--insecure", "-q")
        with httpx.Client(base_url=f"http://{host}") as http:
            got = http.get("/v2/lab/many/manifests/0", headers={"Accept": OCI})
            for i in range(1, TAG_PAGE + 1):
                put = http.put(
                    f"/v2/lab/many/manifests/t{i:04d}",
                    content=got.content,
                    headers={"Content-Type": OCI},
                )
                assert put.status_code == 201, put.text
        listed = cairn("tags", "--insecure", f"{host}/lab/many").stdout.splitlines()
        assert len(listed) == TAG_PAGE + 1
        assert listed == sorted(["0", *(f"t{i:04d}" for i in range(1, TAG_PAGE + 1))])
        ours = cairn_bytes(store, "tags", "--json", "--insecure", f"{host}/lab/many")
        theirs = skopeo("list-tags", "--tls-verify=false", f"docker://{host}/lab/many")
        assert ours == theirs
        assert json.loads(ours)["Tags"] == listed


def test_every_remote_command_shows_an_example(cairn: Runner) -> None:
    for command in ("inspect", "tags"):
        shown = cairn(command, "--help").stdout
        assert "Examples:" in shown
        assert f"  $ cairn {command} 127.0.0.1:5000/lab/gemma3" in shown
