"""Many clients at once against a real ``cairn serve``: none lost, none mixed up, none hung;
and Korean through Ollama's and OpenAI's APIs with no character split."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.runtime_plugins.test_run import workers
from tests.server.conftest import Serve

OPTIONS = {"temperature": 0, "seed": 7, "num_predict": 8}
PROMPTS = [
    "Name a colour.",
    "Name a fruit.",
    "Count to five.",
    "Say hello.",
    "Name a city.",
    "Name an animal.",
    "Name a planet.",
    "Name a tree.",
]


def at_once(count: int, work: Any) -> list[Any]:
    """``work(i)`` in ``count`` threads started together; every result, or the error."""
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # kept, so the assertion names it
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a client never got its answer"
    return results


@pytest.mark.parametrize("parallel", ["1", "4"])
def test_eight_clients_each_get_their_own_answer(serve: Serve, parallel: str) -> None:
    import ollama

    url = serve(CAIRN_NUM_PARALLEL=parallel)
    client = ollama.Client(host=url, timeout=600)
    alone = [
        client.generate(model="gemma3:270m", prompt=p, options=OPTIONS).response for p in PROMPTS
    ]
    assert len(set(alone)) > 1  # the prompts do give different answers

    def ask(i: int) -> str:
        if i % 2:  # half stream, half do not
            parts = client.generate(
                model="gemma3:270m", prompt=PROMPTS[i], options=OPTIONS, stream=True
            )
            return "".join(p.response or "" for p in parts)
        return (
            client.generate(model="gemma3:270m", prompt=PROMPTS[i], options=OPTIONS).response or ""
        )

    together = at_once(len(PROMPTS), ask)
    assert together == alone


def test_a_full_queue_is_503_and_nothing_hangs(serve: Serve) -> None:
    url = serve(CAIRN_MAX_QUEUE="10")
    body = {"model": "gemma3:270m", "prompt": "Say hi.", "stream": False, "options": OPTIONS}

    async def storm() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            answers = await asyncio.gather(
                *(client.post(url + "/api/generate", json=body) for _ in range(100))
            )
        for answer in answers:
            if answer.status_code == 503:
                assert "error" in answer.json()
        return [a.status_code for a in answers]

    statuses = asyncio.run(storm())
    assert set(statuses) == {200, 503}, statuses
    # Ten wait at most: the hundred arrive while the model loads, so about ten get in; a
    # margin for a machine so busy that a few answers end before the last ones arrive.
    assert 1 <= statuses.count(200) <= 20 and statuses.count(503) >= 80
    again = httpx.post(url + "/api/generate", json=body, timeout=600)
    assert again.status_code == 200 and again.json()["done"]


KOREAN = "한국의 수도는 어디입니까? 한국어로 대답하세요."


def test_korean_streams_whole_through_ollama_and_openai(served: str) -> None:
    import ollama
    import openai

    client = ollama.Client(host=served)
    options = {"temperature": 0, "seed": 7, "num_predict": 24}
    messages = [{"role": "user", "content": KOREAN}]
    chunks = [
        p.message.content or ""
        for p in client.chat(model="gemma3:270m", messages=messages, options=options, stream=True)
    ]
    generated = [
        p.response or ""
        for p in client.generate(model="gemma3:270m", prompt=KOREAN, options=options, stream=True)
    ]
    compat = openai.OpenAI(base_url=served + "/v1", api_key="unused")
    deltas = [
        c.choices[0].delta.content or ""
        for c in compat.chat.completions.create(
            model="gemma3:270m",
            messages=[{"role": "user", "content": KOREAN}],
            temperature=0,
            seed=7,
            max_tokens=24,
            stream=True,
        )
        if c.choices
    ]
    for pieces in (chunks, generated, deltas):
        assert not any("\ufffd" in piece for piece in pieces)
        assert any("\uac00" <= ch <= "\ud7a3" for ch in "".join(pieces)), pieces  # Hangul came
    assert "".join(chunks) == "".join(deltas)  # the same request, the same answer


def test_parallel_requests_get_runners_of_their_own(serve: Serve, store: Path) -> None:
    """``CAIRN_NUM_PARALLEL=2``: a short answer is not queued behind a long one, each has
    a runner of its own, a client gone stops only its own, and the pool heals."""
    url = serve(CAIRN_NUM_PARALLEL="2")
    long = {"model": "gemma3:270m", "prompt": "Tell a long story.", "raw": True}
    long["options"] = {"temperature": 0, "seed": 7, "num_predict": 3000}
    short = {"model": "gemma3:270m", "prompt": "Say hi.", "stream": False, "options": OPTIONS}
    with httpx.stream("POST", url + "/api/generate", json=long, timeout=600) as streaming:
        lines = streaming.iter_lines()
        assert not json.loads(next(lines))["done"]  # the long answer is under way
        answer = httpx.post(url + "/api/generate", json=short, timeout=600).json()
        assert answer["done"] and answer["eval_count"] >= 1
        assert len(workers(store)) == 2  # each answer its own runner
        assert not json.loads(next(lines))["done"]  # and the long one still going
        (model,) = httpx.get(url + "/api/ps").json()["models"]
        per_token = 18 * 1 * (256 + 256) * 2
        assert model["size"] == (store_weights(store) + 2 * 4096 * per_token)
    # The long one's client is gone: its runner stops; the short one's stays for the next.
    deadline = time.monotonic() + 60
    while len(workers(store)) != 1:
        assert time.monotonic() < deadline, "the runner of a client gone was not stopped"
        time.sleep(0.1)
    again = httpx.post(url + "/api/generate", json=short, timeout=600).json()
    assert again["response"] == answer["response"]  # the same request, the same answer
    assert len(workers(store)) == 1


def store_weights(store: Path) -> int:
    """The size of the biggest blob in the store: the model's weights."""
    return max(p.stat().st_size for p in (store / "blobs").iterdir())
