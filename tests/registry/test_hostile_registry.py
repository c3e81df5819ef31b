"""The real ``cairn`` CLI against a registry that attacks it (tests/registry/hostile.py).

Each test drives one behaviour a review proved harmful before the client
was hardened: credentials sent to another origin, bodies that inflate or
never end, waits without bound, escape sequences for the terminal, lies
about digests and sizes. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import json
import os
import ssl
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from cairn.errors import RegistryError, TransferError
from cairn.manifests import mediatypes as mt
from cairn.manifests.models import Models
from cairn.manifests.reference import parse_reference
from cairn.registry.client import RegistryClient, RetryPolicy
from cairn.registry.origins import Origin, origin_of, parse_origins, realm_allowed, siblings
from cairn.registry.pull import pull
from cairn.sanitize import untrusted, untrusted_json
from tests.conftest import Runner, cairn_env, free_port, self_signed
from tests.registry.hostile import HostileRegistry, digest, range_start, ranged

WEIGHTS = os.urandom(300_000)
ESCAPES = "\x1b]0;pwned\x07\x1b[2K\rLogin Succeeded\x1b]52;c;ZXZpbA==\x07\x9b31m"


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    server = HostileRegistry()
    server.add_model("lab/model", "1", [WEIGHTS])
    yield server
    server.stop()


@pytest.fixture
def second() -> Iterator[HostileRegistry]:
    server = HostileRegistry()
    yield server
    server.stop()


def with_login(
    tmp_path: Path, host: str, user: str = "alice", password: str = "pw"
) -> dict[str, str]:
    """An environment whose CAIRN_HOME holds credentials for ``host`` (as `cairn login` saves)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (home / "auth.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return {"CAIRN_HOME": str(home), "DOCKER_CONFIG": str(tmp_path / "no-docker")}


def partials(store: Path) -> list[str]:
    tmp = store / ".cairn" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


_MEASURE = """
import resource, subprocess, sys
with open(sys.argv[1], "wb") as err:
    done = subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=err, timeout=120)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measured(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, int]:
    """Run ``cairn ARGS``; its exit code, stderr, and peak RSS in MiB.

    Through a small Python parent: Linux keeps a process's peak RSS across
    ``execve``, so a child forked straight from pytest (hundreds of MiB by
    the end of the suite) would report pytest's size, not its own.
    """
    err = cwd / "measured.err"
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(err), sys.executable, "-m", "cairn", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=150,
        check=True,
    )
    code, rss_kib = map(int, done.stdout.split())
    return code, err.read_text(), rss_kib // 1024


@functools.cache
def gzip_bomb() -> bytes:
    """About 1 MiB of gzip that inflates to 1 GiB of zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join([*(packer.compress(zeros) for _ in range(1024)), packer.flush()])


def bomb_response(status: int, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=gzip_bomb(),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json", **headers},
    )


# -- 1. credentials go only to the origin that challenged -----------------------


@pytest.mark.parametrize("path", ["sendfile", "httpx"])
def test_an_upload_location_on_another_origin_gets_no_credentials(
    cairn: Runner, tmp_path: Path, hostile: HostileRegistry, second: HostileRegistry, path: str
) -> None:
    """A push whose upload session lives elsewhere: the bytes go there, the password does not."""
    env = with_login(tmp_path, second.host)
    cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", "-q")
    second.basic = "alice:pw"
    elsewhere = second.other

    async def start_elsewhere(request: web.Request) -> web.StreamResponse | None:
        if request.method == "POST" and "/blobs/uploads/" in request.path:
            if request.headers.get("Authorization") is None:
                return None  # the registry's own 401 challenge
            location = f"{elsewhere.url}/upload/{len(elsewhere.seen)}"
            return web.Response(status=202, headers={"Location": location})
        return None

    async def greedy(request: web.Request) -> web.StreamResponse | None:
        return await second.receive(request)

    second.hook(start_elsewhere)
    elsewhere.hook = greedy
    extra = ["--limit-rate", "1G"] if path == "httpx" else []
    cairn(
        "push",
        f"{hostile.host}/lab/model:1",
        f"{second.host}/lab/copy:1",
        "--insecure",
        "-q",
        *extra,
        env=env,
    )
    assert elsewhere.count("PUT") >= 2  # config and weights went to the upload origin
    assert elsewhere.authorizations() == []
    assert second.main.authorizations()  # the registry itself did get them
    assert second.blobs[digest(WEIGHTS)] == WEIGHTS

    # An upload origin that challenges for credentials is not answered either.
    async def challenge(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="give"'})

    elsewhere.hook = challenge
    second.blobs.clear()
    refused = cairn(
        "push",
        f"{hostile.host}/lab/model:1",
        f"{second.host}/lab/again:1",
        "--insecure",
        *extra,
        check=False,
        env=env,
    )
    assert refused.returncode == 1 and "401" in refused.stderr
    assert elsewhere.authorizations() == []


@pytest.mark.parametrize("path", ["sendfile", "httpx"])
def test_an_upload_location_where_nothing_listens_says_so(
    cairn: Runner, hostile: HostileRegistry, second: HostileRegistry, path: str
) -> None:
    """Both upload paths name the host that refused, as a pull does, not the library's text."""
    cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", "-q")
    nowhere = f"127.0.0.1:{free_port()}"

    async def upload_nowhere(request: web.Request) -> web.StreamResponse | None:
        if request.method == "POST" and "/blobs/uploads/" in request.path:
            return web.Response(status=202, headers={"Location": f"http://{nowhere}/upload/1"})
        return None

    second.hook(upload_nowhere)
    extra = ["--limit-rate", "1G"] if path == "httpx" else []
    failed = cairn(
        "push",
        f"{hostile.host}/lab/model:1",
        f"{second.host}/lab/copy:1",
        "--insecure",
        "-q",
        *extra,
        check=False,
    )
    assert failed.returncode == 1, failed.stderr
    (line,) = failed.stderr.splitlines()
    assert line.startswith("Error: ") and f"nothing listens on {nowhere}" in line, line


@pytest.fixture
def tls_hostile(tmp_path: Path) -> Iterator[tuple[HostileRegistry, Path]]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = HostileRegistry(tls=context)
    server.add_model("lab/model", "1", [WEIGHTS])
    yield server, cert
    server.stop()


def test_a_redirect_from_https_to_http_is_refused_on_both_download_paths(
    cairn: Runner, tmp_path: Path, tls_hostile: tuple[HostileRegistry, Path]
) -> None:
    server, ca = tls_hostile
    server.basic = "alice:pw"
    plain = server.other

    async def downgrade(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and "/blobs/" in request.path:
            return web.Response(status=307, headers={"Location": f"{plain.url}{request.path}"})
        return None

    server.hook(downgrade)
    env = {**with_login(tmp_path, server.host), "CAIRN_CA_BUNDLE": str(ca)}
    refused = cairn("pull", f"{server.host}/lab/model:1", check=False, env=env)
    assert refused.returncode == 1, refused.stderr
    assert "redirects to plain HTTP" in refused.stderr and "--insecure" in refused.stderr
    assert plain.seen == []

    # The httpx path (a proxy or an injected transport) refuses it the same way.
    async def through_httpx() -> None:
        transport = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=str(ca)))
        from cairn.registry.auth import Credentials

        async with RegistryClient(
            server.host, credentials=Credentials("alice", "pw"), transport=transport
        ) as client:
            await pull(
                Models(tmp_path / "httpx-store"),
                parse_reference(f"{server.host}/lab/model:1"),
                client,
            )

    with pytest.raises(RegistryError, match="plain HTTP"):
        asyncio.run(through_httpx())
    assert plain.seen == []


def test_a_redirect_to_another_port_drops_the_credentials(
    cairn: Runner, tmp_path: Path, hostile: HostileRegistry
) -> None:
    hostile.basic = "alice:pw"
    storage = hostile.other

    async def to_storage(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and "/blobs/" in request.path:
            return web.Response(status=307, headers={"Location": f"{storage.url}{request.path}"})
        return None

    async def serve_blob(request: web.Request) -> web.StreamResponse:
        return ranged(request, hostile.blobs[request.path.rpartition("/")[2]])

    hostile.hook(to_storage)
    storage.hook = serve_blob
    cairn(
        "pull",
        f"{hostile.host}/lab/model:1",
        "--insecure",
        "-q",
        env=with_login(tmp_path, hostile.host),
    )
    assert storage.count("GET", "/blobs/") >= 2 and storage.authorizations() == []


def test_a_token_realm_on_another_origin_never_sees_the_password(
    cairn: Runner, tmp_path: Path, hostile: HostileRegistry
) -> None:
    """`cairn login` checks the password at the realm only when that realm may have it."""
    realm = hostile.other

    async def bearer(request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("Authorization") == "Bearer good-token":
            return None
        return web.Response(
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm.url}/token",service="x"'},
        )

    async def issue(request: web.Request) -> web.StreamResponse:
        return web.json_response({"token": "good-token"})

    hostile.hook(bearer)
    realm.hook = issue
    env = {"CAIRN_HOME": str(tmp_path / "home"), "DOCKER_CONFIG": str(tmp_path / "none")}
    login = ("login", hostile.host, "-u", "alice", "--password-stdin", "--insecure")
    refused = cairn(*login, input="new-password\n", check=False, env=env)
    assert refused.returncode == 1 and "CAIRN_TOKEN_REALMS" in refused.stderr
    assert realm.seen == [] and not (tmp_path / "home" / "auth.json").exists()
    env["CAIRN_TOKEN_REALMS"] = realm.url  # named by the user: then it may
    cairn(*login, input="new-password\n", env=env)
    assert realm.authorizations() == ["Basic " + base64.b64encode(b"alice:new-password").decode()]


@pytest.mark.parametrize(
    ("realm", "registry", "allowed"),
    [
        ("https://registry.example.com/token", "https://registry.example.com", True),
        ("https://auth.docker.io/token", "https://registry-1.docker.io", True),
        ("https://attacker.com/token", "https://registry.example.com", False),
        ("https://evil.io/token", "https://registry-1.docker.io", False),
        ("https://1.0.0.1/token", "https://127.0.0.1", False),
        ("https://b.github.io/token", "https://a.github.io", False),  # a public suffix
        ("http://registry.example.com/token", "https://registry.example.com", False),
        ("http://auth.example.com/token", "https://registry.example.com", False),
        ("https://registry.example.com:8443/token", "https://registry.example.com", False),
        ("https://auth.example.com:8443/token", "https://registry.example.com", False),
        ("http://127.0.0.1:5001/token", "http://127.0.0.1:5000", False),
    ],
)
def test_token_realms_are_compared_as_origins(realm: str, registry: str, allowed: bool) -> None:
    assert realm_allowed(origin_of(realm), origin_of(registry), frozenset()) is allowed


def test_token_realms_named_by_the_user() -> None:
    listed = parse_origins("127.0.0.1:5001, http://127.0.0.1:5002,auth.corp.example")
    assert listed == {
        Origin("https", "127.0.0.1", 5001),
        Origin("http", "127.0.0.1", 5002),
        Origin("https", "auth.corp.example", 443),
    }
    registry = origin_of("http://127.0.0.1:5000")
    assert realm_allowed(origin_of("http://127.0.0.1:5002/t"), registry, listed)
    assert not realm_allowed(origin_of("http://127.0.0.1:5001/t"), registry, listed)
    assert siblings("auth.docker.io", "registry-1.docker.io")
    assert not siblings("localhost", "localhost")  # no registrable domain: exact origins only


def test_ollama_signs_token_requests_for_its_own_origins_only(tmp_path: Path) -> None:
    """A realm on ollama.com but another port or scheme is not ollama.com's."""
    from cairn.registry.ollama_auth import OllamaKey

    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(
            401,
            headers={
                "WWW-Authenticate": 'Bearer realm="http://ollama.com:8080/token",service="ollama.com"'
            },
        )

    async def go() -> None:
        async with RegistryClient(
            "registry.ollama.ai",
            transport=httpx.MockTransport(handler),
            ollama_key=OllamaKey(tmp_path / "id_ed25519"),
        ) as client:
            await client.request(
                "GET", "/v2/library/x/manifests/latest", scope="repository:library/x:pull"
            )

    with pytest.raises(RegistryError, match="another site"):
        asyncio.run(go())
    assert [r.url.host for r in asked] == ["registry.ollama.ai"]


# -- 2. bodies, sizes, retries and waits are bounded ----------------------------


def test_a_gzip_bomb_in_an_error_or_token_body_costs_no_memory(
    tmp_path: Path, store: Path, hostile: HostileRegistry
) -> None:
    async def bomb_manifest(request: web.Request) -> web.StreamResponse | None:
        if "/manifests/" in request.path:
            return bomb_response(404)
        return None

    hostile.hook(bomb_manifest)
    code, stderr, rss = measured(
        ["pull", f"{hostile.host}/lab/model:1", "--insecure"], cairn_env(store), tmp_path
    )
    assert code == 1 and "Traceback" not in stderr and "not found on" in stderr  # the 404
    assert rss < 200, f"pull peaked at {rss} MiB"

    async def bomb_token(request: web.Request) -> web.StreamResponse | None:
        if request.path == "/token":
            return bomb_response(200)
        if request.headers.get("Authorization", "").startswith("Bearer"):
            return None
        realm = f"{hostile.url}/token"
        return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})

    hostile.hook(bomb_token)
    env = {**cairn_env(store), "CAIRN_HOME": str(tmp_path / "home")}
    proc_env = {**env}
    code, stderr, rss = measured(
        ["login", hostile.host, "-u", "alice", "--password-stdin", "--insecure"], proc_env, tmp_path
    )
    assert code == 1 and "Traceback" not in stderr
    assert rss < 200, f"login peaked at {rss} MiB"


