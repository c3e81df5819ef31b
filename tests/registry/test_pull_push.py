"""Pull and push against a real CNCF registry, and interop with skopeo and oras."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Runner, cairn_env, modelfile, run_at_once, run_in_pty
from tests.ggufmaker import write_gguf
from tests.tokenserver import TokenServer


def make_model(cairn: Runner, tmp_path: Path, name: str = "tiny:1", size_mb: int = 3) -> Path:
    gguf = write_gguf(
        tmp_path / f"{name.replace(':', '_')}.gguf",
        tensors=[("w", (1024, 256 * size_mb))],
        fill=os.urandom(4096),
    )
    modelfile(tmp_path, f"FROM {gguf}\nSYSTEM short answers\nPARAMETER temperature 0.1\n", "MF")
    cairn("create", name, "-f", str(tmp_path / "MF"))
    return gguf


def other_store(tmp_path: Path, cairn: Runner, name: str = "other") -> Runner:
    store = tmp_path / name
    store.mkdir()

    def run(
        *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return cairn(*args, check=check, env={"CAIRN_MODELS": str(store), **(env or {})})

    return run


def login(
    cairn: Runner, host: str, user: str, password: str, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return cairn(
        "login",
        host,
        "-u",
        user,
        "--password-stdin",
        "--insecure",
        input=password + "\n",
        check=check,
        env=env,
    )


def manifest_of(store: Path, host: str, repo: str, tag: str) -> bytes:
    return (store / "manifests" / host / repo / tag).read_bytes()


def test_push_then_pull_into_an_empty_store(
    cairn: Runner, store: Path, tmp_path: Path, registry: str
) -> None:
    make_model(cairn, tmp_path)
    pushed = cairn("push", "tiny:1", f"{registry}/lab/tiny:1", "--insecure")
    assert "pushed" in pushed.stdout
    elsewhere = other_store(tmp_path, cairn)
    lines = elsewhere("pull", f"{registry}/lab/tiny:1", "--insecure", "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert events[0] == {"status": "pulling manifest"}
    assert events[-1] == {"status": "success"}
    assert any(e.get("completed") == e.get("total") and e.get("digest") for e in events)
    original = manifest_of(store, "registry.ollama.ai", "library/tiny", "1")
    copy = manifest_of(tmp_path / "other", registry, "lab/tiny", "1")
    assert copy == original  # Ollama's format, byte for byte
    assert "all intact" in elsewhere("verify").stdout
    assert elsewhere("show", f"{registry}/lab/tiny:1", "--system").stdout == "short answers\n"


def test_pull_of_a_model_already_there_fetches_no_blob(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    make_model(cairn, tmp_path)
    cairn("push", "tiny:1", f"{registry}/lab/tiny:1", "--insecure", "-q")
    cairn("pull", f"{registry}/lab/tiny:1", "--insecure", "-q")
    # Take the blobs away from the registry: a second pull must not need them.
    import urllib.request

    stored = manifest_of(tmp_path / "models", registry, "lab/tiny", "1")
    for layer in json.loads(stored)["layers"]:
        request = urllib.request.Request(
            f"http://{registry}/v2/lab/tiny/blobs/{layer['digest']}", method="DELETE"
        )
        assert urllib.request.urlopen(request).status == 202
    pulled = cairn("pull", f"{registry}/lab/tiny:1", "--insecure", "--json").stdout
    events = [json.loads(line) for line in pulled.splitlines()]
    assert events[-1] == {"status": "success"}
    assert manifest_of(tmp_path / "models", registry, "lab/tiny", "1") == stored


def test_pull_of_missing_model_is_a_clear_error(cairn: Runner, registry: str) -> None:
    result = cairn("pull", f"{registry}/lab/nothing:1", "--insecure", check=False)
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last == (
        f"Error: model lab/nothing:1 not found on {registry} (MANIFEST_UNKNOWN: manifest unknown)"
    )


def test_chunked_push(cairn: Runner, store: Path, tmp_path: Path, registry: str) -> None:
    gguf = make_model(cairn, tmp_path, size_mb=5)
    cairn("push", "tiny:1", f"{registry}/lab/chunked:1", "--insecure", "--chunk-size", "1M", "-q")
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("pull", f"{registry}/lab/chunked:1", "--insecure", "-q")
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert (tmp_path / "other" / "blobs" / f"sha256-{digest}").read_bytes() == gguf.read_bytes()


def test_oci_push_is_read_by_skopeo_and_oras(
    cairn: Runner, store: Path, tmp_path: Path, registry: str
) -> None:
    gguf = make_model(cairn, tmp_path)
    cairn("push", "tiny:1", f"{registry}/oci/tiny:1", "--insecure", "--format", "oci", "-q")
    out = tmp_path / "skopeo-dir"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--src-tls-verify=false",
            f"docker://{registry}/oci/tiny:1",
            f"dir:{out}",
        ],
        check=True,
        timeout=120,
    )
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert (out / digest).read_bytes() == gguf.read_bytes()
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert manifest["artifactType"] == "application/vnd.cairn.model.v1"

    import oras.client

    client = oras.client.OrasClient(hostname=registry, insecure=True)
    files = client.pull(target=f"{registry}/oci/tiny:1", outdir=str(tmp_path / "oras-out"))
    by_name = {Path(f).name: Path(f) for f in files}
    # the weights under the name of the file `cairn create` read (its layer's title)
    assert by_name[gguf.name].read_bytes() == gguf.read_bytes()
    assert by_name["system.txt"].read_text() == "short answers"


def test_pull_what_oras_and_skopeo_pushed(cairn: Runner, tmp_path: Path, registry: str) -> None:
    import oras.client

    gguf = write_gguf(tmp_path / "weights.gguf", fill=b"oras")
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    os.chdir(tmp_path)
    client.push(files=["weights.gguf"], target=f"{registry}/oras/model:v1")
    cairn("pull", f"{registry}/oras/model:v1", "--insecure", "-q")
    assert "architecture" in cairn("show", f"{registry}/oras/model:v1").stdout
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert (tmp_path / "models" / "blobs" / f"sha256-{digest}").read_bytes() == gguf.read_bytes()

    # skopeo copies that artifact to another repository; cairn pulls the copy.
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{registry}/oras/model:v1",
            f"docker://{registry}/skopeo/model:v2",
        ],
        check=True,
        timeout=120,
    )
    cairn("pull", f"{registry}/skopeo/model:v2", "--insecure", "-q")
    assert "all intact" in cairn("verify").stdout


def test_basic_auth_login_push_pull(
    cairn: Runner, tmp_path: Path, auth_registry: tuple[str, str, str]
) -> None:
    host, user, password = auth_registry
    make_model(cairn, tmp_path)
    home = tmp_path / "home"
    env = {"CAIRN_HOME": str(home), "DOCKER_CONFIG": str(tmp_path / "no-docker")}
    denied = cairn("push", "tiny:1", f"{host}/lab/tiny:1", "--insecure", check=False, env=env)
    assert denied.returncode == 1
    assert f"run `cairn login {host}`" in denied.stderr
    wrong = login(cairn, host, user, "nope", env, check=False)
    assert wrong.returncode == 1 and "refused" in wrong.stderr
    assert not (home / "auth.json").exists()
    ok = login(cairn, host, user, password, env)
    assert "Login Succeeded" in ok.stdout
    assert stat.S_IMODE((home / "auth.json").stat().st_mode) == 0o600
    pushed = cairn("push", "tiny:1", f"{host}/lab/tiny:1", "--insecure", "--json", env=env)
    elsewhere = other_store(tmp_path, cairn)
    pulled = elsewhere("pull", f"{host}/lab/tiny:1", "--insecure", "--json", env=env)
    for output in (
        pushed.stdout + pushed.stderr,
        pulled.stdout + pulled.stderr,
        ok.stdout + ok.stderr,
    ):
        assert password not in output
    assert "Removed" in cairn("logout", host, env=env).stdout
    again = elsewhere("pull", f"{host}/lab/tiny:1", "--insecure", check=False, env=env)
    assert again.returncode == 1


def test_docker_config_credentials_are_used(
    cairn: Runner, tmp_path: Path, auth_registry: tuple[str, str, str]
) -> None:
    import base64

    host, user, password = auth_registry
    make_model(cairn, tmp_path)
    docker = tmp_path / "docker"
    docker.mkdir()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))
    env = {"CAIRN_HOME": str(tmp_path / "home"), "DOCKER_CONFIG": str(docker)}
    cairn("push", "tiny:1", f"{host}/lab/tiny:1", "--insecure", "-q", env=env)


def test_two_pulls_at_once(cairn: Runner, tmp_path: Path, registry: str, gemma_gguf: Path) -> None:
    modelfile(tmp_path, f"FROM {gemma_gguf}\n", "MF")
    cairn("create", "gemma3:270m", "-f", str(tmp_path / "MF"))
    cairn("push", "gemma3:270m", f"{registry}/library/gemma3:270m", "--insecure", "-q")
    store = tmp_path / "fresh"
    env = cairn_env(store)
    run_at_once(["pull", "-q", "--insecure", f"{registry}/library/gemma3:270m"], env)
    check = subprocess.run(
        [sys.executable, "-m", "cairn", "verify"], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0 and "all intact" in check.stdout
    assert not list((store / ".cairn" / "tmp").glob("*.partial"))


def test_sigkill_mid_pull_then_resume(cairn: Runner, tmp_path: Path, registry: str) -> None:
    big = write_gguf(
        tmp_path / "big.gguf", tensors=[("w", (1024, 1024, 96))], fill=os.urandom(1 << 16)
    )  # 384 MiB
    modelfile(tmp_path, f"FROM {big}\n", "MF")
    cairn("create", "big:1", "-f", str(tmp_path / "MF"))
    cairn("push", "big:1", f"{registry}/lab/big:1", "--insecure", "-q")
    store = tmp_path / "fresh"
    env = cairn_env(store)
    # Throttle nothing: kill as soon as a good part of the blob has landed.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "pull", "-q", "--insecure", f"{registry}/lab/big:1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    record = store / ".cairn" / "tmp" / f"{digest}.partial.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if sum(s["done"] for s in json.loads(record.read_text())["spans"]) > 64 << 20:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if (store / "blobs" / f"sha256-{digest}").exists():
        pytest.fail("the pull finished before it could be killed; make the blob bigger")
    assert not (store / "manifests").exists()
    result = subprocess.run(
        [sys.executable, "-m", "cairn", "pull", "--json", "--insecure", f"{registry}/lab/big:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    first = next(e for e in events if e.get("digest") == f"sha256:{digest}")
    assert first["completed"] > 0  # it resumed, not from zero
    check = subprocess.run(
        [sys.executable, "-m", "cairn", "verify"], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0


class DropsAPatchResponse(httpx.AsyncBaseTransport):
    """Forwards to the real registry, but loses the answer to the second PATCH."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.patches = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "PATCH":
            self.patches += 1
            if self.patches == 2:
                await response.aclose()
                raise httpx.ReadError("connection reset by peer")
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_push_interrupted_mid_blob_resumes_the_upload(
    cairn: Runner, store: Path, tmp_path: Path, registry: str
) -> None:
    import asyncio

    from cairn.manifests.models import Models
    from cairn.manifests.reference import parse_reference
    from cairn.registry.client import RegistryClient, RetryPolicy
    from cairn.registry.push import push

    gguf = make_model(cairn, tmp_path, size_mb=6)
    transport = DropsAPatchResponse()

    async def go() -> None:
        async with RegistryClient(
            registry, insecure=True, transport=transport, retry=RetryPolicy(base_delay=0.01)
        ) as client:
            await push(
                Models(store),
                "tiny:1",
                parse_reference(f"{registry}/lab/resumed:1"),
                client,
                chunk_size=1 << 20,
            )

    asyncio.run(go())
    assert transport.patches > 2  # it went on after the lost answer
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("pull", f"{registry}/lab/resumed:1", "--insecure", "-q")
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert (tmp_path / "other" / "blobs" / f"sha256-{digest}").read_bytes() == gguf.read_bytes()


