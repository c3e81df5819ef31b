"""Korean messages: every user-facing string has a translation; machine output has none."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import click
import pytest

from cairn import i18n
from tests.conftest import Runner

CATALOG = i18n.catalog("ko")
SOURCES = Path(i18n.__file__).parent


def help_strings() -> list[str]:
    from cairn.cli import cli

    found: list[str] = []

    def walk(command: click.Command) -> None:
        if command.help:
            found.append(inspect.cleandoc(command.help))
        for param in command.params:
            text = getattr(param, "help", None)
            if text:
                found.append(text)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(cli)
    found.append("Show this message and exit.")
    return found


def marked_strings() -> list[str]:
    """Every literal passed to _() in the package (including _(f"... {{digest}}") templates)."""
    pattern = re.compile(r'_\(\s*(f?)("(?:[^"\\]|\\.)*")\s*\)')
    found = []
    for path in SOURCES.rglob("*.py"):
        for prefix, literal in pattern.findall(path.read_text()):
            if prefix:  # f"{word} {{digest}}": the forms it can take are listed in _label
                continue
            found.append(eval(literal))
    return found


def test_the_catalog_loads() -> None:
    assert len(CATALOG) > 70
    assert CATALOG["SIZE"] == "크기"


@pytest.mark.parametrize("text", sorted(set(help_strings())))
def test_every_help_text_is_translated(text: str) -> None:
    assert text in CATALOG, f"missing from cairn/locale/ko/LC_MESSAGES/cairn.po: {text!r}"


def test_every_marked_string_is_translated() -> None:
    from cairn.cli.chat import HELP

    missing = [
        s
        for s in [*marked_strings(), HELP, "pulling {digest}", "pushing {digest}"]
        if s not in CATALOG
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CAIRN_LANG": "ko"}, "ko"),
        ({"LANGUAGE": "ko:en", "LANG": "C.UTF-8"}, "ko"),
        ({"LC_ALL": "ko_KR.UTF-8"}, "ko"),
        ({"LANG": "ko_KR.UTF-8"}, "ko"),
        ({"LANG": "C.UTF-8"}, "c"),
        ({}, "en"),
        ({"CAIRN_LANG": "en", "LANG": "ko_KR.UTF-8"}, "en"),
    ],
)
def test_language_choice(env: dict[str, str], expected: str) -> None:
    assert i18n.language(env) == expected


def test_cli_in_korean_and_in_english(cairn: Runner, tmp_path: Path) -> None:
    korean = {"LANG": "ko_KR.UTF-8"}
    assert "언어 모델을 내려받고" in cairn("--help", env=korean).stdout
    assert "Pull, push, manage and run" in cairn("--help").stdout
    error = cairn("show", "nosuchmodel", env=korean, check=False)
    assert error.returncode == 1 and error.stderr.startswith("오류: ")
    assert cairn("show", "nosuchmodel", check=False).stderr.startswith("Error: ")
    assert cairn("list", env=korean).stdout.split()[:2] == ["이름", "ID"]
    assert cairn("list").stdout.split()[:2] == ["NAME", "ID"]
    # machine output is never translated
    assert json.loads(cairn("list", "--json", env=korean).stdout) == {"models": [], "errors": []}


def test_table_columns_align_by_display_width() -> None:
    from cairn.cli.output import display_width, table

    lines = table(("이름", "ID"), [("gemma3:270m", "abc")]).splitlines()
    assert display_width("이름") == 4
    column = display_width(lines[0][: lines[0].index("ID")])
    assert column == display_width(lines[1][: lines[1].index("abc")])


def test_chat_output_wraps_by_display_width() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from cairn.cli.output import WordWrapper, display_width

    text = "하늘은 왜 파란가요? 빛이 공기 분자에 부딪혀 흩어지기 때문입니다. 🦙 llama 漢字 words"

    @given(st.lists(st.integers(1, 8), max_size=30), st.integers(10, 40))
    def check(sizes: list[int], columns: int) -> None:
        wrapper = WordWrapper(columns)
        pieces, start = [], 0
        for size in [*sizes, len(text)]:
            pieces.append(text[start : start + size])
            start += size
        out = "".join(wrapper.feed(p) for p in pieces) + wrapper.finish()
        assert all(display_width(line) <= columns for line in out.split("\n"))
        visible = out.replace("\n", "").replace(" ", "")
        assert visible == text.replace(" ", "")  # no character lost or reordered

    check()
