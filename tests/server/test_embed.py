"""Embeddings from ``cairn serve`` through Ollama's and OpenAI's official clients, with
the real Gemma 3 270M (its embedding length is 640)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from tests.runtime_plugins.test_run import workers

MODEL = "gemma3:270m"
LENGTH = 640
CAT = "The cat sat on the mat."
KOREAN = "고양이가 매트 위에 앉았다."
OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 8}


def norm(vector: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


def close(a: Sequence[float], b: Sequence[float], tolerance: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def test_the_ollama_client_embeds(served: str) -> None:
    import ollama

    client = ollama.Client(host=served, timeout=300)
    before = client.generate(model=MODEL, prompt="Name a colour.", options=OPTIONS)
    one = client.embed(model=MODEL, input=CAT)
    assert one.model == MODEL and len(one.embeddings) == 1
    cat = one.embeddings[0]
    assert len(cat) == LENGTH and abs(norm(cat) - 1) < 1e-4
    assert (one.prompt_eval_count or 0) > 0
    assert (one.total_duration or 0) >= (one.load_duration or 0) > 0

    old = client.embeddings(model=MODEL, prompt=CAT).embedding
    assert len(old) == LENGTH and norm(old) > 1.5  # as Ollama: not normalised
    assert close([x / norm(old) for x in old], cat)  # the same text, the same vector

    many = client.embed(model=MODEL, input=[KOREAN, CAT, "Stock prices fell sharply."])
    korean, again, stocks = many.embeddings
    assert all(len(v) == LENGTH and abs(norm(v) - 1) < 1e-4 for v in many.embeddings)
    assert close(again, cat)  # in its place in the list, and the same as alone
    assert cosine(korean, cat) < 0.999 and cosine(stocks, cat) < 0.999
    assert (many.prompt_eval_count or 0) > (one.prompt_eval_count or 0)

    short = client.embed(model=MODEL, input=CAT, dimensions=64).embeddings[0]
    assert len(short) == 64 and abs(norm(short) - 1) < 1e-4
    assert close(short, [x / norm(cat[:64]) for x in cat[:64]])

    assert client.embed(model=MODEL, input="").embeddings == []  # as Ollama: a load

    # The same load generates as it did before it embedded, and embeds as it did.
    answer = client.generate(model=MODEL, prompt="Name a colour.", options=OPTIONS)
    assert answer.done and (answer.response or "").strip()
    assert answer.response == before.response  # temperature 0, one seed
    assert close(client.embed(model=MODEL, input=CAT).embeddings[0], cat)
    assert [m.model for m in client.ps().models] == [MODEL]


def test_the_openai_client_embeds(served: str) -> None:
    import ollama
    import openai

    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused", timeout=300)
    floats = client.embeddings.create(model=MODEL, input=[CAT, KOREAN], encoding_format="float")
    assert floats.object == "list" and floats.model == MODEL
    assert [d.index for d in floats.data] == [0, 1]
    assert all(d.object == "embedding" and len(d.embedding) == LENGTH for d in floats.data)
    assert all(abs(norm(d.embedding) - 1) < 1e-4 for d in floats.data)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    ollamas = ollama.Client(host=served, timeout=300).embed(model=MODEL, input=CAT)
    assert close(floats.data[0].embedding, ollamas.embeddings[0])

    # The client asks for base64 unless told otherwise, and decodes it itself.
    packed = client.embeddings.create(model=MODEL, input=CAT)
    assert close(packed.data[0].embedding, floats.data[0].embedding, 1e-6)  # float32

    short = client.embeddings.create(model=MODEL, input=KOREAN, dimensions=32)
    assert len(short.data[0].embedding) == 32 and abs(norm(short.data[0].embedding) - 1) < 1e-4
    blank = client.embeddings.create(model=MODEL, input="", encoding_format="float")
    assert len(blank.data) == 1 and len(blank.data[0].embedding) == LENGTH  # as Ollama's /v1


def test_embedding_errors_have_each_apis_shape(served: str) -> None:
    import ollama
    import openai

    client = ollama.Client(host=served, timeout=300)
    for call in (
        lambda: client.embed(model="nothing-here", input=CAT),
        lambda: client.embeddings(model="nothing-here", prompt=CAT),
    ):
        with pytest.raises(ollama.ResponseError) as missing:
            call()
        assert missing.value.status_code == 404 and "not found" in missing.value.error
    with pytest.raises(openai.NotFoundError) as gone:
        openai.OpenAI(base_url=f"{served}/v1", api_key="unused").embeddings.create(
            model="nothing-here", input=CAT
        )
    assert "not found" in gone.value.message

    model = {"model": MODEL}
    for path, body, words in (
        ("/api/embed", {**model, "input": 5}, "invalid input type"),
        ("/api/embed", {**model, "input": [CAT, 7]}, "invalid input type"),
        ("/api/embed", {**model, "input": CAT, "truncate": "no"}, "truncate"),
        ("/api/embed", {**model, "input": CAT, "dimensions": "64"}, "dimensions"),
        ("/api/embed", {**model, "input": CAT, "options": {"num_ctx": "x"}}, "num_ctx"),
        ("/api/embed", {"input": CAT}, "model is required"),
        ("/api/embeddings", {**model, "prompt": ["a list"]}, "prompt"),
    ):
        answer = httpx.post(f"{served}{path}", json=body, timeout=300)
        assert answer.status_code == 400 and words in answer.json()["error"], answer.text
    openai_cases: list[tuple[dict[str, object], str]] = [
        ({**model, "input": []}, "invalid input"),
        ({**model}, "invalid input"),
        ({**model, "input": [[1, 2, 3]]}, "invalid input type"),
        ({**model, "input": CAT, "encoding_format": "int8"}, "encoding_format"),
    ]
    for body, words in openai_cases:
        answer = httpx.post(f"{served}/v1/embeddings", json=body, timeout=300)
        assert answer.status_code == 400, answer.text
        assert words in answer.json()["error"]["message"]


def test_an_input_longer_than_the_context_is_cut_unless_told_not_to(served: str) -> None:
    import ollama

    client = ollama.Client(host=served, timeout=300)
    long = "word " * 400  # about 400 tokens; num_ctx 64 holds 256 at most (llama.cpp's least)
    small = {"num_ctx": 64}
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model=MODEL, input=[CAT, long], truncate=False, options=small)
    assert refused.value.status_code == 400 and "context length" in refused.value.error
    cut = client.embed(model=MODEL, input=long, options=small)
    count = cut.prompt_eval_count or 0
    assert len(cut.embeddings[0]) == LENGTH and f"({count})" in refused.value.error
    assert count < 400
    # The runner that refused is the one that answered: a refusal does not kill it.
    assert close(
        client.embed(model=MODEL, input=CAT, options=small).embeddings[0],
        client.embed(model=MODEL, input=CAT, options=small).embeddings[0],
    )


def test_a_client_gone_mid_embedding_frees_the_model(served: str, store: Path) -> None:
    loaded = httpx.post(f"{served}/api/embed", json={"model": MODEL}, timeout=300)
    assert loaded.status_code == 200 and workers(store)  # loaded: only the embedding is cut
    body = {"model": MODEL, "input": ["A long text to embed. " * 400] * 30}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up long before the end
        httpx.post(f"{served}/api/embed", json=body, timeout=3)
    deadline = time.monotonic() + 30  # 30 texts of 2,000 tokens take far longer than this
    while workers(store) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers(store), "the runner went on embedding for a client that had gone"
    after = httpx.post(f"{served}/api/embed", json={"model": MODEL, "input": CAT}, timeout=300)
    assert after.status_code == 200 and len(after.json()["embeddings"][0]) == LENGTH
