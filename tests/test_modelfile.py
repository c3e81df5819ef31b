from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn.errors import ModelfileError
from cairn.modelfile import Message, parse_modelfile, render_modelfile

FULL = '''# a comment
FROM ./gemma.gguf
template """<start_of_turn>user
{{ .Prompt }}<end_of_turn>
<start_of_turn>model
"""
SYSTEM You are terse.
PARAMETER stop <end_of_turn>
PARAMETER stop "<eos>"
PARAMETER temperature 0.2
PARAMETER num_ctx 4096
PARAMETER use_mmap false
LICENSE """line one
line two"""
LICENSE "second license"
MESSAGE user Hello there
MESSAGE assistant """Hi.
How can I help?"""
ADAPTER ./lora.gguf
'''


def test_every_instruction() -> None:
    mf = parse_modelfile(FULL)
    assert mf.from_ == "./gemma.gguf"
    assert mf.template == "<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n"
    assert mf.system == "You are terse."
    assert mf.parameters == {
        "stop": ["<end_of_turn>", "<eos>"],
        "temperature": 0.2,
        "num_ctx": 4096,
        "use_mmap": False,
    }
    assert mf.licenses == ["line one\nline two", "second license"]
    assert mf.messages == [
        Message("user", "Hello there"),
        Message("assistant", "Hi.\nHow can I help?"),
    ]
    assert mf.adapter == "./lora.gguf"


def test_render_round_trips() -> None:
    mf = parse_modelfile(FULL)
    text = render_modelfile(
        mf.from_, mf.template, mf.system, mf.parameters, mf.licenses, mf.messages
    )
    again = parse_modelfile(text)
    assert again.template == mf.template
    assert again.system == mf.system
    assert again.parameters == mf.parameters
    assert again.licenses == mf.licenses
    assert again.messages == mf.messages


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM x\nINSTRUCT something", "line 2: unknown instruction 'INSTRUCT'"),
        ("TEMPLATE x", "no FROM line"),
        ("", "no FROM line"),
        ("FROM x\nPARAMETER temperature hot", "wants float"),
        ("FROM x\nPARAMETER num_ctx 1.5", "wants int"),
        ("FROM x\nPARAMETER bogus 1", "unknown parameter 'bogus'"),
        ("FROM x\nPARAMETER temperature", "needs a value"),
        ("FROM x\nMESSAGE robot hi", "role 'robot'"),
        ('FROM x\nSYSTEM """never closed', "never closed"),
        ("FROM", "needs a value"),
    ],
)
def test_bad_modelfiles(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text)
    assert message in str(caught.value)


def test_crlf_and_case_insensitive_instructions() -> None:
    mf = parse_modelfile("from a.gguf\r\nSyStEm hello\r\n")
    assert mf.from_ == "a.gguf"
    assert mf.system == "hello"


@given(st.text(max_size=400))
def test_any_text_raises_only_modelfile_errors(text: str) -> None:
    with contextlib.suppress(ModelfileError):
        parse_modelfile(text)


@given(
    st.lists(
        st.sampled_from(
            [
                "FROM x",
                "PARAMETER",
                " stop",
                " temperature",
                " 1",
                '"""',
                '"',
                "\n",
                "MESSAGE",
                " user",
                " robot",
                "SYSTEM",
                "# c",
                "\t",
                "LICENSE",
                "x",
            ]
        ),
        max_size=25,
    )
)
def test_modelfile_like_text_raises_only_modelfile_errors(pieces: list[str]) -> None:
    with contextlib.suppress(ModelfileError):
        modelfile = parse_modelfile("".join(pieces))
        assert modelfile.from_
