"""The docs name every CLI command; the README gives the two set-up commands."""

from __future__ import annotations

from pathlib import Path

from cairn.cli import cli

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = DOCS.parent / "README.md"


def test_every_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    for name in cli.commands:
        assert f"`cairn {name}" in text, f"docs/cli.md does not describe `cairn {name}`"


def test_every_option_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    for name, command in cli.commands.items():
        for param in command.params:
            for option in getattr(param, "opts", []):
                if option.startswith("--") and option != "--help":
                    assert option in text, f"docs/cli.md does not mention {name} {option}"


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_modelfile_doc_names_every_instruction() -> None:
    from cairn.modelfile import INSTRUCTIONS, PARAMETER_TYPES

    text = (DOCS / "modelfile.md").read_text()
    for instruction in INSTRUCTIONS:
        assert f"`{instruction.upper()}" in text
    for parameter in PARAMETER_TYPES:
        assert f"`{parameter}`" in text


def test_every_hook_is_documented() -> None:
    from cairn.runtime_plugins import hookspecs

    text = (DOCS / "runtimes.md").read_text()
    hooks = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "cairn_spec")]
    assert hooks == ["register_runtimes"]
    for hook in hooks:
        assert f"`{hook}(" in text


def test_korean_docs_exist_and_are_linked() -> None:
    for name in ("README.md", "quickstart.md"):
        text = (DOCS / "ko" / name).read_text(encoding="utf-8")
        assert sum("\uac00" <= c <= "\ud7a3" for c in text) > 200  # written in Hangul
    assert "docs/ko/README.md" in README.read_text()
