"""Tools and JSON schemas: offered to the template, calls read back from the answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from cairn.runtime_plugins.prompt import Message, build_prompt
from cairn.server.tools import ToolError, ToolParser, check_calls, check_tools, tag_of
from tests.runtime_plugins.test_run import workers

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}

QWEN_LIKE = (
    "{{ if .Tools }}Tools:{{ range .Tools }}\n{{ . }}{{ end }}\n{{ end }}"
    "{{ range .Messages }}{{ .Role }}: {{ .Content }}"
    "{{ if .ToolCalls }}<tool_call>{{ range .ToolCalls }}"
    '{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}'
    "{{ end }}</tool_call>{{ end }}\n{{ end }}assistant:"
)


def feed(parser: ToolParser, text: str, size: int) -> tuple[str, list[dict[str, Any]]]:
    """The answer fed ``size`` characters at a time, as a stream would bring it."""
    content = "".join(parser.add(text[i : i + size]) for i in range(0, len(text), size))
    rest, calls = parser.finish()
    return content + rest, calls


def test_the_template_sees_tools_and_calls_by_their_go_names() -> None:
    call = {"function": {"name": "get_weather", "arguments": {"city": "Seoul"}}}
    prompt = build_prompt(
        QWEN_LIKE,
        [
            Message("user", "Weather in Seoul?"),
            Message("assistant", "", (call,)),
            Message("tool", "11 degrees", tool_name="get_weather"),
        ],
        tools=[WEATHER],
    )
    assert '"name":"get_weather"' in prompt and '"description":"The weather in a city"' in prompt
    assert '<tool_call>{"name": "get_weather", "arguments": {"city":"Seoul"}}</tool_call>' in prompt
    assert "tool: 11 degrees" in prompt


def test_the_tag_comes_from_the_template() -> None:
    assert tag_of(QWEN_LIKE) == "<tool_call>"
    mistral_like = "{{ if .ToolCalls }}[TOOL_CALLS] {{ json .ToolCalls }}{{ end }}"
    assert tag_of(mistral_like) == "[TOOL_CALLS]"
    assert tag_of("{{ .Prompt }}") == "{"
    assert tag_of(None) == "{"


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_calls_are_found_however_the_answer_streams(size: int) -> None:
    call = '{"name": "get_weather", "arguments": {"city": "서울"}}'
    answer = f"Let me look.<tool_call>{call}</tool_call>"
    content, calls = feed(ToolParser([WEATHER], "<tool_call>"), answer, size)
    assert content == "Let me look."
    assert calls == [{"function": {"name": "get_weather", "arguments": {"city": "서울"}}}]


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_a_bare_json_call_counts_only_at_the_start(size: int) -> None:
    call = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    assert feed(ToolParser([WEATHER], "{"), "  " + call, size)[1] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ]
    content, calls = feed(ToolParser([WEATHER], "{"), "Here: " + call, size)
    assert calls == [] and content == "Here: " + call


def test_what_is_not_a_call_stays_content() -> None:
    for answer in (
        '<tool_call>{"name": "no_such_tool", "arguments": {}}',
        "<tool_call>{not json",
        "<tool_ca",  # a tag begun and never finished
    ):
        assert feed(ToolParser([WEATHER], "<tool_call>"), answer, 2) == (answer, [])
    assert feed(ToolParser([], "{"), '{"name": "get_weather"}', 2) == (
        '{"name": "get_weather"}',
        [],
    )


def test_bad_tools_and_calls_are_refused() -> None:
    for bad in ("get_weather", [{"type": "function"}], [{"function": {"name": 3}}], [1]):
        with pytest.raises(ToolError):
            check_tools(bad)
    with pytest.raises(ToolError):
        check_tools([WEATHER] * 1000)
    for bad_call in ([{"function": {"name": "f", "arguments": "{"}}], [{"name": "f"}], "f"):
        with pytest.raises(ToolError):
            check_calls(bad_call)
    openai_call = [{"id": "c", "function": {"name": "f", "arguments": '{"a": 1}'}}]
    assert check_calls(openai_call) == ({"function": {"name": "f", "arguments": {"a": 1}}},)


# -- against a real cairn serve ---------------------------------------------------------

CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": ["get_weather"]},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Seoul", "Oslo"]}},
            "required": ["city"],
        },
    },
    "required": ["name", "arguments"],
}
OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 60}


def test_a_schema_shapes_the_answer(served: str, store: Path) -> None:
    import ollama

    client = ollama.Client(host=served)
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["colour"],
    }
    answer = client.generate(
        model="gemma3:270m", prompt="Name a colour.", format=schema, options=OPTIONS
    )
    assert json.loads(answer.response or "")["colour"] in ("red", "green", "blue")
    refused = httpx.post(
        served + "/api/generate", json={"model": "gemma3:270m", "prompt": "x", "format": [1]}
    )
    assert refused.status_code == 400 and "JSON schema" in refused.json()["error"]
    workers_before = workers(store)
    hostile: list[tuple[dict[str, Any], str]] = [
        ({"$ref": "https://example.com/schema.json"}, "$ref within itself"),
        ({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, "cannot be used"),
        ({"type": "nonsense"}, "cannot be used"),
    ]
    for schema, why in hostile:
        body = {"model": "gemma3:270m", "prompt": "x", "format": schema, "stream": False}
        refused = httpx.post(served + "/api/generate", json=body, timeout=600)
        assert refused.status_code == 400 and why in refused.json()["error"], refused.text
    assert workers(store) == workers_before  # the runner refused it and lives on
    answer = client.generate(model="gemma3:270m", prompt="Name a colour.", options=OPTIONS)
    assert answer.done


def test_the_ollama_client_gets_tool_calls(served: str) -> None:
    """The answer is forced (by the schema) to be a call: the server must read it as one."""
    import ollama

    client = ollama.Client(host=served)
    messages = [{"role": "user", "content": "What is the weather in Seoul?"}]
    whole = client.chat(
        model="gemma3:270m", messages=messages, tools=[WEATHER], format=CALL_SCHEMA, options=OPTIONS
    )
    calls = whole.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    assert calls[0].function.arguments["city"] in ("Seoul", "Oslo")
    assert not (whole.message.content or "").strip()
    parts = list(
        client.chat(
            model="gemma3:270m",
            messages=messages,
            tools=[WEATHER],
            format=CALL_SCHEMA,
            options=OPTIONS,
            stream=True,
        )
    )
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.arguments for c in streamed] == [calls[0].function.arguments]

    # The call and its result go back as history: the template takes them.
    history: list[Any] = [
        *messages,
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "content": "11 degrees, rain", "tool_name": "get_weather"},
    ]
    after = client.chat(
        model="gemma3:270m",
        messages=history,
        tools=[WEATHER],
        options={**OPTIONS, "num_predict": 8},
    )
    assert after.done


RESPONSE_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "call", "schema": CALL_SCHEMA},
}


def test_the_openai_client_gets_tool_calls(served: str) -> None:
    import openai

    client = openai.OpenAI(base_url=served + "/v1", api_key="unused")
    answer = client.chat.completions.create(
        model="gemma3:270m",
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        response_format=RESPONSE_FORMAT,
        temperature=0,
        seed=42,
        max_tokens=60,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id.startswith("call_")
    function = calls[0].function  # type: ignore[union-attr]
    assert function.name == "get_weather"
    assert json.loads(function.arguments)["city"] in ("Seoul", "Oslo")
