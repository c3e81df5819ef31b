"""The server client's parts that need no server: ``CAIRN_HOST`` as Ollama reads
``OLLAMA_HOST``, ``ollama ps``'s UNTIL, and the failures a real server will not produce on
demand (an error line mid-stream, a line that is not JSON, a route it lacks), scripted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cairn.cli.server import human_until
from cairn.errors import ModelNotFoundError, ServerError
from cairn.server.client import ServerClient, address, store_identity


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        (":9000", "http://127.0.0.1:9000"),
        ("gpu-box", "http://gpu-box:11434"),
        ("http://gpu-box", "http://gpu-box:80"),
        ("https://gpu-box/", "https://gpu-box:443"),
        ("[::1]:11500", "http://[::1]:11500"),
        ("::", "http://[::1]:11434"),
    ],
)
def test_cairn_host_is_read_as_ollama_reads_ollama_host(given: str, url: str) -> None:
    where = address({"CAIRN_HOST": given} if given else {})
    assert where.url == url and where.given == bool(given)


def test_until_says_what_ollama_ps_says() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    at = now.timestamp()

    def until(**delta: float) -> str:
        return human_until(now + timedelta(**delta), at)

    assert until(minutes=4, seconds=59) == "4 minutes from now"
    assert until(seconds=30) == "30 seconds from now"
    assert until(minutes=1, seconds=10) == "About a minute from now"
    assert until(hours=3) == "3 hours from now"
    assert until(days=3650) == "Forever"  # what the server says for keep_alive -1
    assert until(seconds=-1) == "Stopping..."
    assert human_until(None) == "Forever"


def test_the_same_store_by_any_path(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "models")
    assert store_identity(tmp_path / "link") == store_identity(tmp_path / "models")
    (tmp_path / "other").mkdir()
    assert store_identity(tmp_path / "other") != store_identity(tmp_path / "models")
    assert store_identity(tmp_path / "missing") is None


def scripted(answer: httpx.Response) -> ServerClient:
    return ServerClient("http://server", transport=httpx.MockTransport(lambda _: answer))


def ndjson(*lines: object) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_an_error_line_mid_stream_is_an_error_after_the_text_before_it() -> None:
    body = ndjson({"response": "Blue", "done": False}, {"error": "the runner died"})
    client = scripted(httpx.Response(200, content=body))
    seen = []
    with pytest.raises(ServerError, match="the server at http://server says: the runner died"):
        for chunk in client.generate("m", "hi"):
            seen.append(chunk.text)
    assert seen == ["Blue"]


def test_a_line_that_is_not_json_is_an_error() -> None:
    client = scripted(httpx.Response(200, content=b'{"status": "pulling manifest"}\n<html>\n'))
    with pytest.raises(ServerError, match="not JSON"):
        list(client.pull("m"))


def test_a_missing_model_and_a_missing_route_differ() -> None:
    missing = scripted(httpx.Response(404, json={"error": "model 'm' not found"}))
    with pytest.raises(ModelNotFoundError, match="model 'm' not found"):
        missing.show("m")
    no_route = scripted(httpx.Response(404, text="404: Not Found"))
    with pytest.raises(ServerError, match="does not offer /api/pull"):
        list(no_route.pull("m"))


def test_the_last_line_carries_the_statistics_in_seconds() -> None:
    body = ndjson(
        {"message": {"role": "assistant", "content": "Red"}, "done": False},
        {"done": True, "done_reason": "stop", "eval_count": 3, "eval_duration": 1_500_000_000},
    )
    chunks = list(scripted(httpx.Response(200, content=body)).chat("m", []))
    assert [c.text for c in chunks[:-1]] == ["Red"]
    assert chunks[-1].done and chunks[-1].stats == {
        "eval_count": 3,
        "eval_duration": 1.5,
        "done_reason": "stop",
    }


def test_nothing_listening_is_no_server() -> None:
    from tests.conftest import free_port

    with ServerClient(f"http://127.0.0.1:{free_port()}") as client:
        assert not client.answers()
        with pytest.raises(ServerError, match="cannot reach the server"):
            client.ps()
