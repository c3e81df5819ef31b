"""``cairn serve`` against Ollama's official Python client, with the real Gemma 3 270M."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.runtime_plugins.test_run import workers

OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 12}


def test_the_ollama_client_lists_shows_and_generates(served: str, store: Path) -> None:
    import ollama

    client = ollama.Client(host=served)
    assert [m.model for m in client.list().models] == ["gemma3:270m"]
    shown = client.show("gemma3:270m")
    assert "<start_of_turn>" in (shown.template or "")
    assert shown.details is not None and shown.details.family == "gemma3"

    whole = client.generate(model="gemma3:270m", prompt="Name a colour.", options=OPTIONS)
    assert whole.done and (whole.response or "").strip()
    assert whole.done_reason in ("stop", "length") and 1 <= (whole.eval_count or 0) <= 12
    assert (whole.total_duration or 0) >= (whole.eval_duration or 0) > 0
    parts = list(
        client.generate(model="gemma3:270m", prompt="Name a colour.", options=OPTIONS, stream=True)
    )
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.response or "" for p in parts) == whole.response  # temperature 0, one seed

    messages = [{"role": "user", "content": "Name a colour."}]
    chat = client.chat(model="gemma3:270m", messages=messages, options=OPTIONS)
    assert chat.message.role == "assistant" and chat.message.content == whole.response
    streamed = list(
        client.chat(model="gemma3:270m", messages=messages, options=OPTIONS, stream=True)
    )
    assert "".join(p.message.content or "" for p in streamed) == chat.message.content

    assert [m.model for m in client.ps().models] == ["gemma3:270m"]
    unloaded = client.generate(model="gemma3:270m", prompt="", keep_alive=0)  # as `ollama stop`
    assert unloaded.done_reason == "unload" and client.ps().models == []
    assert not workers(store)  # its runner went with it
    again = client.generate(model="gemma3:270m", prompt="", keep_alive=0)  # not loaded: stays so
    assert again.done_reason == "unload" and (again.load_duration or 0) == 0
    assert not workers(store)

    client.copy("gemma3:270m", "copied:1")
    assert sorted(m.model or "" for m in client.list().models) == ["copied:1", "gemma3:270m"]
    client.delete("copied:1")
    assert [m.model for m in client.list().models] == ["gemma3:270m"]


def test_errors_have_ollamas_shape(served: str) -> None:
    import ollama

    client = ollama.Client(host=served)
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate(model="nothing-here", prompt="hi")
    assert missing.value.status_code == 404 and "not found" in missing.value.error
    bad = httpx.post(f"{served}/api/generate", content=b"{not json")
    assert bad.status_code == 400 and "error" in bad.json()
    no_model = httpx.post(f"{served}/api/chat", json={"messages": []})
    assert no_model.status_code == 400 and no_model.json() == {"error": "model is required"}
    wrong = httpx.post(
        f"{served}/api/generate", json={"model": "gemma3:270m", "options": {"temperature": "hot"}}
    )
    assert wrong.status_code in (400, 500) and "temperature" in wrong.json()["error"]


def test_what_the_attack_on_cairn_serve_found(served: str, store: Path) -> None:
    """Bad input is a 400 with a clear message, never a 500; a huge keep_alive is for ever
    and does not break /api/ps; a client gone before a non-streamed answer ends stops it."""
    api = f"{served}/api/generate"
    model = {"model": "gemma3:270m"}
    for body, field in (
        ({**model, "template": 5}, "template"),
        ({**model, "options": ["x"]}, "options"),
        ({**model, "prompt": "hi", "stream": "false"}, "stream"),
        ({**model, "prompt": "hi", "options": {"num_ctx": 10**12}}, "num_ctx"),
        ({**model, "prompt": "hi", "options": {"temperature": "hot"}}, "temperature"),
    ):
        answer = httpx.post(api, json=body)
        assert answer.status_code == 400 and field in answer.json()["error"], answer.text
    deep = httpx.post(api, content=b"[" * 100_000)
    assert deep.status_code == 400
    named = httpx.post(f"{served}/api/copy", json={"source": "gemma3:270m", "destination": "../x"})
    assert named.status_code == 400
    openai_bad = httpx.post(
        f"{served}/v1/chat/completions",
        json={**model, "messages": [{"role": "user", "content": "hi"}], "response_format": "json"},
    )
    assert openai_bad.status_code == 400 and openai_bad.json()["error"]["message"]
    loaded = httpx.post(api, json={**model, "keep_alive": 1e300})
    assert loaded.status_code == 200, loaded.text
    listed = httpx.get(f"{served}/api/ps")
    assert listed.status_code == 200 and len(listed.json()["models"]) == 1

    story = {**model, "prompt": "Tell me a long story.", "stream": False}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up before the answer ends
        httpx.post(api, json=story | {"options": {"num_predict": 2000}}, timeout=2)
    deadline = time.monotonic() + 20  # 2,000 tokens take far longer than this
    while workers(store) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers(store), "the runner went on answering a client that had gone"


def test_a_client_gone_mid_answer_frees_the_model_at_once(served: str, store: Path) -> None:
    body = {
        "model": "gemma3:270m",
        "prompt": "Tell me a long story.",
        "options": {"num_predict": 2000},
    }
    with httpx.stream("POST", f"{served}/api/generate", json=body, timeout=60) as answer:
        lines = answer.iter_lines()
        for _ in range(3):
            next(lines)  # it is generating; then the client goes away
    started = time.monotonic()
    after = httpx.post(
        f"{served}/api/generate",
        json={
            "model": "gemma3:270m",
            "prompt": "Name a colour.",
            "stream": False,
            "options": OPTIONS,
        },
        timeout=120,
    )
    assert after.status_code == 200 and after.json()["done"]
    # the long answer was stopped, not finished first (2000 tokens take far longer)
    assert after.json()["eval_count"] <= 12 and time.monotonic() - started < 60


def test_the_openai_client_chats_and_completes(served: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["gemma3:270m"]
    assert client.models.retrieve("gemma3:270m").id == "gemma3:270m"
    messages: Any = [{"role": "user", "content": "Name a colour."}]
    asked: Any = {"model": "gemma3:270m", "temperature": 0, "seed": 42, "max_tokens": 12}
    whole = client.chat.completions.create(messages=messages, **asked)
    text = whole.choices[0].message.content or ""
    assert text.strip() and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and 1 <= whole.usage.completion_tokens <= 12
    streamed = list(
        client.chat.completions.create(
            messages=messages, stream=True, stream_options={"include_usage": True}, **asked
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
    assert streamed[-1].usage is not None and streamed[-1].choices == []
    completed = client.completions.create(prompt="The sky is", **asked)
    assert completed.choices[0].text and completed.usage is not None
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nothing-here", messages=messages)
    assert "not found" in str(missing.value)


def test_ps_shows_the_memory_a_model_takes(served: str, gemma_gguf: Path) -> None:
    """The estimate the scheduler holds against free memory: weights plus the KV cache
    for the ``num_ctx`` asked (Gemma 3 270M: 18 layers, 1 KV head of 256 + 256, f16)."""
    import ollama

    client = ollama.Client(host=served)
    weights = gemma_gguf.stat().st_size
    per_token = 18 * 1 * (256 + 256) * 2
    client.generate(model="gemma3:270m", prompt="", options={"num_ctx": 2048})
    assert [(m.size, m.context_length) for m in client.ps().models] == [
        (weights + 2048 * per_token, 2048)
    ]
    client.generate(model="gemma3:270m", prompt="", options={"num_ctx": 8192})  # reloads
    assert [m.size for m in client.ps().models] == [weights + 8192 * per_token]


def test_a_prompt_longer_than_the_context_is_cut_not_left_unanswered(served: str) -> None:
    import ollama

    client = ollama.Client(host=served)
    long = "The quick brown fox jumps over the lazy dog. " * 120  # about 1,300 tokens
    options = {"num_ctx": 512, "num_predict": 8, "temperature": 0, "seed": 1}
    answer = client.generate(model="gemma3:270m", prompt=long, options=options, raw=True)
    assert answer.done and (answer.response or "").strip()
    assert (answer.eval_count or 0) >= 1
    assert (answer.prompt_eval_count or 0) <= 512 - 8  # cut to leave room for the answer


def test_a_runner_dead_mid_answer_is_an_error_inside_the_stream(served: str, store: Path) -> None:
    """Found by the attack: the error went out as a second HTTP response written inside
    the first one's body. Now each API says it in its own stream, and the next request
    is answered by a runner started afresh."""
    import os
    import signal

    long = {"temperature": 0, "seed": 1, "num_predict": 3000}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/api/generate", {"prompt": "Tell a long story.", "options": long}),
        ("/v1/chat/completions", {"stream": True, "max_tokens": 3000, "messages": STORY}),
        ("/v1/messages", {"stream": True, "max_tokens": 3000, "messages": STORY}),
    ]
    for path, body in cases:
        with httpx.stream(
            "POST", served + path, json={"model": "gemma3:270m", **body}, timeout=600
        ) as answer:
            lines = answer.iter_lines()
            assert next(line for line in lines if line.strip())  # under way
            for pid in workers(store):
                os.kill(int(pid), signal.SIGKILL)
            rest = [line for line in lines if line.strip()]
        assert answer.status_code == 200
        if path == "/api/generate":
            assert "runner" in json.loads(rest[-1])["error"]
        elif path == "/v1/chat/completions":
            assert rest[-1] == "data: [DONE]" and "error" in json.loads(rest[-2][6:])
        else:
            assert rest[-2] == "event: error"
            assert json.loads(rest[-1][6:])["error"]["type"] == "api_error"
        after = httpx.post(
            served + "/api/generate",
            json={"model": "gemma3:270m", "prompt": "Hi.", "stream": False, "options": OPTIONS},
            timeout=600,
        )
        assert after.status_code == 200 and after.json()["done"]


STORY = [{"role": "user", "content": "Tell a long story."}]


def test_keep_alive_takes_gos_durations_as_ollamas_cli_sends_them(served: str) -> None:
    """Ollama's CLI sends ``--keepalive 5m`` as ``5m0s``; any Go duration is read."""
    model = {"model": "gemma3:270m"}
    for sent, minutes in (("5m0s", 5), ("1h30m", 90), ("1h30m0s", 90), ("2us", 0)):
        loaded = httpx.post(f"{served}/api/generate", json={**model, "keep_alive": sent})
        assert loaded.status_code == 200, (sent, loaded.text)
        if minutes:
            (running,) = httpx.get(f"{served}/api/ps").json()["models"]
            until = datetime.fromisoformat(running["expires_at"])
            left = (until - datetime.now(UTC)).total_seconds() / 60
            assert minutes - 2 < left <= minutes, (sent, left)
    for wrong in ("5", "m", "1h-2m", "soon"):
        refused = httpx.post(f"{served}/api/generate", json={**model, "keep_alive": wrong})
        if wrong == "5":  # a number in a string is seconds, as before
            assert refused.status_code == 200
            continue
        assert refused.status_code == 400 and "not a duration" in refused.json()["error"]
