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
from collections.abc import Iterator
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
        yield f"127.0.0.1:{port}"
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
