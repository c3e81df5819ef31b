"""``/v1/messages`` against Anthropic's official Python client, with the real Gemma 3 270M."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from cairn.server.anthropic import Request

MODEL = "gemma3:270m"
GREEDY: Any = {"temperature": 0}
"""The client (2.x) no longer names ``temperature``: it goes in the body as it is."""
ASK: Any = [{"role": "user", "content": "Name a colour."}]
WEATHER: Any = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def client(served: str) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=served, api_key="x", timeout=300)


def text_of(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def events(served: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a streamed answer, as (event name, data)."""
    found: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with httpx.stream("POST", f"{served}/v1/messages", json=body, timeout=300) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                found.append((name, json.loads(line.removeprefix("data: "))))
    return found


def test_the_anthropic_client_answers_and_streams(served: str) -> None:
    anthropic = client(served)
    asked: Any = {"model": MODEL, "max_tokens": 12, "messages": ASK, "extra_body": GREEDY}
    whole = anthropic.messages.create(**asked)
    assert whole.id.startswith("msg_") and whole.type == "message"
    assert whole.role == "assistant" and whole.model == MODEL
    assert [block.type for block in whole.content] == ["text"] and text_of(whole).strip()
    assert whole.stop_reason in ("end_turn", "max_tokens") and whole.stop_sequence is None
    assert whole.usage.input_tokens > 0 and 1 <= whole.usage.output_tokens <= 12

    with anthropic.messages.stream(**asked) as stream:
        pieces = [event.delta.text for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "".join(pieces) == text_of(whole)  # temperature 0: the same answer
    assert text_of(final) == text_of(whole) and final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens

    raw = events(
        served, {"model": MODEL, "max_tokens": 12, "messages": ASK, "stream": True, **GREEDY}
    )
    kinds = [name for name, _ in raw]
    assert all(name == data["type"] for name, data in raw)
    deltas = kinds.count("content_block_delta")
    assert deltas >= 1
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert raw[0][1]["message"]["id"].startswith("msg_")
    assert raw[1][1]["content_block"] == {"type": "text", "text": ""}
    last = raw[-2][1]
    assert last["delta"]["stop_reason"] == whole.stop_reason
    assert last["usage"]["output_tokens"] == whole.usage.output_tokens


def test_system_prompts_and_stop_sequences(served: str) -> None:
    anthropic = client(served)
    asked: Any = {"model": MODEL, "max_tokens": 12, "messages": ASK, "extra_body": GREEDY}
    plain = anthropic.messages.create(**asked)
    system = "Answer in one word."
    as_text = anthropic.messages.create(system=system, **asked)
    as_blocks = anthropic.messages.create(
        system=[{"type": "text", "text": "Answer in one "}, {"type": "text", "text": "word."}],
        **asked,
    )
    assert as_text.usage.input_tokens > plain.usage.input_tokens  # the system prompt is in
    assert text_of(as_blocks) == text_of(as_text)
    assert as_blocks.usage.input_tokens == as_text.usage.input_tokens

    free = text_of(plain)
    words = free.split()
    assert len(words) >= 2, free
    stop = words[1]
    stops = ["never-said-zzz", stop]
    stopped = anthropic.messages.create(stop_sequences=stops, **asked)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert text_of(stopped) == free[: free.find(stop)]
    with anthropic.messages.stream(stop_sequences=stops, **asked) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    assert text_of(final) == text_of(stopped)
    unmatched = anthropic.messages.create(stop_sequences=["never-said-zzz"], **asked)
    assert unmatched.stop_sequence is None and text_of(unmatched) == free


def test_korean_streams_in_whole_characters(served: str) -> None:
    anthropic = client(served)
    messages: Any = [{"role": "user", "content": "한국어로 대답하세요: 하늘은 왜 파란가요?"}]
    asked: Any = {"model": MODEL, "max_tokens": 16, "messages": messages, "extra_body": GREEDY}
    with anthropic.messages.stream(**asked) as stream:
        pieces = [event.delta.text for event in stream if event.type == "content_block_delta"]
    assert pieces and not any("\ufffd" in piece for piece in pieces)
    assert any("\uac00" <= ch <= "\ud7a3" for ch in "".join(pieces))  # Hangul came back
    whole = anthropic.messages.create(**asked)
    assert text_of(whole) and "\ufffd" not in text_of(whole)


def test_errors_have_anthropics_shape(served: str) -> None:
    import anthropic as sdk

    anthropic = client(served)
    with pytest.raises(sdk.NotFoundError) as missing:
        anthropic.messages.create(model="nothing-here", max_tokens=8, messages=ASK)
    assert missing.value.status_code == 404
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'nothing-here' not found"},
    }
    image: Any = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    for wrong in (
        {"max_tokens": 0, "messages": ASK},
        {"max_tokens": 8, "messages": []},
        {"max_tokens": 8, "messages": [{"role": "robot", "content": "hi"}]},
        {"max_tokens": 8, "messages": ASK, "system": 5},
        {"max_tokens": 8, "messages": ASK, "stop_sequences": "stop"},
        {"max_tokens": 8, "messages": ASK, "extra_body": {"temperature": "hot"}},
        {"max_tokens": 8, "messages": ASK, "extra_body": {"stream": "yes"}},
        {
            "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "image", "source": image}]}],
        },
    ):
        with pytest.raises(sdk.BadRequestError) as bad:
            anthropic.messages.create(model=MODEL, **wrong)
        assert isinstance(bad.value.body, dict) and bad.value.body["type"] == "error"
        assert bad.value.body["error"]["type"] == "invalid_request_error"
    assert "image" in str(bad.value)
    url = f"{served}/v1/messages"
    for body, said in (
        (b"{not json", "not valid JSON"),
        (json.dumps({"model": MODEL, "messages": ASK}).encode(), "max_tokens is required"),
    ):
        answer = httpx.post(url, content=body, timeout=60)
        assert answer.status_code == 400
        assert answer.json()["type"] == "error" and said in answer.json()["error"]["message"]
    elsewhere = httpx.post(f"{served}/v1/chat/completions", content=b"{", timeout=60)
    assert elsewhere.json()["error"]["type"] == "invalid_request_error"  # OpenAI's, still


