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
        (
            'FROM x\nSYSTEM """closed""" and more\nPARAMETER seed 1',
            'line 2: text after the closing """',
        ),
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


# -- writing a Modelfile back: every text reads back as it was (issue 15) ------------------

AWKWARD = st.lists(
    st.sampled_from(
        ['"', '"""', "\\", '\\"', "\\\\", "\n", "\r", " ", "\t", "x", "#", "é", "\x1b"]
    ),
    max_size=12,
).map("".join)


def ollama_parse(text: str) -> list[tuple[str, str]]:
    """The commands Ollama's parser (parser/parser.go, ``ParseFile``) reads from ``text``:
    its state machine, transcribed, as ``(name, args)``; a ValueError where it fails."""
    nil, name_, value, param, message, comment = range(6)

    def unquote(s: str) -> tuple[str, bool]:
        if s.startswith('"""'):
            return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
        if s.startswith('"'):
            return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
        return s, True

    def step(r: str, state: int) -> tuple[int, str]:
        space, newline = r in " \t", r in "\r\n"
        alpha = r.isascii() and r.isalpha()
        if state == nil:
            return (comment, "") if r == "#" else (nil, "") if space or newline else (name_, r)
        if state in (name_, message):
            if alpha:
                return state, r
            if space:
                return value, ""
            raise ValueError("invalid command")
        if state == param:
            if alpha or (r.isascii() and r.isdigit()) or r == "_":
                return param, r
            if space:
                return value, ""
            raise ValueError("unexpected EOF")
        if state == value:
            return (nil, r) if space or newline else (value, r)
        return (nil, "") if newline else (comment, "")

    commands: list[tuple[str, str]] = []
    state, buffer, name, role = nil, "", "", ""
    for r in text:
        after, r = step(r, state)
        if after != state:
            if state == name_:
                word = buffer.lower()
                name = {"from": "model"}.get(word, word)
                after = {"parameter": param, "message": message}.get(word, after)
            elif state == param:
                name = buffer
            elif state == message:
                if buffer not in ("system", "user", "assistant"):
                    raise ValueError("invalid role")
                role = buffer
            elif state == value:
                unquoted, ok = unquote(buffer.strip())
                if not ok or r in " \t":
                    buffer += r
                    continue
                commands.append((name, f"{role}: {unquoted}" if role else unquoted))
                role = ""
            buffer, state = "", after
        if r.isprintable() and r:
            buffer += r
    if state == value:
        unquoted, ok = unquote(buffer.strip())
        if not ok:
            raise ValueError("unexpected EOF")
        commands.append((name, f"{role}: {unquoted}" if role else unquoted))
    elif state not in (nil, comment):
        raise ValueError("unexpected EOF")
    return commands


def ollama_keeps(text: str) -> str:
    """What Ollama's parser keeps of a text: Go's printable characters, spaces, tabs and
    line ends."""
    return "".join(c for c in text if c.isprintable() or c in " \t\r\n")


def refused_as_documented(text: str, caught: ModelfileError) -> None:
    """A text refused is one the docs say no Modelfile can hold."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]
    if "\r\n" in text:
        assert "a Windows line end" in str(caught)
    else:
        assert 'a line ends with """ and more lines follow it' in str(caught)
        assert any(ollama_keeps(line).rstrip().endswith('"""') for line in lines) or any(
            line.rstrip().endswith('"""') for line in lines
        )


@given(system=AWKWARD, said=AWKWARD, stop=AWKWARD.filter(bool), license_text=AWKWARD)
def test_every_text_reads_back_as_it_was_or_is_refused(
    system: str, said: str, stop: str, license_text: str
) -> None:
    """SYSTEM, MESSAGE, a stop PARAMETER and LICENSE written by ``render_modelfile`` read
    back the same by cairn's parser and by Ollama's (which drops unprintable characters):
    ending with ", holding \"\"\", backslashes, new lines, empty, only quotes."""
    try:
        text = render_modelfile(
            "gemma3:270m",
            system=system,
            parameters={"stop": [stop]},
            licenses=[license_text],
            messages=[Message("assistant", said)],
            strict=True,
        )
    except ModelfileError as caught:
        refused_as_documented(
            next(t for t in (system, stop, license_text, said) if _cannot(t)), caught
        )
        return
    again = parse_modelfile(text)
    assert again.system == system
    assert again.messages == [Message("assistant", said)]
    assert again.parameters == {"stop": [stop]}
    assert again.licenses == [license_text]
    assert ollama_parse(text) == [
        ("model", "gemma3:270m"),
        ("system", ollama_keeps(system)),
        ("stop", ollama_keeps(stop)),
        ("license", ollama_keeps(license_text)),
        ("message", f"assistant: {ollama_keeps(said)}"),
    ]


def _cannot(text: str) -> bool:
    try:
        render_modelfile("x", system=text, strict=True)
    except ModelfileError:
        return True
    return False


@pytest.mark.parametrize(
    "text",
    [
        'He said "hi"',
        'one line\nsay "hi"',
        '"quoted"',
        '""',
        '"',
        '""""""',
        'a """ in the middle\nand more',
        'ends with """',
        'back\\slash \\" and \\\\',
        "",
        "  spaces at both ends  ",
        "first line ends in spaces   \nsecond",
        "\n\nnew lines first",
        "# not a comment",
    ],
)
def test_awkward_texts_read_back(text: str) -> None:
    written = render_modelfile("m", system=text, messages=[Message("user", text)], strict=True)
    again = parse_modelfile(written)
    assert (again.system, again.messages) == (text, [Message("user", text)])
    assert ollama_parse(written)[1:] == [("system", text), ("message", f"user: {text}")]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('a docstring """\nthen more', 'a line ends with """ and more lines follow it'),
        ('"""   \n', 'a line ends with """ and more lines follow it'),
        ("windows\r\nline ends", "a Windows line end (\\r\\n) would be read back as a newline"),
    ],
)
def test_a_text_no_modelfile_can_hold_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        render_modelfile("m", messages=[Message("assistant", text)], strict=True)
    assert (
        str(caught.value)
        == f"MESSAGE assistant: the text cannot be written in a Modelfile: {reason}"
    )
    render_modelfile("m", messages=[Message("assistant", text)])  # shown: written as it is


def test_a_stop_sequence_is_read_as_written() -> None:
    written = 'FROM m\nPARAMETER stop """ User: """\nPARAMETER stop ""x""\n'
    assert parse_modelfile(written).parameters == {"stop": [" User: ", '"x"']}
    assert ollama_parse(written)[1:] == [("stop", " User: "), ("stop", '"x"')]
