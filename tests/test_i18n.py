"""Korean messages: every user-facing string has a translation; machine output has none."""

from __future__ import annotations

import ast
import inspect
import json
import pickle
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
        if command.epilog:
            found.append(command.epilog)
        for param in command.params:
            text = getattr(param, "help", None)
            if text:
                found.append(text)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(cli)
    return found


def marked_strings() -> list[str]:
    """Every literal passed to _() or N_() in the package, and every label given to say()."""
    found = []
    for path in SOURCES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None)
            if name in ("_", "N_"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.append(arg.value)
                    elif isinstance(arg, ast.JoinedStr):  # never in a catalog: fails the test
                        found.append(f"{path.name}:{node.lineno}: {ast.unparse(arg)}")
                    # _(variable) translates what is marked where it is defined (N_)
            elif name == "say":
                found += [
                    arg.value
                    for arg in [
                        *node.args[:1],
                        *(k.value for k in node.keywords if k.arg == "label"),
                    ]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                ]
    return found


def _message_calls() -> list[tuple[str, ast.Call]]:
    """Calls that make a message a user may read: cairn's errors and the helpers that build them."""
    from cairn import errors

    makers = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.CairnError)
    } | {
        "Phrase",
        "storage_error",
        "pwrite_all",
        "check",
        "_fail",
        "__init__",
        "Event",
        "progress",
        "Availability",
    }
    found = []
    for path in sorted(SOURCES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = getattr(func, "id", None) or getattr(func, "attr", None)
                if name in makers:
                    found.append((f"{path.relative_to(SOURCES.parent)}:{node.lineno}", node))
    return found


def error_templates() -> list[str]:
    """The template of every error message (and of the phrases that go into one)."""
    found = []
    for _where, call in _message_calls():
        for arg in call.args:
            choices = [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]
            found += [
                c.value
                for c in choices
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value
            ]
    return found


def test_error_messages_are_templates_not_f_strings() -> None:
    """An f-string message could never be found in the catalog: it must be a template."""
    formatted = [
        where
        for where, call in _message_calls()
        if any(isinstance(arg, ast.JoinedStr) for arg in call.args)
    ]
    assert formatted == []
    assert len(error_templates()) > 150


def test_templates_name_the_fields_they_are_given() -> None:
    """A template whose {field} is not passed would fail as it is raised (a KeyError)."""
    wrong = []
    for where, call in _message_calls():
        given = {k.arg for k in call.keywords}
        if None in given:  # **params: checked where they are built
            continue
        for arg in call.args:
            for choice in [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]:
                if isinstance(choice, ast.Constant) and isinstance(choice.value, str):
                    fields = set(re.findall(r"(?<!\{)\{(\w+)", choice.value))
                    if not fields <= given:
                        wrong.append(f"{where}: {sorted(fields - given)}")
    assert wrong == []


@pytest.mark.parametrize("template", sorted(set(error_templates())))
def test_every_error_message_is_translated(template: str) -> None:
    assert template in CATALOG, f"missing from cairn/locale/ko/LC_MESSAGES/cairn.po: {template!r}"
    fields = sorted(re.findall(r"(?<!\{)\{(\w*)", template))
    assert sorted(re.findall(r"(?<!\{)\{(\w*)", CATALOG[template])) == fields


def click_strings() -> list[str]:
    """Click's own words (``Usage:``, its usage errors): what its modules pass to gettext."""
    from cairn.cli import CLICK_MODULES

    found: list[str] = []
    for name in CLICK_MODULES:
        source = Path(click.__file__).with_name(f"{name}.py").read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("_", "ngettext"):
                found += [
                    a.value
                    for a in node.args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                ]
    return found


@pytest.mark.parametrize("text", sorted(set(click_strings())))
def test_every_click_string_is_translated(text: str) -> None:
    assert text in CATALOG, f"missing from cairn/locale/ko/LC_MESSAGES/cairn.po: {text!r}"


def test_the_catalog_holds_nothing_stale() -> None:
    """Every entry is still used: the collectors above see every string the package shows."""
    from cairn.cli.chat import HELP, SET_HELP, SHOW_HELP

    used = {
        *help_strings(),
        *marked_strings(),
        *error_templates(),
        *click_strings(),
        HELP,
        SET_HELP,
        SHOW_HELP,
    }
    assert [key for key in CATALOG if key not in used] == []


def test_the_catalog_loads() -> None:
    assert len(CATALOG) > 70
    assert CATALOG["SIZE"] == "크기"


@pytest.mark.parametrize("text", sorted(set(help_strings())))
def test_every_help_text_is_translated(text: str) -> None:
    assert text in CATALOG, f"missing from cairn/locale/ko/LC_MESSAGES/cairn.po: {text!r}"


def test_every_marked_string_is_translated() -> None:
    from cairn.cli.chat import HELP, SET_HELP, SHOW_HELP

    missing = [s for s in [*marked_strings(), HELP, SET_HELP, SHOW_HELP] if s not in CATALOG]
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


def test_error_messages_in_korean(cairn: Runner) -> None:
    korean = {"LANG": "ko_KR.UTF-8"}
    missing = cairn("show", "nosuchmodel", env=korean, check=False).stderr
    assert missing == "오류: 모델 'nosuchmodel:latest'을(를) 찾을 수 없습니다\n"
    assert cairn("show", "nosuchmodel", check=False).stderr == (
        "Error: model 'nosuchmodel:latest' not found\n"
    )
    # a phrase inside a phrase is translated too
    bad_name = cairn("show", "a//b", env=korean, check=False).stderr
    assert bad_name == "오류: 잘못된 모델 이름 'a//b': 네임스페이스이(가) 비어 있습니다\n"
    modelfile = cairn("create", "m", "-f", "/nonexistent/Modelfile", env=korean, check=False)
    assert modelfile.stderr == "오류: /nonexistent/Modelfile에 Modelfile이 없습니다\n"


def test_progress_in_korean_ndjson_in_english(
    cairn: Runner, tiny_gguf: Path, registry: str, tmp_path: Path
) -> None:
    korean = {"LANG": "ko_KR.UTF-8"}
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_gguf}\n")
    created = cairn("create", "tiny", "-f", str(tmp_path / "Modelfile"), env=korean).stderr
    assert "모델 구성 요소 모으는 중" in created and created.rstrip().endswith("완료")
    assert "gathering" not in created
    shown = cairn("show", "tiny", env=korean).stdout
    assert "  모델\n" in shown and "양자화" in shown
    assert "quantization" in cairn("show", "tiny").stdout
    pushed = cairn("push", "tiny", f"{registry}/lab/tiny:1", "--insecure", env=korean)
    assert "매니페스트 올리는 중" in pushed.stderr and "올렸습니다" in pushed.stdout
    cairn("rm", "tiny")
    pulled = cairn("pull", f"{registry}/lab/tiny:1", "--insecure", env=korean).stderr
    assert "매니페스트 받는 중" in pulled and " B\n" in pulled and "pulling" not in pulled
    cairn("rm", f"{registry}/lab/tiny:1")
    lines = cairn("pull", f"{registry}/lab/tiny:1", "--insecure", "--json", env=korean).stdout
    statuses = [json.loads(line)["status"] for line in lines.splitlines()]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"


