"""``/v1/responses`` against the official ``openai`` client, with the real Gemma 3 270M."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.server.test_tools import CALL_SCHEMA

ASKED: Any = {"model": "gemma3:270m", "temperature": 0, "max_output_tokens": 12}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def client_for(served: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{served}/v1", api_key="unused", timeout=300)


def test_a_response_streamed_and_not_says_the_same(served: str) -> None:
    client = client_for(served)
    whole = client.responses.create(input="Name a colour.", **ASKED)
    assert whole.id.startswith("resp_") and whole.object == "response"
    assert whole.model == "gemma3:270m" and whole.created_at > 0
    assert whole.status in ("completed", "incomplete")
    if whole.status == "incomplete":  # stopped by max_output_tokens
        assert whole.incomplete_details is not None
        assert whole.incomplete_details.reason == "max_output_tokens"
    [message] = whole.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    text = whole.output_text
    assert text.strip() and text == message.content[0].text
    usage = whole.usage
    assert usage is not None and usage.input_tokens > 0 and 1 <= usage.output_tokens <= 12
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens

    events = list(client.responses.create(input="Name a colour.", stream=True, **ASKED))
    kinds = [event.type for event in events]
    deltas = kinds.count("response.output_text.delta")
    ending = "response.completed" if whole.status == "completed" else "response.incomplete"
    assert deltas >= 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        ending,
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    joined = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert joined == text  # temperature 0: the same answer
    last = events[-1].response
    assert last.id == events[0].response.id and last.output_text == text
    assert last.status == whole.status and last.usage is not None
    assert last.usage.output_tokens == usage.output_tokens


def test_json_streams_through_the_helper_to_a_completed_response(served: str) -> None:
    """The base model never stops on plain text; asked for JSON on "{}" it closes the
    object and stops, so the stream ends in ``response.completed``."""
    import json

    client = client_for(served)
    asked = {**ASKED, "text": {"format": {"type": "json_object"}}}
    with client.responses.stream(input="{}", **asked) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.incomplete_details is None
    assert final.output_text == "".join(texts)
    assert isinstance(json.loads(final.output_text), dict)
    assert final.text is not None and final.text.format.type == "json_object"
    whole = client.responses.create(input="{}", **asked)
    assert whole.status == "completed" and whole.output_text == final.output_text


def test_instructions_and_message_lists_reach_the_model(served: str) -> None:
    client = client_for(served)
    plain = client.responses.create(input="What is your name?", **ASKED).output_text
    instructed = client.responses.create(
        input="What is your name?",
        instructions="You are a pirate called Barnacle Bill. Always answer in pirate speech.",
        **ASKED,
    )
    assert instructed.instructions is not None and "pirate" in instructed.instructions
    assert instructed.output_text.strip() and instructed.output_text != plain

    listed = client.responses.create(
        input=[
            {"role": "developer", "content": "Answer with one word."},
            {"role": "user", "content": [{"type": "input_text", "text": "What is your name?"}]},
        ],
        **ASKED,
    )
    assert listed.output_text.strip()
    # a message list with only the user's string is the same request as the string
    same = client.responses.create(
        input=[{"type": "message", "role": "user", "content": "What is your name?"}], **ASKED
    )
    assert same.output_text == plain
    history = client.responses.create(
        input=[
            {"role": "user", "content": "What is your name?"},
            {"role": "assistant", "content": [{"type": "output_text", "text": plain}]},
            {"role": "user", "content": "And how old are you?"},
        ],
        **ASKED,
    )
    assert history.output_text.strip()


def test_bad_requests_get_openais_errors(served: str) -> None:
    import openai

    client = client_for(served)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="nothing-here", input="hi")
    assert "not found" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as stateful:
        client.responses.create(input="hi", previous_response_id="resp_123", **ASKED)
    assert "previous_response_id" in str(stateful.value) and "stateless" in str(stateful.value)
    for wrong, word in (
        ({"input": 5}, "input"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input_audio"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "yaml"),
        ({"input": "hi", "stream": "yes"}, "stream"),
    ):
        answer = httpx.post(
            f"{served}/v1/responses", json={"model": "gemma3:270m", **wrong}, timeout=60
        )
        assert answer.status_code == 400, wrong
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and word in error["message"]


def test_function_tools_give_function_call_items(served: str) -> None:
    """The answer is forced (by a json_schema format) to be a call: the server must read
    it as one, streamed or not, and take the call and its output back as history."""
    import json

    client = client_for(served)
    asked = {
        **ASKED,
        "max_output_tokens": 60,
        "tools": [WEATHER],
        "text": {"format": {"type": "json_schema", "name": "call", "schema": CALL_SCHEMA}},
    }
    question = "What is the weather in Seoul?"
    whole = client.responses.create(input=question, **asked)
    assert whole.status == "completed"
    [call] = whole.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    arguments = json.loads(call.arguments)
    assert arguments["city"] in ("Seoul", "Oslo")
    assert whole.tools[0].type == "function"

    events = list(client.responses.create(input=question, stream=True, **asked))
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    [streamed] = events[-1].response.output
    assert streamed.type == "function_call" and json.loads(streamed.arguments) == arguments

    history: Any = [
        {"role": "user", "content": question},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "11 degrees, rain"},
    ]
    after = client.responses.create(input=history, **{**ASKED, "tools": [WEATHER]})
    assert after.output and after.usage is not None and after.usage.input_tokens > 0
    none = client.responses.create(input=question, tool_choice="none", **asked)
    assert none.output[0].type == "message"  # no tools offered: the JSON is plain text
    assert json.loads(none.output_text)["name"] == "get_weather"


def test_korean_streams_without_broken_characters(served: str) -> None:
    client = client_for(served)
    events = list(
        client.responses.create(
            input="한국의 수도는 어디입니까? 한국어로 대답하세요.",
            stream=True,
            **{**ASKED, "max_output_tokens": 16},
        )
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas and not any("\ufffd" in delta for delta in deltas)
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "".join(deltas)