def test_a_manifest_that_inflates_past_the_limit_is_refused(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    async def bomb_manifest(request: web.Request) -> web.StreamResponse | None:
        if "/manifests/" in request.path:
            return bomb_response(200, **{"Content-Type": mt.DOCKER_MANIFEST})
        return None

    hostile.hook(bomb_manifest)
    refused = cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", check=False)
    assert refused.returncode == 1 and "larger than the 4194304 byte limit" in refused.stderr


def test_a_blob_sent_with_an_encoding_nobody_asked_for_is_refused(
    cairn: Runner, store: Path, hostile: HostileRegistry
) -> None:
    async def gzipped(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and request.path.endswith(digest(WEIGHTS)):
            assert request.headers.get("Accept-Encoding") == "identity"
            return web.Response(body=gzip.compress(WEIGHTS), headers={"Content-Encoding": "gzip"})
        return None

    hostile.hook(gzipped)
    refused = cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", check=False)
    assert refused.returncode == 1 and "encoded as 'gzip'" in refused.stderr
    assert not (store / "blobs" / digest(WEIGHTS).replace(":", "-")).exists()
    assert partials(store) == []


def test_a_blob_larger_than_the_free_space_is_refused_before_a_byte_moves(
    cairn: Runner, store: Path, hostile: HostileRegistry
) -> None:
    config = json.dumps({"model_format": "gguf"}).encode()
    hostile.blobs[digest(config)] = config
    huge = {"mediaType": mt.OLLAMA_MODEL, "digest": digest(b"x"), "size": 10**15}
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": digest(config), "size": len(config)},
        "layers": [huge],
    }
    hostile.put_manifest("lab/huge", "1", json.dumps(manifest).encode())
    refused = cairn("pull", f"{hostile.host}/lab/huge:1", "--insecure", check=False)
    assert refused.returncode == 1
    assert "it needs 1000 TB" in refused.stderr and "`cairn prune`" in refused.stderr
    assert hostile.main.count("GET", digest(b"x")) == 0
    assert partials(store) == []


def test_a_blob_that_breaks_off_again_and_again_has_a_total_budget(
    cairn: Runner, store: Path, hostile: HostileRegistry
) -> None:
    """64 KiB per connection (progress every time) no longer means retrying for ever."""
    weights = os.urandom(4 << 20)
    hostile.add_model("lab/big", "1", [weights])
    wanted = digest(weights)

    async def stingy(request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET" or not request.path.endswith(wanted):
            return None
        start = range_start(request)
        response = web.StreamResponse(
            status=206,
            headers={
                "Content-Range": f"bytes {start}-{len(weights) - 1}/{len(weights)}",
                "Content-Length": str(len(weights) - start),
            },
        )
        await response.prepare(request)
        await response.write(weights[start : start + (64 << 10)])
        assert request.transport is not None
        request.transport.close()
        return response

    hostile.hook(stingy)
    started = time.monotonic()
    failed = cairn("pull", f"{hostile.host}/lab/big:1", "--insecure", check=False)
    assert failed.returncode == 1 and "after 20 failures" in failed.stderr, failed.stderr
    assert time.monotonic() - started < 60
    assert hostile.main.count("GET", wanted) <= 21
    assert "pull again to resume" in failed.stderr and "cairn prune" in failed.stderr
    assert f"{wanted[7:]}.partial" in partials(store)

    hostile.hook(None)  # the registry recovers: the next pull resumes
    cairn("pull", f"{hostile.host}/lab/big:1", "--insecure", "-q")
    resumed = [s for s in hostile.main.seen if s.method == "GET" and s.path.endswith(wanted)][-1]
    assert resumed.headers["Range"].startswith("bytes=1310720-")  # 20 x 64 KiB were kept
    assert partials(store) == []


def test_a_dripping_blob_is_restarted_then_given_up(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    async def drip(request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET" or not request.path.endswith(digest(WEIGHTS)):
            return None
        start = range_start(request)
        response = web.StreamResponse(
            status=206 if start else 200,
            headers={
                "Content-Range": f"bytes {start}-{len(WEIGHTS) - 1}/{len(WEIGHTS)}",
                "Content-Length": str(len(WEIGHTS) - start),
            },
        )
        await response.prepare(request)
        try:
            for position in range(start, len(WEIGHTS)):
                await response.write(WEIGHTS[position : position + 1])
                await asyncio.sleep(0.25)
        except (ConnectionError, RuntimeError):
            pass
        return response

    hostile.hook(drip)
    started = time.monotonic()
    failed = cairn(
        "pull",
        f"{hostile.host}/lab/model:1",
        "--insecure",
        check=False,
        env={"CAIRN_STALL_SECONDS": "1"},
    )
    took = time.monotonic() - started
    assert failed.returncode == 1 and "under 1024 bytes/s" in failed.stderr, failed.stderr
    assert took < 40
    assert 2 <= hostile.main.count("GET", digest(WEIGHTS)) <= 6


def busy(times: int, retry_after: str) -> Any:
    """A hook: the first ``times`` manifest requests get 503 with that Retry-After."""
    answered = 0

    async def hook(request: web.Request) -> web.StreamResponse | None:
        nonlocal answered
        if "/manifests/" in request.path and answered < times:
            answered += 1
            return web.Response(status=503, headers={"Retry-After": retry_after})
        return None

    return hook


def test_retry_after_is_capped_and_the_wait_is_shown(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    hostile.hook(busy(3, "60"))
    started = time.monotonic()
    done = cairn(
        "pull", f"{hostile.host}/lab/model:1", "--insecure", env={"CAIRN_MAX_RETRY_AFTER": "1"}
    )
    assert time.monotonic() - started < 30
    for attempt in (1, 2, 3):
        assert f"answered HTTP 503; trying again in 1 s (try {attempt + 1} of 5)" in done.stderr


# -- 3. nothing a registry says reaches the terminal raw ------------------------


def test_what_a_registry_or_a_model_says_reaches_the_terminal_escaped(
    cairn: Runner, store: Path, hostile: HostileRegistry, second: HostileRegistry
) -> None:
    async def lying_error(request: web.Request) -> web.StreamResponse | None:
        if "/manifests/" in request.path and "/evil/" in request.path:
            body = {"errors": [{"code": "DENIED", "message": ESCAPES}]}
            return web.json_response(body, status=403)
        return None

    hostile.hook(lying_error)
    denied = cairn("pull", f"{hostile.host}/evil/model:1", "--insecure", check=False)
    assert denied.returncode == 1
    assert "\x1b" not in denied.stderr and "\x9b" not in denied.stderr and "\r" not in denied.stderr
    assert "\\x1b]0;pwned\\x07" in denied.stderr

    # The line that says a mirror failed carries the mirror's words: escaped too.
    async def lying_mirror(request: web.Request) -> web.StreamResponse | None:
        body = {"errors": [{"code": "DENIED", "message": ESCAPES}]}
        return web.json_response(body, status=403)

    second.hook(lying_mirror)
    mirrored = cairn(
        "pull",
        f"{hostile.host}/lab/model:1",
        "--insecure",
        env={"CAIRN_MIRRORS": f"{hostile.host}=http://{second.host}"},
    )
    assert f"mirror {second.host} failed" in mirrored.stderr and "\\x1b]0;pwned" in mirrored.stderr
    assert "\x1b" not in mirrored.stderr

    config = {"model_format": "gguf", "model_family": ESCAPES, "model_type": ESCAPES}
    hostile.add_model("lab/shown", "1", [os.urandom(1000)], config=config)
    cairn("pull", f"{hostile.host}/lab/shown:1", "--insecure", "-q")
    for args in ([], ["--json"], ["--modelfile"]):
        shown = cairn("show", f"{hostile.host}/lab/shown:1", *args)
        assert "\x1b" not in shown.stdout and "\x9b" not in shown.stdout, args
    assert "\\x1b]52;c;ZXZpbA==" in cairn("show", f"{hostile.host}/lab/shown:1").stdout

    # A lone surrogate is legal JSON, so a config may hold one; no UTF-8 can print it.
    lone = {"model_format": "gguf", "model_family": "a\ud800b", "renderer": "r\udfffs"}
    hostile.add_model("lab/lone", "1", [os.urandom(1000)], config=lone)
    cairn("pull", f"{hostile.host}/lab/lone:1", "--insecure", "-q")
    for args in ([], ["--json"], ["--modelfile"], ["-v"]):
        shown = cairn("show", f"{hostile.host}/lab/lone:1", *args)
        assert "Traceback" not in shown.stderr, (args, shown.stderr)
    as_json = json.loads(cairn("show", "--json", f"{hostile.host}/lab/lone:1").stdout)
    assert as_json["renderer"] == "r\udfffs"  # escaped in JSON, the same once read


def test_the_sanitizer() -> None:
    assert untrusted("a\x1b[2Kb\x07\x9b\u202e") == "a\\x1b[2Kb\\x07\\x9b\\u202e"
    assert untrusted("line\nnext\ttab\r") == "line\\x0anext\\x09tab\\x0d"
    assert untrusted("line\nnext\ttab\r", multiline=True) == "line\nnext\ttab\\x0d"
    assert untrusted("한국어 and ünïcode") == "한국어 and ünïcode"
    assert untrusted("a\ufe01\U000e0101\u3164b\ufe0f") == "a\\ufe01\\U000e0101\\u3164b\ufe0f"
    persian = "\u0632\u0646\u200c\u0647\u0627"  # a word that needs its ZWNJ
    assert untrusted("👨\u200d👩 " + persian) == "👨\u200d👩 " + persian  # ZWJ, ZWNJ stay
    text = json.dumps({"k": "\x9b\x1b"}, ensure_ascii=False)
    assert json.loads(untrusted_json(text)) == {"k": "\x9b\x1b"}
    assert "\x9b" not in untrusted_json(text)
    assert untrusted("a\ud800b") == "a\\ud800b"


# -- 4. integrity details ---------------------------------------------------------


@pytest.mark.parametrize("shout", [False, True])  # tags match in any case
def test_a_tag_spelled_like_a_pinned_digest_cannot_replace_that_model(
    cairn: Runner, hostile: HostileRegistry, shout: bool
) -> None:
    pinned = digest(hostile.manifests[("lab/model", "1")][0])
    cairn("pull", f"{hostile.host}/lab/model@{pinned}", "--insecure", "-q")
    other = hostile.add_model("lab/model", "2", [b"other weights" * 100])
    tag = f"sha256-{pinned[7:]}"
    tag = tag.upper() if shout else tag
    hostile.put_manifest("lab/model", tag, other)
    refused = cairn("pull", f"{hostile.host}/lab/model:{tag}", "--insecure", check=False)
    assert refused.returncode == 1 and "digest mismatch" in refused.stderr
    listed = json.loads(cairn("ls", "--json").stdout)["models"]
    assert [m["digest"] for m in listed] == [pinned]


def test_a_mirror_serving_bad_bytes_falls_back_to_the_origin(
    cairn: Runner, store: Path, hostile: HostileRegistry, second: HostileRegistry
) -> None:
    second.add_model("lab/model", "1", [WEIGHTS])
    second.blobs[digest(WEIGHTS)] = b"tampered" + WEIGHTS[8:]
    done = cairn(
        "pull",
        f"{hostile.host}/lab/model:1",
        "--insecure",
        env={"CAIRN_MIRRORS": f"{hostile.host}=http://{second.host}"},
    )
    assert f"mirror {second.host} failed" in done.stderr and "digest mismatch" in done.stderr
    assert "all intact" in cairn("verify").stdout
    assert hostile.main.count("GET", digest(WEIGHTS)) == 1


def test_a_server_that_ignores_range_and_breaks_off_twice(
    cairn: Runner, tmp_path: Path, hostile: HostileRegistry
) -> None:
    broken = 0

    async def no_ranges(request: web.Request) -> web.StreamResponse | None:
        nonlocal broken
        if request.method != "GET" or not request.path.endswith(digest(WEIGHTS)):
            return None
        if broken >= 2:
            return web.Response(body=WEIGHTS)  # Range ignored: always the whole blob
        broken += 1
        response = web.StreamResponse(headers={"Content-Length": str(len(WEIGHTS))})
        await response.prepare(request)
        await response.write(WEIGHTS[: len(WEIGHTS) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    hostile.hook(no_ranges)
    cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", "-q")
    assert "all intact" in cairn("verify").stdout

    # One that always breaks off ends in a clear error within the blob's budget.
    async def always_broken(request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET" or not request.path.endswith(digest(WEIGHTS)):
            return None
        response = web.StreamResponse(headers={"Content-Length": str(len(WEIGHTS))})
        await response.prepare(request)
        await response.write(WEIGHTS[:100_000])
        await asyncio.sleep(0.05)  # the bytes arrive before the connection breaks
        assert request.transport is not None
        request.transport.close()
        return response

    hostile.hook(always_broken)

    async def go() -> None:
        policy = RetryPolicy(base_delay=0.01, max_delay=0.02, blob_failures=6)
        transport = httpx.AsyncHTTPTransport()
        async with RegistryClient(
            hostile.host, insecure=True, retry=policy, transport=transport
        ) as c:
            await pull(
                Models(tmp_path / "again"), parse_reference(f"{hostile.host}/lab/model:1"), c
            )

    with pytest.raises(TransferError, match="ignores Range"):
        asyncio.run(go())


def test_a_config_nested_200000_deep_is_a_clear_error(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    hostile.add_raw("lab/deep", "1", b"[" * 200_000 + b"]" * 200_000, [os.urandom(100)])
    cairn("pull", f"{hostile.host}/lab/deep:1", "--insecure", "-q")
    shown = cairn("show", f"{hostile.host}/lab/deep:1", check=False)
    assert shown.returncode == 1 and "does not hold JSON" in shown.stderr
    assert "Traceback" not in shown.stderr


def test_one_digest_listed_with_two_sizes_is_refused(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    manifest = json.loads(hostile.manifests[("lab/model", "1")][0])
    layer = manifest["layers"][0]
    manifest["layers"].append({**layer, "size": layer["size"] + 1})
    hostile.put_manifest("lab/twice", "1", json.dumps(manifest).encode())
    refused = cairn("pull", f"{hostile.host}/lab/twice:1", "--insecure", check=False)
    assert refused.returncode == 1 and "twice, with sizes 300000 and 300001" in refused.stderr


def test_a_redirect_to_another_scheme_is_refused_on_the_fast_path(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    async def to_ftp(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and "/blobs/" in request.path:
            location = f"ftp://127.0.0.1:{hostile.other.port}{request.path}"
            return web.Response(status=302, headers={"Location": location})
        return None

    hostile.hook(to_ftp)
    refused = cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", check=False)
    assert refused.returncode == 1 and "is not an http or https URL" in refused.stderr
    assert hostile.other.seen == []


def test_a_mirror_may_be_trusted_with_digests_only(
    cairn: Runner, tmp_path: Path, hostile: HostileRegistry, second: HostileRegistry
) -> None:
    """``"resolve_tags": false``: tags resolved at the origin, bytes fetched from the mirror."""
    second.add_model("lab/model", "1", [WEIGHTS])
    second.put_manifest("lab/model", "1", hostile.add_model("lab/model", "stale", [b"old" * 10]))
    home = tmp_path / "home"
    home.mkdir()
    mirror = {"url": f"http://{second.host}", "resolve_tags": False}
    (home / "mirrors.json").write_text(json.dumps({hostile.host: [mirror]}))
    done = cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", env={"CAIRN_HOME": str(home)})
    assert "mirror" not in done.stderr
    tagged = [s.path for s in second.main.seen if s.path.endswith("/manifests/1")]
    assert tagged == []  # the mirror's own (stale) tag was never asked
    assert second.main.count("GET", digest(WEIGHTS)) == 1
    assert hostile.main.count("GET", digest(WEIGHTS)) == 0
    listed = json.loads(cairn("ls", "--json").stdout)["models"]
    assert [m["digest"] for m in listed] == [digest(hostile.manifests[("lab/model", "1")][0])]


# -- 5. what a second attack found ------------------------------------------------


class Dripper:
    """A raw TCP server on 127.0.0.1 that answers every request with ``answer``, a byte
    every ``pace`` seconds (headers included: aiohttp cannot drip those)."""

    def __init__(self, answer: bytes, pace: float = 0.25, at_once: bytes = b"") -> None:
        import socket
        import threading

        self.answer, self.pace, self.at_once, self.requests = answer, pace, at_once, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: Any) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(self.at_once)
                for byte in self.answer:
                    conn.sendall(bytes([byte]))
                    time.sleep(self.pace)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def test_a_header_that_is_not_ascii_is_read_not_a_traceback(
    cairn: Runner, tmp_path: Path, hostile: HostileRegistry, second: HostileRegistry
) -> None:
    def noted(server: HostileRegistry) -> Any:
        async def hook(request: web.Request) -> web.StreamResponse | None:
            answer = await server.serve(request)
            answer.headers["X-Note"] = "café 한국어"
            return answer

        return hook

    hostile.hook(noted(hostile))
    missing = cairn("pull", f"{hostile.host}/lab/model:missing", "--insecure", check=False)
    assert missing.returncode == 1 and "MANIFEST_UNKNOWN" in missing.stderr, missing.stderr
    env = {"CAIRN_HOME": str(tmp_path / "home"), "DOCKER_CONFIG": str(tmp_path / "none")}
    cairn("login", hostile.host, "-u", "a", "--password-stdin", "--insecure", input="pw\n", env=env)
    second.hook(noted(second))  # a mirror that says 404 with that header: the origin is still asked
    done = cairn(
        "pull",
        f"{hostile.host}/lab/model:1",
        "--insecure",
        env={"CAIRN_MIRRORS": f"{hostile.host}=http://{second.host}"},
    )
    assert f"mirror {second.host} failed" in done.stderr and "success" in done.stderr


def test_numbers_in_headers_are_ascii_digits_only(cairn: Runner, hostile: HostileRegistry) -> None:
    async def superscript(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and request.path.endswith(digest(WEIGHTS)):
            start = range_start(request)
            if start == 0:  # the first answer breaks off, so the next asks a Range
                response = web.StreamResponse(headers={"Content-Length": str(len(WEIGHTS))})
                await response.prepare(request)
                await response.write(WEIGHTS[:100_000])
                await asyncio.sleep(0.05)
                assert request.transport is not None
                request.transport.close()
                return response
            headers = {"Content-Range": f"bytes \u00b2-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"}
            return web.Response(status=206, body=WEIGHTS[start:], headers=headers)
        return None

    hostile.hook(superscript)
    refused = cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", check=False)
    assert refused.returncode == 1 and "wrong Content-Range" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("where", "location", "said"),
    [
        ("/manifests/", "javascript:x", "Location that is not a URL"),
        ("/blobs/", "http://[zz]/x", "is not an http or https URL"),
        ("/blobs/", "http://a.\u3002b/x", "is not an http or https URL"),
        ("/manifests/", "http://xn--zz/x", "Location that is not a URL"),
        ("/manifests/", "http://xn--ls8h.la/x", "Location that is not a URL"),
    ],
)
def test_a_redirect_to_something_that_is_no_url_is_an_error(
    cairn: Runner, hostile: HostileRegistry, where: str, location: str, said: str
) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and where in request.path:
            response = web.Response(status=302)
            response.headers["Location"] = location
            return response
        return None

    hostile.hook(redirect)
    refused = cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", check=False)
    assert refused.returncode == 1 and said in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_retry_after_date_past_any_calendar_is_ignored(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    hostile.hook(busy(2, "Thu, 01 Jan 2026 00:00:00 +99999999999999999999"))
    cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", "-q")


def test_show_takes_whatever_a_config_holds(cairn: Runner, hostile: HostileRegistry) -> None:
    odd = {"model_format": "gguf", "capabilities": 5, "requires": True, "renderer": ["x"]}
    hostile.add_model("lab/odd", "1", [os.urandom(100)], config=odd)
    cairn("pull", f"{hostile.host}/lab/odd:1", "--insecure", "-q")
    shown = cairn("show", f"{hostile.host}/lab/odd:1").stdout
    assert "requires    True" in shown and "Capabilities" not in shown  # 5 is not a list
    assert json.loads(cairn("show", f"{hostile.host}/lab/odd:1", "--json").stdout)


def test_a_dripped_manifest_or_blob_header_ends_within_the_stall_window(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    def stalled(name: str) -> None:
        started = time.monotonic()
        failed = cairn("pull", name, "--insecure", check=False, env={"CAIRN_STALL_SECONDS": "1"})
        assert failed.returncode == 1 and "bytes/s" in failed.stderr, failed.stderr
        assert time.monotonic() - started < 40

    head = b"HTTP/1.1 200 OK\r\nContent-Type: " + mt.DOCKER_MANIFEST.encode()
    head += b"\r\nContent-Length: 4000000\r\n\r\n"
    manifest = Dripper(b"{" + b" " * 100_000, at_once=head)
    try:
        stalled(f"127.0.0.1:{manifest.port}/lab/model:1")
    finally:
        manifest.close()

    headers = Dripper(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"z" * 10_000 + b"\r\n\r\n")

    async def to_dripper(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and request.path.endswith(digest(WEIGHTS)):
            location = f"http://127.0.0.1:{headers.port}{request.path}"
            return web.Response(status=307, headers={"Location": location})
        return None

    hostile.hook(to_dripper)
    try:
        stalled(f"{hostile.host}/lab/model:1")
        assert headers.requests <= 6
    finally:
        headers.close()


def test_a_bodiless_post_gets_a_deadline_for_its_headers() -> None:
    """The POST that opens an upload has no body: its headers may not drip for ever."""
    dripper = Dripper(b"HTTP/1.1 202 Accepted\r\n" + b"X-Slow: " + b"z" * 10_000 + b"\r\n\r\n")

    async def start() -> None:
        policy = RetryPolicy(attempts=2, base_delay=0.01, stall_seconds=0.5)
        async with RegistryClient(f"127.0.0.1:{dripper.port}", insecure=True, retry=policy) as c:
            await c.request("POST", "/v2/lab/model/blobs/uploads/", scope="push")

    started = time.monotonic()
    try:
        with pytest.raises(TransferError, match="no status and headers"):
            asyncio.run(start())
    finally:
        dripper.close()
    assert time.monotonic() - started < 15


def test_a_stored_blob_listed_with_another_size_is_refused(
    cairn: Runner, hostile: HostileRegistry
) -> None:
    cairn("pull", f"{hostile.host}/lab/model:1", "--insecure", "-q")
    manifest = json.loads(hostile.manifests[("lab/model", "1")][0])
    manifest["layers"][0]["size"] = 5
    hostile.put_manifest("lab/model", "liar", json.dumps(manifest).encode())
    refused = cairn("pull", f"{hostile.host}/lab/model:liar", "--insecure", check=False)
    assert refused.returncode == 1
    assert "says blob" in refused.stderr and "has 5 bytes" in refused.stderr
    assert "liar" not in cairn("ls").stdout
