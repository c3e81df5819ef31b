"""Adaptive parallel streams (issue 18): growth, the per-pull budget, stealing, faults, resume.

Thin links are made two ways, both real TCP on 127.0.0.1: the hostile registry
drips each answer at a per-connection rate (and counts blob requests in flight),
and ``tests/throttle.py`` caps each connection in front of a real docker-registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cairn.blobstore import Digest
from cairn.blobstore.partial import Span
from cairn.blobstore.store import BlobStore
from cairn.errors import ConfigError, DigestMismatchError, TransferError
from cairn.manifests.manifest import Descriptor
from cairn.manifests.models import Models
from cairn.manifests.reference import parse_reference
from cairn.registry import fetch
from cairn.registry.client import RegistryClient, RetryPolicy
from cairn.registry.events import Event
from cairn.registry.pull import pull
from cairn.registry.streams import Growth, StreamBudget, max_streams_from_environment
from tests.conftest import Runner, cairn_env, free_port, modelfile
from tests.ggufmaker import write_gguf
from tests.registry.hostile import HostileRegistry, digest
from tests.throttle import Throttle

FAST = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)
MiB = 1 << 20


# -- the rules, alone ------------------------------------------------------------------


def test_growth_adds_while_the_rate_rises_and_stops_when_it_does_not() -> None:
    per_connection = Growth()  # each stream brings 5 MB/s: the sum grows with the streams
    assert per_connection.decide(5e6, 1, room=15)[0] == 3
    assert per_connection.decide(20e6, 4, room=12)[0] == 12
    add, why = per_connection.decide(80e6, 16, room=0)
    assert add == 0 and "CAIRN_MAX_STREAMS" in why and not per_connection.done

    shared_link = Growth()  # the link gives 5 MB/s in all, however many streams
    assert shared_link.decide(5e6, 1, room=15)[0] == 3
    add, why = shared_link.decide(5.2e6, 4, room=12)
    assert add == 0 and shared_link.done and "gives no more" in why
    assert shared_link.decide(1e6, 4, room=12)[0] == 0  # done is done


def test_one_fast_stream_gets_no_company() -> None:
    loopback = Growth()
    add, why = loopback.decide(900e6, 1, room=15)
    assert add == 0 and loopback.done and "fast enough" in why


def test_growth_retries_what_the_budget_refused_and_stops_as_streams_end() -> None:
    growth = Growth()
    assert growth.decide(5e6, 1, room=0)[0] == 0  # nothing free: nothing added
    assert growth.decide(5e6, 1, room=2)[0] == 2  # room came back: try again, within it
    assert growth.decide(15e6, 3, room=13)[0] == 9
    add, why = growth.decide(14e6, 2, room=14)
    assert add == 0 and growth.done and "ending" in why


def test_the_budget_hands_streams_over_in_order_and_loses_none_to_cancellation() -> None:
    async def go() -> None:
        budget = StreamBudget(2)
        await budget.take()
        await budget.take()
        assert not budget.try_take()
        first = asyncio.ensure_future(budget.take())
        second = asyncio.ensure_future(budget.take())
        await asyncio.sleep(0)
        budget.give()  # handed to the first waiter
        await asyncio.sleep(0)
        assert first.done() and not second.done() and budget.open == 2
        budget.give()  # handed to the second, which is cancelled before it runs
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert budget.open == 1  # the cancelled waiter passed its stream back
        assert budget.try_take() and not budget.try_take()

    asyncio.run(go())


def test_try_take_yields_to_a_stream_that_waits() -> None:
    async def go() -> None:
        budget = StreamBudget(1)
        await budget.take()
        waiting = asyncio.ensure_future(budget.take())
        await asyncio.sleep(0)
        budget.give()
        assert not budget.try_take()  # the waiting first stream of another blob goes first
        await waiting

    asyncio.run(go())


@pytest.mark.parametrize("text", ["0", "-3", "many", "257", "1.5", "٣"])
def test_cairn_max_streams_must_be_a_sane_whole_number(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAIRN_MAX_STREAMS", text)
    with pytest.raises(ConfigError, match="CAIRN_MAX_STREAMS"):
        max_streams_from_environment()
    monkeypatch.setenv("CAIRN_MAX_STREAMS", "3")
    assert max_streams_from_environment() == 3


def test_a_bad_cairn_max_streams_is_one_line(cairn: Runner) -> None:
    result = cairn(
        "pull", "127.0.0.1:9/lab/x:1", "--insecure", env={"CAIRN_MAX_STREAMS": "0"}, check=False
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: CAIRN_MAX_STREAMS must be a whole number from 1 to 256, not '0'"
    ]


def test_stealing_takes_the_back_half_of_the_busiest_range(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "store")
    size = 40 * MiB
    with blobs.partial(Digest.parse(digest(b"x")), size, 1) as partial:
        plan = fetch._Plan(partial)
        first = plan.claim()
        assert first == Span(0, size)
        first.done = 8 * MiB
        stolen = plan.claim()
        assert stolen is not None and (stolen.start, stolen.end) == (24 * MiB, size)
        assert first.end == 24 * MiB  # the first stream goes on and stops where the thief began
        first.done = 24 * MiB - 6 * MiB  # 6 MiB left: less than worth a new request
        stolen.done = stolen.end - stolen.start - 7 * MiB
        assert plan.claim() is None
        plan.release(first)
        first.done = first.end - first.start
        assert plan.claim() is None  # a complete range is nobody's work


def test_a_lagging_stream_keeps_only_what_it_can_finish(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "store")
    now = [0.0]
    with blobs.partial(Digest.parse(digest(b"z")), 40 * MiB, 1) as partial:
        cut: list[Span] = []
        plan = fetch._Plan(partial, cut.append, clock=lambda: now[0])
        crawler = plan.claim()
        runner = plan.claim()
        assert crawler is not None and runner is not None
        assert (crawler.end, runner.start) == (20 * MiB, 20 * MiB)  # halves while unmeasured
        now[0] = 1.0
        crawler.done = MiB // 10  # 0.1 MiB/s
        runner.done = runner.end - runner.start  # 20 MiB/s, and done
        stolen = plan.claim(runner)
        # The crawler would need 199 s for its 19.9 MiB, the thief 1 s: the crawler's share
        # (0.5 % of it) is less than one read, so the thief takes it all, and the crawler's
        # connection is cut rather than left to finish a read of bytes no longer its own.
        assert stolen is not None and stolen.start == crawler.position == crawler.end
        assert stolen.end == 20 * MiB and crawler.complete and cut == [crawler]


def test_a_resumed_download_hands_out_its_unfinished_ranges_first(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "store")
    with blobs.partial(Digest.parse(digest(b"y")), 32 * MiB, 4) as partial:
        partial.spans[0].done = partial.spans[0].end  # the first range was done before
        partial.spans[2].done = 3 * MiB
        plan = fetch._Plan(partial)
        claimed = [plan.claim(), plan.claim(), plan.claim()]
        assert claimed == [partial.spans[1], partial.spans[2], partial.spans[3]]


# -- a registry that drips each answer at a per-connection rate --------------------------


@dataclass
class Drip:
    """Serves blob GETs at ``rate`` bytes/s each, counting them in flight; ``fault`` may
    answer the ``fault_at``-th ranged request (from 1) instead."""

    registry: HostileRegistry
    rate: float
    fault: Callable[[web.Request, bytes, int, int], object] | None = None
    fault_at: int = 6
    ignore_range: bool = False
    in_flight: int = 0
    most: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)

    async def __call__(self, request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET" or "/blobs/" not in request.path:
            return None
        data = self.registry.blobs.get(request.path.rpartition("/")[2])
        if data is None or len(data) < MiB:
            return None
        start, end = 0, len(data)
        wanted = request.headers.get("Range")
        if wanted and not self.ignore_range:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, end = int(first), int(last) + 1
        self.ranges.append((start, end))
        if (
            wanted
            and self.fault is not None
            and sum(1 for s, _ in self.ranges if s) == self.fault_at
        ):
            answer = self.fault(request, data, start, end)
            if asyncio.iscoroutine(answer):
                answer = await answer
            if isinstance(answer, web.StreamResponse):
                return answer
        return await self.send(request, data, start, end)

    async def send(
        self, request: web.Request, data: bytes, start: int, end: int, cut: int | None = None
    ) -> web.StreamResponse:
        ranged = bool(request.headers.get("Range")) and not self.ignore_range
        response = web.StreamResponse(status=206 if ranged else 200)
        response.content_length = end - start
        if ranged:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        await response.prepare(request)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        began, sent = time.monotonic(), 0
        try:
            for offset in range(start, end, 1 << 16):
                if cut is not None and offset - start >= cut:
                    assert request.transport is not None
                    request.transport.close()  # the connection drops mid-body
                    return response
                chunk = data[offset : min(end, offset + (1 << 16))]
                await response.write(chunk)
                sent += len(chunk)
                ahead = sent / self.rate - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: its range was cut short by a thief
        finally:
            self.in_flight -= 1
        return response


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    server = HostileRegistry()
    yield server
    server.stop()


@dataclass
class Streams:
    """Blob streams of this process at work at once (their requests, as cairn sees them: the
    server sees a cut connection end a little later)."""

    now: int = 0
    most: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def thin(monkeypatch: pytest.MonkeyPatch) -> Streams:
    """Small blobs behave as large ones do: they grow streams and get stolen from."""
    monkeypatch.setattr(fetch, "PARALLEL_THRESHOLD", MiB)
    monkeypatch.setattr(fetch, "STEAL_AT_LEAST", 2 * MiB)
    counted = Streams()
    fast_span = fetch._fast_span

    def counting(*args: Any) -> None:
        with counted.lock:
            counted.now += 1
            counted.most = max(counted.most, counted.now)
        try:
            fast_span(*args)
        finally:
            with counted.lock:
                counted.now -= 1

    monkeypatch.setattr(fetch, "_fast_span", counting)
    return counted


def pull_from(
    hostile: HostileRegistry,
    store: Path,
    max_streams: int = 16,
    report: Callable[[Event], None] = lambda event: None,
) -> tuple[Models, int]:
    """Pull lab/model:1 in this process (the fast path); the models, and connections made."""
    models = Models(store)

    async def go() -> int:
        async with RegistryClient(
            hostile.host, insecure=True, retry=FAST, max_streams=max_streams
        ) as client:
            await pull(models, parse_reference(f"{hostile.host}/lab/model:1"), client, report)
            return client.connections.made

    return models, asyncio.run(go())


def one_blob(hostile: HostileRegistry) -> bytes:
    """lab/model:1 on ``hostile``, with 24 MiB of weights; the weights."""
    weights = os.urandom(24 * MiB)
    hostile.add_model("lab/model", "1", [weights])
    return weights


def the_blob(models: Models, data: bytes) -> bytes:
    return models.blobs.path(Digest.parse(digest(data))).read_bytes()


def test_a_slow_path_grows_to_the_cap_and_keeps_the_bytes_right(
    hostile: HostileRegistry, store: Path, thin: Streams
) -> None:
    weights = one_blob(hostile)
    drip = Drip(hostile, rate=4e6)
    hostile.hook(drip)
    events: list[Event] = []
    models, _ = pull_from(hostile, store, report=events.append)
    assert the_blob(models, weights) == weights
    assert thin.most == 16  # 1, then 4, then the cap
    assert max(e.streams or 0 for e in events) == 16
    assert any(e.rate and e.rate > 8e6 for e in events)  # several streams' worth
    # Every byte was written once: what the streams counted adds up to the blob, no more.
    assert max(e.completed or 0 for e in events if e.digest == digest(weights)) == len(weights)


def test_the_budget_is_per_pull_not_per_blob(
    hostile: HostileRegistry, store: Path, thin: Streams
) -> None:
    layers = [os.urandom(8 * MiB) for _ in range(3)]
    hostile.add_model("lab/model", "1", layers)
    drip = Drip(hostile, rate=2e6)
    hostile.hook(drip)
    models, _ = pull_from(hostile, store, max_streams=5)
    assert all(the_blob(models, layer) == layer for layer in layers)
    assert thin.most == 5  # three blobs, two more streams: never 3 x 16


@pytest.mark.usefixtures("thin")
def test_a_lagging_stream_has_its_range_stolen(hostile: HostileRegistry, store: Path) -> None:
    weights = one_blob(hostile)
    drip = Drip(hostile, rate=8e6)

    async def crawl(request: web.Request, data: bytes, start: int, end: int) -> object:
        slow = Drip(hostile, rate=200e3)  # this one connection crawls
        return await slow.send(request, data, start, end)

    drip.fault, drip.fault_at = crawl, 1
    hostile.hook(drip)
    models, _ = pull_from(hostile, store, max_streams=4)
    assert the_blob(models, weights) == weights
    crawler = next((s, e) for s, e in drip.ranges if s)  # the first ranged request
    stolen = [(s, e) for s, e in drip.ranges if crawler[0] < s < crawler[1]]
    assert stolen, f"nobody took over the crawling range {crawler}: {drip.ranges}"


# -- the pull issue's faults, with many streams in flight ---------------------------------


def flipped(request: web.Request, data: bytes, start: int, end: int) -> object:
    body = bytearray(data[start:end])
    body[len(body) // 2] ^= 1
    return web.Response(
        status=206,
        body=bytes(body),
        headers={"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"},
    )


def too_many(request: web.Request, data: bytes, start: int, end: int) -> object:
    return web.Response(status=429, headers={"Retry-After": "1"})


@pytest.mark.usefixtures("thin")
def test_corrupt_bytes_in_one_of_many_streams_store_nothing(
    hostile: HostileRegistry, store: Path
) -> None:
    weights = one_blob(hostile)
    drip = Drip(hostile, rate=4e6, fault=flipped)
    hostile.hook(drip)
    with pytest.raises(DigestMismatchError):
        pull_from(hostile, store)
    assert drip.most >= 4
    blobs = BlobStore(store)
    assert not blobs.has(Digest.parse(digest(weights)))
    assert not list((store / ".cairn" / "tmp").glob("*.partial*"))  # untrustworthy: gone
    assert not (store / "manifests").exists()


@pytest.mark.parametrize("fault", ["drop", "429"])
def test_a_stream_that_fails_among_many_resumes_its_own_range(
    fault: str, hostile: HostileRegistry, store: Path, thin: Streams
) -> None:
    weights = one_blob(hostile)
    drip = Drip(hostile, rate=4e6)
    failed: list[tuple[int, int]] = []

    async def drop(request: web.Request, data: bytes, start: int, end: int) -> object:
        failed.append((start, end))
        return await drip.send(request, data, start, end, cut=(end - start) // 2)

    def refuse(request: web.Request, data: bytes, start: int, end: int) -> object:
        failed.append((start, end))
        return too_many(request, data, start, end)

    if fault == "drop":
        drip.fault = drop
    else:
        drip.fault, drip.fault_at = refuse, 2  # while the first streams join
    hostile.hook(drip)
    models, _ = pull_from(hostile, store)
    assert the_blob(models, weights) == weights
    assert drip.most >= 4
    start, end = failed[0]
    later = drip.ranges[drip.ranges.index((start, end)) + 1 :]
    if fault == "drop":
        # Its range was asked for again from where it broke off, not from its start.
        assert any(start < s < end for s, _ in later) and (start, end) not in later
    else:
        assert any(s == start for s, _ in later)  # asked again, after the wait
        assert thin.most == 4  # and a registry that says 429 gets no more streams


@pytest.mark.usefixtures("thin")
def test_a_server_that_stops_honouring_range_mid_pull(
    hostile: HostileRegistry, store: Path
) -> None:
    weights = one_blob(hostile)
    drip = Drip(hostile, rate=4e6)

    def whole(request: web.Request, data: bytes, start: int, end: int) -> object:
        drip.ignore_range = True  # from now on, every answer is the whole blob (200)
        drip.rate = 50e6
        return drip.send(request, data, 0, len(data))

    drip.fault = whole
    hostile.hook(drip)
    models, _ = pull_from(hostile, store)
    assert the_blob(models, weights) == weights
    assert drip.ranges[-1] == (0, len(weights))  # it started over as one plain GET


@pytest.mark.usefixtures("thin")
def test_many_streams_redirected_to_another_host_take_no_credentials(
    hostile: HostileRegistry, store: Path, tmp_path: Path
) -> None:
    weights = one_blob(hostile)
    hostile.basic = "alice:pw"
    storage = hostile.other
    drip = Drip(hostile, rate=4e6)

    async def to_storage(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and "/blobs/" in request.path:
            data = hostile.blobs[request.path.rpartition("/")[2]]
            if len(data) >= MiB:
                location = f"{storage.url}{request.path}"
                return web.Response(status=307, headers={"Location": location})
        return None

    hostile.hook(to_storage)
    storage.hook = drip
    models = Models(store)

    async def go() -> None:
        from cairn.registry.auth import Credentials

        async with RegistryClient(
            hostile.host, insecure=True, retry=FAST, credentials=Credentials("alice", "pw")
        ) as client:
            await pull(models, parse_reference(f"{hostile.host}/lab/model:1"), client)

    asyncio.run(go())
    assert the_blob(models, weights) == weights
    assert drip.most >= 4 and storage.authorizations() == []


# -- a real registry behind a throttled link, a real cairn process -----------------------


def big_model(cairn: Runner, tmp_path: Path, registry: str) -> tuple[str, str, int]:
    """A 72 MiB model pushed to ``registry``: its reference, weights digest and size."""
    gguf = write_gguf(
        tmp_path / "big.gguf", tensors=[("w", (1024, 1024, 18))], fill=os.urandom(1 << 16)
    )
    modelfile(tmp_path, f"FROM {gguf}\n", "MF")
    cairn("create", "big:1", "-f", str(tmp_path / "MF"), "--quiet")
    cairn("push", "big:1", f"{registry}/lab/big:1", "--insecure", "-q")
    return "lab/big:1", hashlib.sha256(gguf.read_bytes()).hexdigest(), gguf.stat().st_size


def pull_process(ref: str, store: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``cairn pull ARGS --insecure REF`` into ``store`` as a whole process; it must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "cairn", "pull", *args, "--insecure", ref],
        env=cairn_env(store, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_a_throttled_pull_reports_its_streams_and_says_why(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    name, hexdigest, _ = big_model(cairn, tmp_path, registry)
    throttle = Throttle(int(registry.rpartition(":")[2]), rate=6e6).start()
    try:
        ref = f"{throttle.host}/{name}"
        result = pull_process(ref, tmp_path / "a", "--json", CAIRN_DEBUG="1")
        events = [json.loads(line) for line in result.stdout.splitlines()]
        weights = [e for e in events if e.get("digest") == f"sha256:{hexdigest}"]
        assert max(e.get("streams", 0) for e in weights) == 16
        assert max(e.get("rate", 0) for e in weights) > 20e6  # far above one stream's 6 MB/s
        assert "adding 3" in result.stderr and "adding 12" in result.stderr
        # Sixteen blob streams, and the connection for manifests and the rest.
        assert 16 < throttle.most_open <= 18

        limited = pull_process(ref, tmp_path / "b", "--json", CAIRN_MAX_STREAMS="3")
        streams = [json.loads(line).get("streams", 0) for line in limited.stdout.splitlines()]
        assert max(streams) == 3
    finally:
        throttle.stop()


def test_kill_9_with_many_streams_then_resume_every_range(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    name, hexdigest, size = big_model(cairn, tmp_path, registry)
    port = int(registry.rpartition(":")[2])
    store = tmp_path / "fresh"
    record = store / ".cairn" / "tmp" / f"{hexdigest}.partial.json"
    slow = Throttle(port, rate=1e6).start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cairn", "pull", "-q", "--insecure", f"{slow.host}/{name}"],
            env=cairn_env(store),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        spans: list[dict[str, int]] = []
        while time.monotonic() < deadline:
            try:
                spans = json.loads(record.read_text())["spans"]
            except (OSError, ValueError):
                spans = []
            if sum(1 for s in spans if s["done"]) >= 4 and sum(s["done"] for s in spans) > 8 * MiB:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        slow.stop()
    assert sum(1 for s in spans if s["done"]) >= 4, spans
    saved = json.loads(record.read_text())["spans"]
    kept = sum(s["done"] for s in saved)
    counting = Throttle(port, rate=0).start()  # no cap: it counts the bytes the resume takes
    try:
        pull_process(f"{counting.host}/{name}", store, "-q")
    finally:
        counting.stop()
    assert counting.bytes_down < size - kept + MiB  # every range went on from where it was
    blob = store / "blobs" / f"sha256-{hexdigest}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == hexdigest


def test_the_pull_through_cache_grows_its_upstream_streams(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    from tests.registry.test_pull_through import cache

    name, hexdigest, _ = big_model(cairn, tmp_path, registry)
    throttle = Throttle(int(registry.rpartition(":")[2]), rate=6e6).start()
    try:
        with cache(tmp_path / "cache", "--upstream", f"http://{throttle.host}") as host:
            pull_process(f"{host}/{name}", tmp_path / "through", "-q")
        # One upstream download, in many streams: more connections at once than one per blob
        # of the model (three), never more than the budget and the control connection.
        assert 4 < throttle.most_open <= 17
    finally:
        throttle.stop()
    blob = tmp_path / "through" / "blobs" / f"sha256-{hexdigest}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == hexdigest


@pytest.mark.usefixtures("thin")
def test_streams_cancelled_before_their_first_step_give_their_budget_back(
    hostile: HostileRegistry, store: Path
) -> None:
    """The controller adds streams, then fails in the same step (here: the progress callback
    raises): the new tasks are cancelled before they ever ran, and must still give back
    their share of the budget, or every later blob of the pull waits for ever."""
    weights = one_blob(hostile)
    hostile.hook(Drip(hostile, rate=4e6))

    class Broken(Exception):
        pass

    def observe(streams: int, rate: float) -> None:
        if streams > 1:  # right after the first streams were added
            raise Broken

    async def go() -> int:
        async with RegistryClient(hostile.host, insecure=True, retry=FAST) as client:
            descriptor = Descriptor(
                media_type="application/octet-stream",
                digest=Digest.parse(digest(weights)),
                size=len(weights),
            )
            with pytest.raises(Broken):
                await fetch.fetch_blob(
                    client, "lab/model", descriptor, BlobStore(store), observe=observe
                )
            return client.streams.open

    assert asyncio.run(go()) == 0


def test_a_blob_redirected_to_where_nothing_listens_says_so(
    hostile: HostileRegistry, store: Path
) -> None:
    weights = one_blob(hostile)
    closed = free_port()

    async def nowhere(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and request.path.endswith(digest(weights)):
            return web.Response(
                status=307, headers={"Location": f"http://127.0.0.1:{closed}{request.path}"}
            )
        return None

    hostile.hook(nowhere)
    with pytest.raises(TransferError) as caught:
        pull_from(hostile, store)
    # Named for the storage host the redirect led to, not the registry, and what to do.
    assert f"nothing listens on 127.0.0.1:{closed}" in str(caught.value)
