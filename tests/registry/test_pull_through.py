"""``cairn registry serve --upstream``: a pull-through cache in front of a real registry.

The upstream is a real CNCF docker-registry wherever a real one can show
the behaviour; a small aiohttp upstream in this process stands in only
where a real one will not misbehave on demand (a body held halfway, wrong
bytes), so that concurrent requests meet in the order the test forces.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from aiohttp import web

from tests.conftest import (
    Runner,
    cairn_env,
    cairn_json,
    free_port,
    serve_command,
    start_registry,
    stop,
    wait_until_serving,
)
from tests.registry.test_ollama_client import SCHEMA2, parts
from tests.registry.test_pull_push import login, make_model, other_store

TIMEOUT = httpx.Timeout(120.0)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def cache(root: Path, *args: str, home: Path | None = None) -> Iterator[str]:
    """``cairn registry serve ARGS`` over ``root``, with its own CAIRN_HOME (``cairn login``'s
    credentials for the upstream live there); its log in ``root``'s folder."""
    with cache_process(root, *args, home=home) as (host, _):
        yield host


@contextlib.contextmanager
def cache_process(
    root: Path, *args: str, home: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`cache`, with the server's process."""
    root.mkdir(parents=True, exist_ok=True)
    home = home or root.parent / f"{root.name}-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root.parent / f".cache-{root.name}-{port}.log"
    env = cairn_env(root, CAIRN_HOME=str(home), DOCKER_CONFIG=str(home / "no-docker"))
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            serve_command(root, port, *args), env=env, stdout=subprocess.DEVNULL, stderr=sink
        )
    try:
        wait_until_serving(proc, port, "cairn registry serve --upstream")
        yield f"127.0.0.1:{port}", proc
    finally:
        stop(proc)