def test_push_skips_blobs_the_registry_has(cairn: Runner, tmp_path: Path, registry: str) -> None:
    make_model(cairn, tmp_path)
    cairn("push", "tiny:1", f"{registry}/lab/tiny:1", "--insecure", "-q")
    events = [
        json.loads(x)
        for x in cairn(
            "push", "tiny:1", f"{registry}/lab/tiny:1", "--insecure", "--json"
        ).stdout.splitlines()
    ]
    pushes = [e for e in events if e.get("digest")]
    assert pushes and all(e["completed"] == e["total"] for e in pushes)
    assert events[-1] == {"status": "success"}


def test_a_broken_mirrors_file_stops_pulls_only(cairn: Runner, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "mirrors.json").write_text('{"registry.ollama.ai": "not a list"}')
    env = {"CAIRN_HOME": str(home)}
    assert cairn("list", env=env).stdout.split()[:2] == ["NAME", "ID"]
    pulled = cairn("pull", "127.0.0.1:9/lab/tiny:1", "--insecure", env=env, check=False)
    assert pulled.returncode == 1
    assert (
        pulled.stderr == f"Error: {home}/mirrors.json must map registry hosts to lists of mirrors\n"
    )


def test_mirror_serves_a_pull_for_an_unreachable_origin(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    make_model(cairn, tmp_path)
    cairn("push", "tiny:1", f"{registry}/lab/tiny:1", "--insecure", "-q")
    origin = "127.0.0.1:9"  # discard port: nothing listens, connections are refused
    elsewhere = other_store(tmp_path, cairn)
    mirrors = {"CAIRN_MIRRORS": f"{origin}=http://{registry}"}
    elsewhere("pull", f"{origin}/lab/tiny:1", "--insecure", "-q", env=mirrors)
    listed = json.loads(elsewhere("list", "--json").stdout)["models"]
    assert [m["name"] for m in listed] == [
        f"{origin}/lab/tiny:1"
    ]  # stored under the name asked for
    assert "all intact" in elsewhere("verify").stdout


def test_pull_falls_back_to_origin_when_the_mirror_lacks_the_model(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    from tests.conftest import start_registry, stop

    make_model(cairn, tmp_path)
    cairn("push", "tiny:1", f"{registry}/lab/tiny:1", "--insecure", "-q")
    (tmp_path / "empty-mirror").mkdir()
    mirror, proc = start_registry(tmp_path / "empty-mirror")
    try:
        elsewhere = other_store(tmp_path, cairn)
        result = elsewhere(
            "pull",
            f"{registry}/lab/tiny:1",
            "--insecure",
            "--json",
            env={"CAIRN_MIRRORS": f"{registry}=http://{mirror}"},
        )
        events = [json.loads(line) for line in result.stdout.splitlines()]
        assert any(e["status"].startswith(f"mirror {mirror} failed") for e in events)
        assert events[-1] == {"status": "success"}
    finally:
        stop(proc)


def test_limit_rate(cairn: Runner, tmp_path: Path, registry: str) -> None:
    make_model(cairn, tmp_path, size_mb=3)  # about 3 MiB of weights
    started = time.monotonic()
    cairn("push", "tiny:1", f"{registry}/lab/slow:1", "--insecure", "-q", "--limit-rate", "2M")
    pushed = time.monotonic() - started
    elsewhere = other_store(tmp_path, cairn)
    started = time.monotonic()
    elsewhere("pull", f"{registry}/lab/slow:1", "--insecure", "-q", "--limit-rate", "2M")
    pulled = time.monotonic() - started
    # 3 MiB at 2 MiB/s, less the first quarter-second burst: at least a second each way.
    assert pushed >= 1.0 and pulled >= 1.0
    bad = cairn("pull", f"{registry}/lab/slow:1", "--insecure", "--limit-rate", "fast", check=False)
    assert bad.returncode == 1 and "not a size: 'fast'" in bad.stderr


def test_token_auth_against_distribution(
    cairn: Runner, tmp_path: Path, token_registry: tuple[str, str, str, TokenServer]
) -> None:
    """distribution with `auth: token`: a Bearer challenge, a token from our token server.

    The token server listens on another port: another origin, which gets the
    password only once CAIRN_TOKEN_REALMS names it.
    """
    host, user, password, server = token_registry
    make_model(cairn, tmp_path)
    env = {"CAIRN_HOME": str(tmp_path / "home"), "DOCKER_CONFIG": str(tmp_path / "no-docker")}
    unlisted = login(cairn, host, user, password, env, check=False)
    assert unlisted.returncode == 1 and "CAIRN_TOKEN_REALMS" in unlisted.stderr
    assert server.issued == 0 and not (tmp_path / "home" / "auth.json").exists()
    realm = urlsplit(server.url)
    env["CAIRN_TOKEN_REALMS"] = f"http://{realm.netloc}"
    denied = cairn("push", "tiny:1", f"{host}/lab/tiny:1", "--insecure", check=False, env=env)
    assert denied.returncode == 1 and f"run `cairn login {host}`" in denied.stderr
    wrong = login(cairn, host, user, "bad", env, check=False)
    assert wrong.returncode == 1
    login(cairn, host, user, password, env)
    cairn("push", "tiny:1", f"{host}/lab/tiny:1", "--insecure", "-q", env=env)
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("pull", f"{host}/lab/tiny:1", "--insecure", "-q", env=env)
    assert "all intact" in elsewhere("verify").stdout
    assert server.issued >= 2


def test_progress_bars_on_a_terminal(
    cairn: Runner, store: Path, tmp_path: Path, registry: str
) -> None:
    """On a terminal: a bar per blob and an overall one (a pty of 100 columns)."""
    make_model(cairn, tmp_path)
    cairn("push", "tiny:1", f"{registry}/lab/tiny:1", "--insecure", "-q")
    code, text = run_in_pty(
        [sys.executable, "-m", "cairn", "pull", "--insecure", f"{registry}/lab/tiny:1"],
        cairn_env(tmp_path / "tty-store"),
    )
    assert code == 0
    assert "total 100% ▕" in text  # Ollama's bar, sizes in its units ("3.1 MB")
    assert text.count("100% ▕") >= 4  # config, weights, system, params, and the total


def test_tls_is_verified_against_the_ca_bundle(
    cairn: Runner, tmp_path: Path, tls_registry: tuple[str, Path]
) -> None:
    host, ca = tls_registry
    make_model(cairn, tmp_path)
    refused = cairn("push", "tiny:1", f"{host}/lab/tiny:1", check=False)
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    env = {"CAIRN_CA_BUNDLE": str(ca)}
    cairn("push", "tiny:1", f"{host}/lab/tiny:1", "-q", env=env)
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("pull", f"{host}/lab/tiny:1", "-q", env=env)
    assert "all intact" in elsewhere("verify").stdout


def test_http2_with_a_tls_registry(tls_registry: tuple[str, Path]) -> None:
    """httpx speaks HTTP/2 to a TLS registry that offers it (distribution does)."""
    import asyncio

    from cairn.registry.client import RegistryClient

    host, ca = tls_registry

    async def go() -> str:
        async with RegistryClient(host, ca_bundle=str(ca)) as client:
            response = await client.request("GET", "/v2/", scope="*")
            return response.http_version

    assert asyncio.run(go()) == "HTTP/2"


def test_push_killed_mid_blob_then_run_again(
    cairn: Runner, store: Path, tmp_path: Path, registry: str
) -> None:
    big = write_gguf(
        tmp_path / "big.gguf", tensors=[("w", (1024, 1024, 64))], fill=os.urandom(1 << 16)
    )
    modelfile(tmp_path, f"FROM {big}\n", "MF")
    cairn("create", "big:1", "-f", str(tmp_path / "MF"))
    env = cairn_env(store)
    command = [
        sys.executable,
        "-m",
        "cairn",
        "push",
        "--insecure",
        "--json",
        "--chunk-size",
        "8M",
        "big:1",
        f"{registry}/lab/big:1",
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # kill once a good part of the weights is up
        event = json.loads(line)
        if event.get("total", 0) > (64 << 20) and event.get("completed", 0) > (32 << 20):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    elsewhere = other_store(tmp_path, cairn)
    elsewhere("pull", f"{registry}/lab/big:1", "--insecure", "-q")
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert (tmp_path / "other" / "blobs" / f"sha256-{digest}").stat().st_size == big.stat().st_size
    assert "all intact" in elsewhere("verify").stdout


def test_blob_size_is_what_the_registry_says(cairn: Runner, tmp_path: Path, registry: str) -> None:
    """HEAD's Content-Length, as sent (a response read whole once gave its body's length, 0)."""
    import asyncio

    from cairn.registry.client import RegistryClient

    gguf = make_model(cairn, tmp_path)
    cairn("push", "tiny:1", f"{registry}/sizes/tiny:1", "--insecure", "-q")
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()

    async def sizes() -> tuple[int | None, int | None]:
        async with RegistryClient(registry, insecure=True) as client:
            there = await client.blob_size("sizes/tiny", digest)
            missing = await client.blob_size("sizes/tiny", "sha256:" + "0" * 64)
            return there, missing

    assert asyncio.run(sizes()) == (gguf.stat().st_size, None)


def test_push_to_a_bare_registry_is_refused(cairn: Runner, tmp_path: Path, registry: str) -> None:
    """``127.0.0.1:5055`` read as a model name was the model 127.0.0.1, tag 5055, of
    registry.ollama.ai: the push went there, over plain HTTP with --insecure."""
    make_model(cairn, tmp_path)
    for destination in (registry, f"http://{registry}/", "localhost:5000"):
        refused = cairn("push", "tiny:1", destination, "--insecure", check=False)
        assert refused.returncode == 1
        assert refused.stderr == (
            f"Error: {destination} is a registry, not a model name: push to a repository"
            f" on it, as in {destination}/library/tiny:1\n"
        )
    assert httpx.get(f"http://{registry}/v2/_catalog", timeout=30).json()["repositories"] == []
    from cairn.cli.registry import _bare_registry

    registries = ["127.0.0.1:5055", "[::1]:5000", "localhost", "registry.example.com:443"]
    models = ["qwen2.5:7", "llama3.1:8", "my.model", "ghcr.io", "127.0.0.1:5055/lab/x:1"]
    assert [_bare_registry(name) for name in registries + models] == [True] * 4 + [False] * 5