def test_tool_use_and_tool_results(served: str) -> None:
    anthropic = client(served)
    history: Any = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": [{"type": "text", "text": "Sunny, 21 degrees."}],
                },
                {"type": "text", "text": "So, what should I wear?"},
            ],
        },
    ]
    asked: Any = {"model": MODEL, "max_tokens": 8, "tools": WEATHER, "extra_body": GREEDY}
    answered = anthropic.messages.create(messages=history, **asked)
    assert answered.type == "message" and answered.usage.output_tokens >= 1
    assert answered.stop_reason in ("end_turn", "max_tokens", "tool_use")

    # The base model copies what it is shown: a prompt of calls gets a call back.
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    copying: Any = [{"role": "user", "content": "\n".join([call] * 3)}]
    asked["max_tokens"] = 24
    called = anthropic.messages.create(messages=copying, **asked)
    assert called.stop_reason == "tool_use"
    uses = [block for block in called.content if block.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    assert uses[0].input == {"city": "Paris"} and uses[0].id.startswith("toolu_")
    with anthropic.messages.stream(messages=copying, **asked) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    streamed = [block for block in final.content if block.type == "tool_use"]
    assert [(b.name, b.input) for b in streamed] == [("get_weather", {"city": "Paris"})]


def test_a_request_becomes_ollamas_chat() -> None:
    """What the template is given: the system first, tool results as ``tool`` messages
    before the user's text, tool uses as the assistant's ``tool_calls``."""
    asked = Request.from_body(
        {
            "model": MODEL,
            "max_tokens": 5,
            "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["\n"],
            "top_k": 3,
            "tools": WEATHER,
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "Rain."},
                        {"type": "text", "text": "Umbrella?"},
                    ],
                },
            ],
        }
    )
    assert asked.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {}}}],
        },
        {"role": "tool", "content": "Rain.", "tool_name": "get_weather"},
        {"role": "user", "content": "Umbrella?"},
    ]
    assert asked.options == {"num_predict": 5, "top_k": 3, "stop": ["\n"]}
    assert asked.tools[0]["function"]["parameters"] == WEATHER[0]["input_schema"]
    none = Request.from_body(
        {"model": MODEL, "max_tokens": 5, "messages": ASK, "tools": WEATHER,
         "tool_choice": {"type": "none"}}
    )  # fmt: skip
    assert none.tools == []