def wait_for(path: Path, seconds: float = 60) -> bytes:
    """The file's bytes once it exists (the cache writes a tag once the model is whole)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_bytes()


def whole_blobs(root: Path) -> list[str]:
    """The digests under ``blobs/``, each checked to hash to its name."""
    found = []
    for path in sorted((root / "blobs").glob("sha256-*")):
        digest = "sha256:" + path.name.removeprefix("sha256-")
        assert sha(path.read_bytes()) == digest, f"{path} does not hash to its name"
        found.append(digest)
    return found


def served_tag(root: Path, repository: str, tag: str) -> Path:
    return root / "manifests" / "registry.ollama.ai" / repository / tag


# -- against a real docker-registry ------------------------------------------------


def test_a_pull_through_an_empty_cache_lands_in_both_stores_and_outlives_the_upstream(
    cairn: Runner, store: Path, tmp_path: Path
) -> None:
    (tmp_path / "upstream").mkdir()
    upstream, proc = start_registry(tmp_path / "upstream")
    try:
        make_model(cairn, tmp_path)
        cairn("push", "tiny:1", f"{upstream}/lab/tiny:1", "--insecure", "-q")
        original = served_tag(store, "library/tiny", "1").read_bytes()
        root = tmp_path / "cache"
        with cache(root, "--upstream", f"http://{upstream}") as host:
            first = other_store(tmp_path, cairn, "first")
            first("pull", f"{host}/lab/tiny:1", "--insecure", "-q")
            assert (tmp_path / "first/manifests" / host / "lab/tiny/1").read_bytes() == original
            assert "all intact" in first("verify").stdout
            # The server kept it whole, where a push of lab/tiny:1 would be.
            assert wait_for(served_tag(root, "lab/tiny", "1")) == original
            layers = json.loads(original)["layers"] + [json.loads(original)["config"]]
            assert sorted(d["digest"] for d in layers) == whole_blobs(root)
            listed = cairn_json(root, "list", "--json")["models"]
            assert [m["name"] for m in listed] == ["lab/tiny:1"]

            stop(proc)  # the upstream is gone: the cache answers alone
            second = other_store(tmp_path, cairn, "second")
            second("pull", f"{host}/lab/tiny:1", "--insecure", "-q")
            assert "all intact" in second("verify").stdout
            pushed = httpx.post(f"http://{host}/v2/lab/other/blobs/uploads/", timeout=TIMEOUT)
            assert pushed.status_code == 405 and "pull-through cache" in pushed.text
    finally:
        stop(proc)


def test_after_the_ttl_an_unreachable_upstream_leaves_the_stored_tag_served(
    cairn: Runner, tmp_path: Path
) -> None:
    (tmp_path / "upstream").mkdir()
    upstream, proc = start_registry(tmp_path / "upstream")
    try:
        make_model(cairn, tmp_path)
        cairn("push", "tiny:1", f"{upstream}/lab/tiny:1", "--insecure", "-q")
        root = tmp_path / "cache"
        with cache(root, "--upstream", f"http://{upstream}", "--upstream-ttl", "0") as host:
            other_store(tmp_path, cairn, "first")("pull", f"{host}/lab/tiny:1", "--insecure", "-q")
            stored = wait_for(served_tag(root, "lab/tiny", "1"))
            stop(proc)
            # TTL 0: every request asks the upstream, which no longer answers.
            answer = httpx.get(
                f"http://{host}/v2/lab/tiny/manifests/1",
                headers={"Accept": SCHEMA2},
                timeout=TIMEOUT,
            )
            assert answer.status_code == 200 and answer.content == stored
            second = other_store(tmp_path, cairn, "second")
            second("pull", f"{host}/lab/tiny:1", "--insecure", "-q")
            assert "all intact" in second("verify").stdout
    finally:
        stop(proc)


def test_after_the_ttl_a_new_manifest_upstream_is_served(cairn: Runner, tmp_path: Path) -> None:
    (tmp_path / "upstream").mkdir()
    upstream, proc = start_registry(tmp_path / "upstream")
    try:
        make_model(cairn, tmp_path, "tiny:1")
        make_model(cairn, tmp_path, "tiny:2")
        cairn("push", "tiny:1", f"{upstream}/lab/tiny:latest", "--insecure", "-q")
        root = tmp_path / "cache"
        with cache(root, "--upstream", f"http://{upstream}", "--upstream-ttl", "1s") as host:
            pulls = other_store(tmp_path, cairn, "client")
            pulls("pull", f"{host}/lab/tiny", "--insecure", "-q")
            old = wait_for(served_tag(root, "lab/tiny", "latest"))
            cairn("push", "tiny:2", f"{upstream}/lab/tiny:latest", "--insecure", "-q")
            new = (tmp_path / "models/manifests/registry.ollama.ai/library/tiny/2").read_bytes()
            assert new != old
            time.sleep(1.5)  # the TTL has passed: the tag is checked again
            pulls("pull", f"{host}/lab/tiny", "--insecure", "-q")
            assert (tmp_path / "client/manifests" / host / "lab/tiny/latest").read_bytes() == new
            assert "all intact" in pulls("verify").stdout
            deadline = time.monotonic() + 60
            while served_tag(root, "lab/tiny", "latest").read_bytes() != new:
                assert time.monotonic() < deadline, "the cache never stored the new manifest"
                time.sleep(0.05)
    finally:
        stop(proc)


def test_ollamas_pull_pattern_through_the_cache(cairn: Runner, tmp_path: Path) -> None:
    """download.go's sequence: the manifest, then per blob a HEAD for the size, an unranged
    GET whose body is closed unread (its Location is kept), and ranged parts in parallel
    with no credentials, while the cache is still fetching the blob."""
    (tmp_path / "upstream").mkdir()
    upstream, proc = start_registry(tmp_path / "upstream")
    try:
        make_model(cairn, tmp_path, size_mb=8)
        cairn("push", "tiny:1", f"{upstream}/library/tiny:1", "--insecure", "-q")
        original = served_tag(tmp_path / "models", "library/tiny", "1").read_bytes()
        root = tmp_path / "cache"
        with cache(root, "--upstream", f"http://{upstream}") as host:
            base = f"http://{host}/v2/library/tiny"
            manifest = httpx.get(
                f"{base}/manifests/1", headers={"Accept": SCHEMA2}, timeout=TIMEOUT
            )
            assert manifest.status_code == 200 and manifest.content == original
            for layer in json.loads(original)["layers"]:
                url = f"{base}/blobs/{layer['digest']}"
                total = int(httpx.head(url, timeout=TIMEOUT).headers["Content-Length"])
                assert total == layer["size"]
                with httpx.stream("GET", url, timeout=TIMEOUT) as first:
                    assert first.status_code == 200
                    direct = first.headers["Location"]
                data = bytearray(total)

                def part(
                    cut: tuple[int, int], direct: str = direct, data: bytearray = data
                ) -> None:
                    offset, size = cut
                    answer = httpx.get(
                        direct,
                        headers={"Range": f"bytes={offset}-{offset + size - 1}"},
                        timeout=TIMEOUT,
                    )
                    assert answer.status_code == 206, answer.status_code
                    data[offset : offset + size] = answer.content

                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(part, parts(total)))
                assert sha(bytes(data)) == layer["digest"]
            assert wait_for(served_tag(root, "library/tiny", "1")) == original
    finally:
        stop(proc)


def test_a_private_upstream_is_reached_with_cairn_login_credentials(
    cairn: Runner, tmp_path: Path, auth_registry: tuple[str, str, str]
) -> None:
    upstream, user, password = auth_registry
    make_model(cairn, tmp_path)
    pusher = {"CAIRN_HOME": str(tmp_path / "pusher"), "DOCKER_CONFIG": str(tmp_path / "none")}
    login(cairn, upstream, user, password, pusher)
    cairn("push", "tiny:1", f"{upstream}/lab/tiny:1", "--insecure", "-q", env=pusher)
    home = tmp_path / "cache-home"
    root = tmp_path / "cache"
    client = other_store(tmp_path, cairn, "client")
    with cache(root, "--upstream", f"http://{upstream}", home=home) as host:
        refused = client("pull", f"{host}/lab/tiny:1", "--insecure", check=False)
        assert refused.returncode == 1  # the server has no credentials for the upstream yet
        assert whole_blobs(root) == []
    server_env = {"CAIRN_HOME": str(home), "DOCKER_CONFIG": str(tmp_path / "none")}
    login(cairn, upstream, user, password, server_env)  # `cairn login` on the server
    with cache(root, "--upstream", f"http://{upstream}", home=home) as host:
        client("pull", f"{host}/lab/tiny:1", "--insecure", "-q")
        assert "all intact" in client("verify").stdout
        wait_for(served_tag(root, "lab/tiny", "1"))
        log = "".join(p.read_text(errors="replace") for p in tmp_path.glob(".cache-*.log"))
        assert password not in log


# -- against an upstream that misbehaves on demand ---------------------------------


class FakeUpstream:
    """An OCI registry in this process serving a few blobs: counts each blob's GETs, can
    hold one blob's body halfway until ``release()``, and can send wrong bytes."""

    def __init__(self, blobs: dict[str, bytes], hold: str | None = None, corrupt: int = 0) -> None:
        self.blobs = blobs
        self.hold = hold
        self.corrupt = corrupt
        """How many blob GETs still get wrong bytes (one bit flipped, the same length)."""
        self.gets: dict[str, int] = {}
        self.halfway = threading.Event()
        self.sent_all = threading.Event()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._released: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def release(self) -> None:
        released = self._released
        if released is not None:
            self.loop.call_soon_threadsafe(released.set)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v2/", _base)
        app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", self._blob)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        data = self.blobs.get(digest)
        if data is None:
            return web.Response(status=404)
        headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        if request.method == "HEAD":
            return web.Response(body=data, headers=headers)  # aiohttp sends no body for HEAD
        self.gets[digest] = self.gets.get(digest, 0) + 1
        body = bytearray(data)
        if self.corrupt > 0:
            self.corrupt -= 1
            body[len(body) // 3] ^= 1
        response = web.StreamResponse(headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        if digest == self.hold:
            half = len(body) // 2
            await response.write(bytes(body[:half]))
            self.halfway.set()
            assert self._released is not None
            await asyncio.wait_for(self._released.wait(), 300)
            await response.write(bytes(body[half:]))
            self.sent_all.set()
        else:
            await response.write(bytes(body))
        await response.write_eof()
        return response


async def _base(_: web.Request) -> web.Response:
    return web.json_response({})


def test_two_clients_at_once_share_one_upstream_download(tmp_path: Path) -> None:
    blob = bytes(range(256)) * (16 << 10)  # 4 MiB
    digest = sha(blob)
    with (
        FakeUpstream({digest: blob}, hold=digest) as upstream,
        cache(tmp_path / "cache", "--upstream", upstream.url) as host,
    ):
        url = f"http://{host}/v2/lab/m/blobs/{digest}"
        with httpx.stream("GET", url, timeout=TIMEOUT) as one:
            assert one.status_code == 200
            first = one.iter_raw()
            got_one = next(first)  # the download is under way, held halfway upstream
            assert upstream.halfway.wait(60)
            with httpx.stream("GET", url, timeout=TIMEOUT) as two:
                assert two.status_code == 200
                second = two.iter_raw()
                got_two = next(second)  # it joined the download in progress
                assert upstream.gets == {digest: 1}
                upstream.release()
                got_one += b"".join(first)
                got_two += b"".join(second)
        assert got_one == blob and got_two == blob
        assert upstream.gets == {digest: 1}
        wait_for(tmp_path / "cache" / "blobs" / digest.replace(":", "-"))
        assert whole_blobs(tmp_path / "cache") == [digest]


def test_the_client_gets_bytes_before_the_upstream_sent_the_last(tmp_path: Path) -> None:
    blob = bytes(reversed(range(256))) * (16 << 10)
    digest = sha(blob)
    with (
        FakeUpstream({digest: blob}, hold=digest) as upstream,
        cache(tmp_path / "cache", "--upstream", upstream.url) as host,
    ):
        with httpx.stream("GET", f"http://{host}/v2/lab/m/blobs/{digest}", timeout=TIMEOUT) as got:
            chunks = got.iter_raw()
            received = next(chunks)
            # The upstream is still holding the second half back.
            assert received and not upstream.sent_all.is_set()
            upstream.release()
            received += b"".join(chunks)
        assert received == blob


def test_wrong_bytes_upstream_are_refused_and_stored_nowhere(cairn: Runner, tmp_path: Path) -> None:
    blob = bytes(range(256)) * (8 << 10)
    digest = sha(blob)
    root = tmp_path / "cache"
    with (
        FakeUpstream({digest: blob}, corrupt=1) as upstream,
        cache(root, "--upstream", upstream.url) as host,
    ):
        url = f"http://{host}/v2/lab/m/blobs/{digest}"
        try:
            answer = httpx.get(url, timeout=TIMEOUT)
        except httpx.TransportError:  # cut off mid-body: never a whole wrong blob
            pass
        else:
            assert answer.status_code >= 500, "a wrong blob was answered as whole"
        assert upstream.gets == {digest: 1}
        assert whole_blobs(root) == []
        again = httpx.get(url, timeout=TIMEOUT)  # the upstream sends it right this time
        assert again.status_code == 200 and again.content == blob
        assert upstream.gets == {digest: 2}
        wait_for(root / "blobs" / digest.replace(":", "-"))  # sealed just after it is served
        assert whole_blobs(root) == [digest]


# -- attacks: an upstream scripted request by request -------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
V2 = "application/vnd.docker.distribution.manifest.v2+json"


class ScriptedUpstream:
    """An OCI registry in this process whose answers a test scripts: models as in a real
    one, each request counted (``count``, ``wait_for_requests``), and a handler of the
    test's for blobs or manifests; ``gate()`` events the test opens with ``open()``."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str, str]] = []
        """(method, "blobs" or "manifests", path) of each request, in order."""
        self.on_blob: Handler | None = None
        self.on_manifest: Handler | None = None
        self.arrived = threading.Condition()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._never = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.open(self._never)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def gate(self) -> asyncio.Event:
        return asyncio.Event()

    def open(self, gate: asyncio.Event) -> None:
        self.loop.call_soon_threadsafe(gate.set)

    async def hang(self, _: web.Request) -> web.StreamResponse:
        """A handler that never answers (a black hole, until the test ends)."""
        await self._never.wait()
        return web.Response(status=503)

    def count(self, kind: str, method: str | None = None) -> int:
        with self.arrived:
            return sum(1 for m, k, _ in self.requests if k == kind and method in (None, m))

    def wait_for_requests(self, kind: str, n: int, seconds: float = 120) -> None:
        with self.arrived:
            assert self.arrived.wait_for(
                lambda: sum(1 for _, k, _ in self.requests if k == kind) >= n, seconds
            ), f"the upstream never got {n} {kind} requests"

    def add_model(self, repo: str, tag: str, layers: list[bytes]) -> bytes:
        config = json.dumps({"model": tag}).encode()
        for data in (config, *layers):
            self.blobs[sha(data)] = data
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": V2,
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": sha(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": sha(data),
                        "size": len(data),
                    }
                    for data in layers
                ],
            }
        ).encode()
        self.manifests[(repo, tag)] = manifest
        self.manifests[(repo, sha(manifest))] = manifest
        return manifest

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/v2/", _base)
        app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_route("*", "/v2/{name:.+}/manifests/{reference}", self._manifest)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.shutdown())

    def _note(self, request: web.Request, kind: str) -> None:
        with self.arrived:
            self.requests.append((request.method, kind, request.path))
            self.arrived.notify_all()

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        self._note(request, "blobs")
        if self.on_blob is not None:
            return await self.on_blob(request)
        digest = request.match_info["digest"]
        data = self.blobs.get(digest)
        if data is None:
            return web.Response(status=404)
        headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        return web.Response(body=data, headers=headers)  # aiohttp sends no body for HEAD

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        self._note(request, "manifests")
        if self.on_manifest is not None:
            return await self.on_manifest(request)
        return self.manifest_answer(request)

    def manifest_answer(self, request: web.Request) -> web.Response:
        key = (request.match_info["name"], request.match_info["reference"])
        data = self.manifests.get(key)
        if data is None:
            return web.Response(status=404)
        headers = {"Docker-Content-Digest": sha(data), "Content-Type": V2}
        return web.Response(body=data, headers=headers)


def get_manifest(host: str, repository: str, reference: str) -> httpx.Response:
    return httpx.get(
        f"http://{host}/v2/{repository}/manifests/{reference}",
        headers={"Accept": V2},
        timeout=TIMEOUT,
    )


def read_all(chunks: Iterator[bytes]) -> tuple[bytes, bool]:
    """The rest of a body, and whether it came whole (False: the server cut it off)."""
    got = b""
    try:
        for chunk in chunks:
            got += chunk
    except httpx.TransportError:
        return got, False
    return got, True


def test_a_client_sent_bytes_the_upstream_then_sends_again_from_zero_is_cut_off(
    tmp_path: Path,
) -> None:
    """The upstream sends a wrong first half and drops; asked for the rest (a Range) it
    sends the whole blob, right, from zero: the cache starts over, and a client that got
    the wrong bytes must not get the rest as if they belonged together."""
    blob = bytes(range(256)) * (16 << 10)  # 4 MiB
    digest = sha(blob)
    root = tmp_path / "cache"
    with ScriptedUpstream() as upstream:
        client_has_bytes = upstream.gate()

        async def blobs(request: web.Request) -> web.StreamResponse:
            headers = {"Docker-Content-Digest": digest}
            if request.method == "HEAD":
                return web.Response(body=blob, headers=headers)
            response = web.StreamResponse(headers=headers)  # 200 whatever the Range
            response.content_length = len(blob)
            await response.prepare(request)
            if upstream.count("blobs", "GET") == 1:
                wrong = bytearray(blob[: len(blob) // 2])
                wrong[1000] ^= 0xFF
                await response.write(bytes(wrong))
                await asyncio.wait_for(client_has_bytes.wait(), 120)
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(blob)
            await response.write_eof()
            return response

        upstream.on_blob = blobs
        with (
            cache(root, "--upstream", upstream.url) as host,
            httpx.stream("GET", f"http://{host}/v2/lab/m/blobs/{digest}", timeout=TIMEOUT) as got,
        ):
            assert got.status_code == 200
            chunks = got.iter_raw()
            first = next(chunks)  # bytes of the wrong first half
            upstream.open(client_has_bytes)
            rest, whole = read_all(chunks)
            assert not whole, "a client got wrong bytes and then the rest as a whole blob"
            assert sha(first + rest) != digest
            again = httpx.get(f"http://{host}/v2/lab/m/blobs/{digest}", timeout=TIMEOUT)
            assert again.status_code == 200 and again.content == blob
            wait_for(root / "blobs" / digest.replace(":", "-"))  # sealed just after it is served
        assert whole_blobs(root) == [digest]


def test_a_resumed_partial_started_over_cuts_off_the_clients_that_got_its_bytes(
    tmp_path: Path,
) -> None:
    """A server restarted over a partial download whose bytes are wrong (they were not
    checked yet): it serves them as they are, then the upstream ignores the Range for the
    rest and sends the blob from zero. The clients that got the old bytes are cut off."""
    blob = bytes(reversed(range(256))) * (16 << 10)
    digest = sha(blob)
    root = tmp_path / "cache"
    tmp = root / ".cairn" / "tmp"
    tmp.mkdir(parents=True)
    half = len(blob) // 2
    wrong = bytearray(blob[:half])
    wrong[5] ^= 0xFF
    hex_ = digest.removeprefix("sha256:")
    (tmp / f"{hex_}.partial").write_bytes(bytes(wrong))
    record = {"size": len(blob), "spans": [{"start": 0, "end": len(blob), "done": half}]}
    (tmp / f"{hex_}.partial.json").write_text(json.dumps(record))
    with ScriptedUpstream() as upstream:
        client_has_bytes = upstream.gate()

        async def blobs(request: web.Request) -> web.StreamResponse:
            headers = {"Docker-Content-Digest": digest}
            if request.method == "HEAD":
                return web.Response(body=blob, headers=headers)
            await asyncio.wait_for(client_has_bytes.wait(), 120)
            return web.Response(body=blob, headers=headers)  # 200: the Range ignored

        upstream.on_blob = blobs
        with (
            cache(root, "--upstream", upstream.url) as host,
            httpx.stream("GET", f"http://{host}/v2/lab/m/blobs/{digest}", timeout=TIMEOUT) as got,
        ):
            assert got.status_code == 200
            chunks = got.iter_raw()
            first = next(chunks)  # from the partial file as the last run left it
            upstream.open(client_has_bytes)
            rest, whole = read_all(chunks)
            assert not whole, "a client got a resumed wrong prefix and then the rest, whole"
            assert sha(first + rest) != digest
            again = httpx.get(f"http://{host}/v2/lab/m/blobs/{digest}", timeout=TIMEOUT)
            assert again.status_code == 200 and again.content == blob
            wait_for(root / "blobs" / digest.replace(":", "-"))  # sealed just after it is served
        assert whole_blobs(root) == [digest]


def test_a_manifest_lying_about_a_blobs_size_hurts_only_its_own_pulls(tmp_path: Path) -> None:
    """Another repository's manifest names the same blob with one byte more, and its pull
    starts first: the honest repository's pull is answered with the blob's real size."""
    blob = bytes(range(256)) * (8 << 10)  # 2 MiB
    digest = sha(blob)
    root = tmp_path / "cache"
    with ScriptedUpstream() as upstream:
        honest = upstream.add_model("lab/gemma", "1", [blob])
        lying = json.loads(upstream.add_model("evil/gemma", "1", [blob]))
        lying["layers"][0]["size"] = len(blob) + 1
        upstream.manifests[("evil/gemma", "1")] = json.dumps(lying).encode()
        liars_download_held = upstream.gate()
        holding = threading.Event()

        async def blobs(request: web.Request) -> web.StreamResponse:
            data = upstream.blobs.get(request.match_info["digest"])
            if data is None:
                return web.Response(status=404)
            if request.method == "GET" and data == blob and not holding.is_set():
                holding.set()  # the first GET of the layer: the liar's download
                await asyncio.wait_for(liars_download_held.wait(), 300)
            return web.Response(body=data, headers={"Docker-Content-Digest": sha(data)})

        upstream.on_blob = blobs
        with cache(root, "--upstream", upstream.url) as host:
            assert get_manifest(host, "evil/gemma", "1").status_code == 200
            assert holding.wait(120)  # the liar's download of the layer is under way
            answer = get_manifest(host, "lab/gemma", "1")
            assert answer.status_code == 200 and answer.content == honest
            got = httpx.get(f"http://{host}/v2/lab/gemma/blobs/{digest}", timeout=TIMEOUT)
            assert got.status_code == 200
            assert got.headers["Content-Length"] == str(len(blob)) and got.content == blob
            assert wait_for(served_tag(root, "lab/gemma", "1")) == honest
            upstream.open(liars_download_held)
            assert not served_tag(root, "evil/gemma", "1").exists()
        assert digest in whole_blobs(root)


def test_tags_that_differ_only_in_case_are_different_tags(tmp_path: Path) -> None:
    """OCI tags are case-sensitive; the store's names are not (Ollama's layout). "Latest"
    is answered with its own manifest and never replaces the stored "latest"."""
    root = tmp_path / "cache"
    with ScriptedUpstream() as upstream:
        lower = upstream.add_model("lab/m", "latest", [b"lower" * 1000])
        upper = upstream.add_model("lab/m", "Latest", [b"UPPER" * 1000])
        with cache(root, "--upstream", upstream.url) as host:
            answer = get_manifest(host, "lab/m", "latest")
            assert answer.status_code == 200 and answer.content == lower
            assert wait_for(served_tag(root, "lab/m", "latest")) == lower
            for _ in range(2):  # the twin is stored: asked of the upstream each time
                answer = get_manifest(host, "lab/m", "Latest")
                assert answer.status_code == 200 and answer.content == upper
            by_digest = root / "manifests/registry.ollama.ai/lab/m/.by-digest"
            assert wait_for(by_digest / sha(upper).replace(":", "-")) == upper
            assert served_tag(root, "lab/m", "latest").read_bytes() == lower
            again = get_manifest(host, "lab/m", "latest")
            assert again.status_code == 200 and again.content == lower


def test_manifest_heads_leave_nothing_behind_in_memory(tmp_path: Path) -> None:
    """HEADs of manifests the store lacks are answered and forgotten: 50 HEADs of 3 MB
    manifests do not make the server 150 MB bigger."""
    config = b"{}"

    async def manifests(request: web.Request) -> web.Response:
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha(config),
                    "size": len(config),
                },
                "layers": [],
                "annotations": {"pad": request.match_info["reference"] + "x" * (3 << 20)},
            }
        ).encode()
        headers = {
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            "Docker-Content-Digest": sha(body),
        }
        return web.Response(body=body, headers=headers)

    def rss(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return next(int(line.split()[1]) << 10 for line in status.splitlines() if "VmRSS" in line)

    with ScriptedUpstream() as upstream:
        upstream.on_manifest = manifests
        with cache_process(tmp_path / "cache", "--upstream", upstream.url) as (host, proc):
            accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
            with httpx.Client(timeout=TIMEOUT) as client:
                url = f"http://{host}/v2/lab/m/manifests"
                assert client.head(f"{url}/warm-up", headers=accept).status_code == 200
                before = rss(proc.pid)
                for i in range(50):
                    assert client.head(f"{url}/t{i}", headers=accept).status_code == 200
            grown = rss(proc.pid) - before
            assert grown < 75 << 20, f"the server kept {grown >> 20} MB after 50 HEADs"


def test_a_hung_upstream_is_checked_once_for_everyone_then_left_alone_a_while(
    tmp_path: Path,
) -> None:
    """A stored tag past its TTL, an upstream that never answers: the requests that come
    while the check hangs share it, and after it failed the stored tag is served without
    asking again (the back-off)."""
    root = tmp_path / "cache"
    with ScriptedUpstream() as upstream:
        stored = upstream.add_model("lab/m", "1", [b"weights" * 1000])
        with cache(
            root, "--upstream", upstream.url, "--upstream-ttl", "0", "--upstream-timeout", "5"
        ) as host:
            assert get_manifest(host, "lab/m", "1").content == stored
            wait_for(served_tag(root, "lab/m", "1"))
            asked = upstream.count("manifests")
            upstream.on_manifest = upstream.hang
            with ThreadPoolExecutor(4) as pool:
                first = pool.submit(get_manifest, host, "lab/m", "1")
                upstream.wait_for_requests("manifests", asked + 1)  # the check hangs
                others = [pool.submit(get_manifest, host, "lab/m", "1") for _ in range(3)]
                answers = [first.result(), *(f.result() for f in others)]
            assert [(a.status_code, a.content) for a in answers] == [(200, stored)] * 4
            assert upstream.count("manifests") == asked + 1
            later = get_manifest(host, "lab/m", "1")  # within the back-off: not asked
            assert later.status_code == 200 and later.content == stored
            assert upstream.count("manifests") == asked + 1


def test_a_black_holed_upstream_gets_the_client_a_502_within_the_deadline(
    tmp_path: Path,
) -> None:
    """An upstream that never answers: a manifest and a blob the store lacks, and a blob
    whose size the upstream gave but whose bytes never come, each end in a 502 within the
    deadline (``--upstream-timeout``, 5 s here), long before the client's own timeout."""
    quiet = b"never sent" * 1000
    with ScriptedUpstream() as upstream:

        async def blobs(request: web.Request) -> web.StreamResponse:
            if request.match_info["digest"] == sha(quiet) and request.method == "HEAD":
                return web.Response(body=quiet, headers={"Docker-Content-Digest": sha(quiet)})
            return await upstream.hang(request)

        upstream.on_manifest = upstream.hang
        upstream.on_blob = blobs
        impatient = httpx.Timeout(100.0)  # the attack saw 153 s
        base = "/v2/lab/m"
        paths = [
            f"{base}/manifests/1",
            f"{base}/blobs/{sha(b'unknown')}",
            f"{base}/blobs/{sha(quiet)}",
        ]
        waiting = ("--upstream-timeout", "5")
        with cache(tmp_path / "cache", "--upstream", upstream.url, *waiting) as host:

            def get(path: str) -> httpx.Response:
                return httpx.get(f"http://{host}{path}", headers={"Accept": V2}, timeout=impatient)

            with ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(get, paths))
        assert [a.status_code for a in answers] == [502] * 3
        assert all("no upstream could be reached" in a.text for a in answers)


