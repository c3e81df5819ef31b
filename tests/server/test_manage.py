"""``cairn serve``'s pull, push, create and blobs, against Ollama's official Python client,
a real registry (CNCF distribution) and the real Gemma 3 270M."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from cairn.blobstore import BlobStore, Digest
from tests.conftest import GEMMA_SHA256, GEMMA_SIZE, GEMMA_TEMPLATE

OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 8}
GEMMA_DIGEST = f"sha256:{GEMMA_SHA256}"
TIMEOUT = 300


def _client(served: str) -> ollama.Client:
    return ollama.Client(host=served, timeout=TIMEOUT)


def _gemma_blob(store: Path) -> Path:
    return store / "blobs" / f"sha256-{GEMMA_SHA256}"


def test_push_then_pull_back_with_ollamas_progress(served: str, registry: str, store: Path) -> None:
    client = _client(served)
    name = f"{registry}/library/mine:1"
    client.copy("gemma3:270m", name)

    pushed = list(client.push(name, insecure=True, stream=True))
    statuses = [p.status for p in pushed]
    assert statuses[0] == "retrieving manifest"
    assert statuses[-2:] == ["pushing manifest", "success"]
    weights = [p for p in pushed if p.digest == GEMMA_DIGEST]
    assert weights and {p.status for p in weights} == {f"pushing {GEMMA_SHA256[:12]}"}
    assert weights[-1].total == weights[-1].completed == GEMMA_SIZE

    client.delete(name)
    client.delete("gemma3:270m")
    assert not _gemma_blob(store).exists()  # the pull below downloads it for real

    pulled = list(client.pull(name, insecure=True, stream=True))
    statuses = [p.status for p in pulled]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    weights = [p for p in pulled if p.digest == GEMMA_DIGEST]
    assert {p.status for p in weights} == {f"pulling {GEMMA_SHA256[:12]}"}
    assert {p.total for p in weights} == {GEMMA_SIZE}
    done = [p.completed or 0 for p in weights]
    assert done == sorted(done) and done[-1] == GEMMA_SIZE
    assert all(
        p.digest and p.total and (p.status or "").startswith("pulling ") for p in pulled[1:-3]
    )
    assert _gemma_blob(store).stat().st_size == GEMMA_SIZE

    answer = client.generate(model=name, prompt="Name a colour.", options=OPTIONS)
    assert answer.done and (answer.response or "").strip()
    assert [m.model for m in client.list().models] == [name]

    again = client.pull(name, insecure=True)  # stream false: one last line
    assert again.status == "success"


def test_pull_and_push_errors(served: str, registry: str) -> None:
    client = _client(served)
    missing = f"{registry}/library/nothing:1"
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.pull(missing, insecure=True, stream=True))
    assert "nothing" in streamed.value.error
    with pytest.raises(ollama.ResponseError) as whole:
        client.pull(missing, insecure=True)
    assert whole.value.status_code >= 400 and "nothing" in whole.value.error

    # As Ollama streams it: the first line, then the error as a line of its own.
    body = {"model": missing, "insecure": True}
    with httpx.stream("POST", f"{served}/api/pull", json=body, timeout=TIMEOUT) as answer:
        lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/x-ndjson")
    assert lines[0] == {"status": "pulling manifest"} and list(lines[-1]) == ["error"]

    with pytest.raises(ollama.ResponseError) as unknown:
        client.push(f"{registry}/library/not-here:1", insecure=True)
    assert unknown.value.status_code == 404
    for endpoint in ("pull", "push"):
        bad = httpx.post(f"{served}/api/{endpoint}", json={"insecure": True})
        assert bad.status_code == 400 and bad.json() == {"error": "model is required"}
        wrong = httpx.post(f"{served}/api/{endpoint}", json={"model": "x", "stream": "no"})
        assert wrong.status_code == 400 and "stream" in wrong.json()["error"]


def test_create_from_an_uploaded_gguf_and_from_a_model(
    served: str, store: Path, gemma_gguf: Path
) -> None:
    client = _client(served)
    client.delete("gemma3:270m")
    assert not _gemma_blob(store).exists()  # the upload below sends the whole file
    assert httpx.head(f"{served}/api/blobs/{GEMMA_DIGEST}").status_code == 404
    assert client.create_blob(gemma_gguf) == GEMMA_DIGEST
    assert httpx.head(f"{served}/api/blobs/{GEMMA_DIGEST}").status_code == 200

    created = list(
        client.create(
            model="fromfile:1",
            files={"gemma-3-270m.gguf": GEMMA_DIGEST},
            template=GEMMA_TEMPLATE,
            parameters={"stop": ["<end_of_turn>"], "temperature": 0.5},
            license="Gemma Terms of Use",
            messages=[
                {"role": "user", "content": "Hello."},
                {"role": "assistant", "content": "Hi."},
            ],
            stream=True,
        )
    )
    statuses = [p.status for p in created]
    assert statuses[0] == "parsing GGUF"
    assert f"using existing layer {GEMMA_DIGEST}" in statuses
    assert sum((s or "").startswith("creating new layer sha256:") for s in statuses) == 4
    assert statuses[-2:] == ["writing manifest", "success"]
    shown = client.show("fromfile:1")
    assert shown.template == GEMMA_TEMPLATE
    assert "<end_of_turn>" in (shown.parameters or "") and "temperature" in (shown.parameters or "")
    assert "Gemma Terms of Use" in (shown.modelfile or "")
    answer = client.generate(model="fromfile:1", prompt="Name a colour.", options=OPTIONS)
    assert answer.done and (answer.response or "").strip()

    made = client.create(model="terse:1", from_="fromfile:1", system="Answer in one word.")
    assert made.status == "success"
    shown = client.show("terse:1")
    assert "Answer in one word." in (shown.modelfile or "") and shown.template == GEMMA_TEMPLATE
    assert "temperature" in (shown.parameters or "")  # kept from the model it was made from
    chat = client.chat(
        model="terse:1", messages=[{"role": "user", "content": "Name a colour."}], options=OPTIONS
    )
    assert chat.done and chat.message.content

    # Ollama's quantize field: llama.cpp requantizes, the lines say so as Ollama's do
    quantized = list(client.create(model="q8:1", from_="fromfile:1", quantize="q8_0", stream=True))
    lines = [p.status or "" for p in quantized]
    assert "quantizing Q4_K_M model to Q8_0" in lines, lines
    assert any(line.startswith("warning: requantizing Q4_K_M") for line in lines), lines
    assert lines[-1] == "success"
    details = client.show("q8:1").details
    assert details is not None and details.quantization_level == "Q8_0"

    for asked, status, said in (
        ({"from_": "fromfile:1", "quantize": "q9_z"}, 400, "unknown quantization type 'q9_z'"),
        ({}, 400, "neither 'from' or 'files'"),
        ({"from_": "no-such-model:1"}, 404, "not found"),
        ({"files": {"x.gguf": "sha256:" + "0" * 64}}, 400, "/api/blobs/"),
        ({"files": {"../x.gguf": GEMMA_DIGEST}}, 400, "relative"),
        ({"files": {"x.gguf": "md5:abc"}}, 400, "digest"),
        ({"files": {"model.safetensors": GEMMA_DIGEST}}, 400, "GGUF"),
        ({"from_": "fromfile:1", "parameters": {"temprature": 1}}, 400, "temprature"),
        ({"from_": "fromfile:1", "parameters": {"temperature": "hot"}}, 400, "temperature"),
        ({"from_": "fromfile:1", "template": "{{ .Prompt "}, 400, "TEMPLATE"),
        ({"from_": "fromfile:1", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            client.create(model="refused:1", **asked)
        assert refused.value.status_code == status, (asked, refused.value.error)
        assert said in refused.value.error, (asked, refused.value.error)
    assert "refused:1" not in {m.model for m in client.list().models}


def test_a_blob_must_hash_to_its_digest(served: str, store: Path) -> None:
    data = os.urandom(9 << 20)  # several reads of the store's buffer
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    refused = httpx.post(f"{served}/api/blobs/{wrong}", content=data, timeout=TIMEOUT)
    assert refused.status_code == 400 and "digest mismatch" in refused.json()["error"]
    assert httpx.head(f"{served}/api/blobs/{wrong}").status_code == 404
    assert httpx.head(f"{served}/api/blobs/{right}").status_code == 404
    assert not list((store / ".cairn" / "tmp").glob("*.partial"))  # nothing kept

    def pieces() -> Iterator[bytes]:  # chunked, as a client streaming a file sends it
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    stored = httpx.post(f"{served}/api/blobs/{right}", content=pieces(), timeout=TIMEOUT)
    assert stored.status_code == 201, stored.text
    assert httpx.head(f"{served}/api/blobs/{right}").status_code == 200
    assert (store / "blobs" / f"sha256-{right[7:]}").read_bytes() == data
    again = httpx.post(f"{served}/api/blobs/{right}", content=data, timeout=TIMEOUT)
    assert again.status_code == 200
    for method in ("HEAD", "POST"):
        bad = httpx.request(method, f"{served}/api/blobs/sha256:xyz", content=b"x")
        assert bad.status_code == 400

    # A client gone mid-upload: its temp file goes, and nothing is stored.
    cut = "sha256:" + "1" * 64
    host, _, port = served.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port))) as upload:
        head = f"POST /api/blobs/{cut} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {64 << 20}"
        upload.sendall(head.encode() + b"\r\n\r\n" + data)
        deadline = time.monotonic() + 60
        while not list((store / ".cairn" / "tmp").glob("*.partial")):
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
    deadline = time.monotonic() + 60
    while list((store / ".cairn" / "tmp").glob("*.partial")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list((store / ".cairn" / "tmp").glob("*.partial"))
    assert httpx.head(f"{served}/api/blobs/{cut}").status_code == 404


@contextlib.contextmanager
def slow_proxy(target: str, rate: int) -> Iterator[str]:
    """A TCP proxy in front of ``target`` (``host:port``) that sends its answers back at
    about ``rate`` bytes a second on each connection: a thin link to a registry."""
    listener = socket.create_server(("127.0.0.1", 0))
    host, _, port = target.rpartition(":")
    opened: list[socket.socket] = []
    stop = threading.Event()

    def pump(source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while not stop.is_set():
                data = source.recv(1 << 14 if slow else 1 << 16)
                if not data:
                    break
                sink.sendall(data)
                if slow:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((host, int(port)))
            opened.extend((downstream, upstream))
            for args in ((downstream, upstream, False), (upstream, downstream, True)):
                threading.Thread(target=pump, args=args, daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        acceptor.join(10)


def test_a_client_gone_mid_pull_stops_it_cleanly(served: str, registry: str, store: Path) -> None:
    client = _client(served)
    name = f"{registry}/library/slow:1"
    client.copy("gemma3:270m", name)
    assert client.push(name, insecure=True).status == "success"
    client.delete(name)
    client.delete("gemma3:270m")
    assert not _gemma_blob(store).exists()

    with slow_proxy(registry, 8 << 20) as thin:  # about 30 s for the whole blob
        body = {"model": f"{thin}/library/slow:1", "insecure": True}
        with httpx.stream("POST", f"{served}/api/pull", json=body, timeout=TIMEOUT) as answer:
            for line in answer.iter_lines():
                progress = json.loads(line)
                if progress.get("digest") == GEMMA_DIGEST and progress["completed"] > 2 << 20:
                    break  # some of it has landed; the client goes away
        blobs = BlobStore(store)
        deadline = time.monotonic() + 60
        while any(p.in_use for p in blobs.partials()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(p.in_use for p in blobs.partials()), "the pull went on"
    assert not _gemma_blob(store).exists()  # nothing unverified under its digest
    assert client.list().models == []

    # The server goes on serving; a pull from the registry itself resumes and completes.
    pulled = list(client.pull(name, insecure=True, stream=True))
    assert pulled[-1].status == "success"
    assert BlobStore(store).verify(Digest.parse(GEMMA_DIGEST))