def test_click_usage_and_usage_errors_in_korean(cairn: Runner) -> None:
    korean = {"LANG": "ko_KR.UTF-8"}
    helped = cairn("--help", env=korean).stdout
    assert helped.startswith("사용법: cairn ") and "\n옵션:\n" in helped and "\n명령:\n" in helped
    unknown = cairn("nosuchcommand", env=korean, check=False)
    assert unknown.returncode == 2
    assert "오류: 'nosuchcommand' 명령은 없습니다." in unknown.stderr
    assert "도움말은 'cairn --help'을(를) 실행하세요." in unknown.stderr
    assert "Usage" not in unknown.stderr and "Error" not in unknown.stderr
    missing = cairn("show", env=korean, check=False).stderr
    assert "오류: 인자가 없습니다 'NAME'." in missing
    english = cairn("nosuchcommand", check=False).stderr
    assert english == "Error: No such command 'nosuchcommand'. Try 'cairn --help' for help.\n"


def test_a_terminal_that_cannot_show_korean_gets_english(cairn: Runner) -> None:
    env = {"LANG": "ko_KR.UTF-8", "PYTHONIOENCODING": "ascii"}
    shown = cairn("show", "nosuchmodel", env=env, check=False)
    assert shown.stderr == "Error: model 'nosuchmodel:latest' not found\n"


def test_errors_stay_english_for_machines_and_korean_for_people(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cairn.errors import DigestMismatchError, ModelNotFoundError, RunnerError

    monkeypatch.setenv("CAIRN_LANG", "ko")
    error = ModelNotFoundError("model {display!r} not found", display="gemma3:270m")
    assert str(error) == "model 'gemma3:270m' not found"  # what an HTTP API sends
    assert i18n.localize(error) == "모델 'gemma3:270m'을(를) 찾을 수 없습니다"
    # it survives a trip through pickle (a worker process sends errors back)
    assert i18n.localize(pickle.loads(pickle.dumps(error))) == i18n.localize(error)
    nested = DigestMismatchError(
        "sha256:aa", i18n.Phrase("an incomplete download ({size} bytes)", size=3)
    )
    assert (
        i18n.localize(nested)
        == "다이제스트 불일치: sha256:aa이어야 하는데 끝나지 않은 다운로드(3바이트)입니다"
    )
    # text that is not a phrase (a runner's own output) is passed through as it is
    assert i18n.localize(RunnerError("{x} and {y}")) == "{x} and {y}"
    # and through JSON (how the runner process reports an error to cairn)
    carried = i18n.Phrase.from_json(json.loads(json.dumps(nested.message.to_json())))
    assert str(carried) == str(nested) and i18n.localize(carried) == i18n.localize(nested)
    # phrases joined into a list are translated one by one; the rest passes as it is
    joined = i18n.join_phrases("; ", [i18n.Phrase("none installed"), "a {plugin}'s words"])
    assert str(joined) == "none installed; a {plugin}'s words"
    assert i18n.localize(joined) == "설치된 것 없음; a {plugin}'s words"
    monkeypatch.setenv("CAIRN_LANG", "en")
    assert i18n.localize(error) == "model 'gemma3:270m' not found"


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


def test_an_answer_the_terminal_cannot_show_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from cairn.cli.run import _write
    from cairn.errors import ConfigError

    latin1 = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    monkeypatch.setattr("sys.stdout", latin1)
    _write("café ")  # what it can show, it shows
    with pytest.raises(ConfigError, match="encoding is latin-1, not UTF-8"):
        _write("하늘")
    latin1.flush()
    assert latin1.buffer.getvalue() == "café \n".encode("latin-1")