def test_concurrent_gets_of_an_uncached_tag_ask_the_upstream_once(tmp_path: Path) -> None:
    """Twenty clients ask at once for a tag the store lacks: one upstream manifest GET.
    The upstream holds its answer until a second request comes (none should), or 10 s."""
    root = tmp_path / "cache"
    with ScriptedUpstream() as upstream:
        manifest = upstream.add_model("lab/m", "1", [b"weights" * 1000])

        async def held(request: web.Request) -> web.StreamResponse:
            if upstream.count("manifests") == 1:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(second.wait(), 10)
            else:
                second.set()
            return upstream.manifest_answer(request)

        second = upstream.gate()
        upstream.on_manifest = held
        with (
            cache(root, "--upstream", upstream.url) as host,
            ThreadPoolExecutor(20) as pool,
        ):
            first = pool.submit(get_manifest, host, "lab/m", "1")
            upstream.wait_for_requests("manifests", 1)
            rest = [pool.submit(get_manifest, host, "lab/m", "1") for _ in range(19)]
            answers = [first.result(), *(f.result() for f in rest)]
            assert [(a.status_code, a.content) for a in answers] == [(200, manifest)] * 20
            assert upstream.count("manifests") == 1
            assert wait_for(served_tag(root, "lab/m", "1")) == manifest
