from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn.errors import CairnError, TemplateError
from cairn.runtime_plugins.prompt import Message, build_prompt
from cairn.template import render

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.tmpl").read_text().rstrip("\n")


CONVERSATION = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Why?")]


def test_gemma() -> None:
    assert build_prompt(fixture("gemma3"), CONVERSATION) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_llama3_with_system() -> None:
    assert build_prompt(fixture("llama3"), [Message("user", "Hi")], system="Be brief.") == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_qwen_chatml_and_tools() -> None:
    assert build_prompt(fixture("qwen"), [Message("user", "Hi")], system="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant"
    )
    data = {
        "System": "S",
        "Tools": [{"type": "function", "function": {"name": "now"}}],
        "Messages": [{"Role": "system", "Content": "S"}, {"Role": "user", "Content": "time?"}],
    }
    assert render(fixture("qwen"), data) == (
        '<|im_start|>system\nS\n\n# Tools\n{"type":"function","function":{"name":"now"}}\n'
        "<|im_end|>\n<|im_start|>user\ntime?<|im_end|>\n<|im_start|>assistant"
    )


def test_mistral() -> None:
    assert build_prompt(fixture("mistral"), CONVERSATION, system="Sys") == (
        "[INST] Hi[/INST] Hello!</s>[INST] Sys\n\nWhy?[/INST]"
    )


def test_phi3_legacy_prompt_template() -> None:
    assert build_prompt(fixture("phi3"), [Message("user", "Hi")], system="S") == (
        "<|system|>\nS<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    )


def test_no_template_means_the_prompt_as_is() -> None:
    assert build_prompt(None, [Message("user", "plain")]) == "plain"


@pytest.mark.parametrize(
    ("source", "data", "expected"),
    [
        ("a {{- ' '}}", {}, None),
        ("{{ .X }}", {"X": None}, "<no value>"),
        ("{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}", {"B": 1}, "b"),
        ("{{ with .A }}{{ . }}{{ else }}none{{ end }}", {"A": "x"}, "x"),
        ("{{ range .L }}{{ . }},{{ else }}empty{{ end }}", {"L": []}, "empty"),
        ("{{ range $i, $v := .L }}{{ $i }}={{ $v }} {{ end }}", {"L": ["a", "b"]}, "0=a 1=b "),
        (
            "{{ range .L }}{{ if eq . 2 }}{{ break }}{{ end }}{{ . }}{{ end }}",
            {"L": [1, 2, 3]},
            "1",
        ),
        ("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}", {}, "2"),
        ('{{ index .M "k" }} {{ index .L 1 }}', {"M": {"k": "v"}, "L": [1, 2]}, "v 2"),
        ("{{ len .L }} {{ slice .L 1 2 }}", {"L": [1, 2, 3]}, "3 [2]"),
        ('{{ and 1 0 }} {{ or 0 "x" }} {{ not 0 }}', {}, "0 x true"),
        ("{{ eq .A 1 2 3 }} {{ ne 1 2 }} {{ lt 1 2 }}", {"A": 3}, "true true true"),
        ('{{ .A | printf "%s!" }}', {"A": "hi"}, "hi!"),
        ("{{/* a comment */}}x {{- /* trimmed */ -}} y", {}, "xy"),
        ("{{ json .M }}", {"M": {"a": [1, "b"]}}, '{"a":[1,"b"]}'),
        ("{{ .A.B.C }}", {"A": {"B": {"C": "deep"}}}, "deep"),
        ("{{ $.Top }}", {"Top": "root"}, "root"),
    ],
)
def test_language(source: str, data: dict[str, object], expected: str | None) -> None:
    if expected is None:
        with pytest.raises(TemplateError):
            render(source, data)
    else:
        assert render(source, data) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ if .A }}",
        "{{ end }}",
        "{{ nosuch 1 }}",
        "{{ else }}",
        "{{ range }}{{ end }}",
        "{{ $undefined }}",
        "{{ .A | }}",
        "{{ (1 }}",
        "{{ break }}",
        '{{ "x" 1 }}',
    ],
)
def test_errors_are_template_errors(source: str) -> None:
    with pytest.raises(TemplateError):
        render(source, {"A": 1})


@given(st.text(max_size=120))
def test_any_text_raises_only_cairn_errors(source: str) -> None:
    with contextlib.suppress(CairnError):
        render(source, {"Messages": [], "System": "s", "Prompt": "p"})


@given(
    st.lists(
        st.sampled_from(
            [
                "{{",
                "}}",
                "{{-",
                "-}}",
                " if ",
                " end ",
                " else ",
                " range ",
                ".Messages",
                "$x",
                ":=",
                " eq ",
                "(",
                ")",
                "|",
                '"a"',
                " 1 ",
                "text",
                "\n",
            ]
        ),
        max_size=30,
    )
)
def test_template_like_text_raises_only_cairn_errors(pieces: list[str]) -> None:
    with contextlib.suppress(CairnError):
        render("".join(pieces), {"Messages": [{"Role": "user", "Content": "c"}], "x": 1})


CHATML_JINJA = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_gguf_jinja_chat_template_when_there_is_no_template_layer() -> None:
    assert build_prompt(None, [Message("user", "Hi")], "S", chat_template=CHATML_JINJA) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # the template layer wins over the GGUF's
    assert (
        build_prompt("{{ .Prompt }}!", [Message("user", "Hi")], chat_template=CHATML_JINJA) == "Hi!"
    )


def test_gguf_jinja_errors_are_template_errors() -> None:
    with pytest.raises(TemplateError, match="only user turns"):
        build_prompt(
            None, [Message("user", "Hi")], chat_template="{{ raise_exception('only user turns') }}"
        )
    with pytest.raises(TemplateError):
        build_prompt(None, [Message("user", "Hi")], chat_template="{% for %}")
