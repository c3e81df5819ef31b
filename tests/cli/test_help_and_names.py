"""Issue 15, items 1 and 8: every ``--help`` ends with examples and names what each option
wants; completion offers model names wherever a model is named; a mistyped model, parameter
or command gets a "did you mean" only when one is close."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click
import pytest

from cairn.manifests.reference import parse_reference
from cairn.manifests.suggest import close_names, one_keystroke, typos
from tests.conftest import Runner, modelfile

VAGUE_METAVARS = re.compile(r"\b(TEXT|INTEGER|FLOAT|INTEGER RANGE|FLOAT RANGE)\b")


def command_paths() -> list[list[str]]:
    """Every command and subcommand of ``cairn``, as the words that call it."""
    from cairn.cli import cli

    found: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        found.append(path)
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                walk(sub, [*path, name])

    walk(cli, [])
    return found


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "cairn")
def test_every_command_ends_its_help_with_examples(cairn: Runner, path: list[str]) -> None:
    shown = cairn(*path, "--help")
    assert shown.stderr == ""
    examples = shown.stdout.partition("\n  Examples:\n")[2]
    assert examples, shown.stdout
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    calls = [line for line in lines if line.startswith("$ ")]
    assert any(line.startswith("$ cairn ") for line in calls), examples
    assert all(re.search(r"\bcairn\b", line) for line in calls), examples
    if path:  # a command's own examples call it, by its name or alias
        assert any(" ".join(path) in line for line in calls), examples


def test_every_option_that_takes_a_value_says_what_it_wants(cairn: Runner) -> None:
    vague = []
    for path in command_paths():
        options = cairn(*path, "--help").stdout.partition("Options:")[2]
        vague += [f"cairn {' '.join(path)}: {m.group(0)}" for m in VAGUE_METAVARS.finditer(options)]
    assert vague == []
    assert "--limit-rate RATE" in cairn("pull", "--help").stdout
    assert "--runtime NAME" in cairn("run", "--help").stdout
    served = cairn("registry", "serve", "--help").stdout
    assert "--quota SIZE" in served and "--addr HOST:PORT" in served


def test_push_and_pull_help_say_how_names_are_spelled(cairn: Runner) -> None:
    push = " ".join(cairn("push", "--help").stdout.split())
    assert "DESTINATION needs a host: HOST[:PORT]/NAMESPACE/NAME[:TAG]" in push
    pull = cairn("pull", "--help").stdout
    assert "MODEL@sha256:DIGEST" in pull and "$ cairn pull ghcr.io/lab/gemma3@sha256:" in pull


def test_examples_are_in_the_users_language(cairn: Runner) -> None:
    shown = cairn("pull", "--help", env={"CAIRN_LANG": "ko"}).stdout
    assert "\n  예:\n" in shown and "Examples:" not in shown
    assert "    $ cairn pull gemma3:270m\n" in shown
    assert "@sha256:DIGEST" in shown  # the help text itself, translated


def completions(cairn: Runner, line: str) -> list[str]:
    words = line.split(" ")
    result = cairn(
        *words[1:],
        env={
            "_CAIRN_COMPLETE": "bash_complete",
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(words) - 1),
        },
    )
    return [part.partition(",")[2] for part in result.stdout.splitlines() if part.partition(",")[2]]


def test_completion_offers_model_names_to_run_push_and_stop(
    cairn: Runner, tmp_path: Path, tiny_gguf: Path
) -> None:
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "tiny:abc")
    cairn("create", "other:1")
    assert completions(cairn, "cairn run ti") == ["tiny:abc"]
    assert completions(cairn, "cairn run --verbose ot") == ["other:1"]
    assert completions(cairn, "cairn push ti") == ["tiny:abc"]
    assert completions(cairn, "cairn stop ") == ["other:1", "tiny:abc"]
    # push's DESTINATION is a registry's name: not completed from the store
    assert completions(cairn, "cairn push tiny:abc ti") == []


@pytest.fixture
def gemma(cairn: Runner, tmp_path: Path, tiny_gguf: Path) -> Runner:
    """A store holding only ``gemma3:270m``."""
    modelfile(tmp_path, f"FROM {tiny_gguf}\n")
    cairn("create", "gemma3:270m")
    return cairn


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one ``Error:`` line a failed command ends with; no traceback anywhere."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    return lines[-1]


def test_show_of_a_missing_name_offers_the_stored_one(gemma: Runner) -> None:
    shown = gemma("show", "gemma3", check=False)
    assert shown.stdout == ""
    assert shown.stderr == ("Error: model 'gemma3:latest' not found: did you mean gemma3:270m?\n")
    typo = gemma("rm", "gemma3:207m", check=False)
    assert "did you mean gemma3:270m?" in one_error_line(typo)
    far = gemma("show", "llama3.2", check=False)
    assert one_error_line(far) == "Error: model 'llama3.2:latest' not found"


def test_run_of_a_typo_asks_instead_of_pulling(gemma: Runner, store: Path) -> None:
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    ran = gemma(
        "run",
        "--local",
        "gemma3:207m",
        "hello",
        check=False,
        env={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"},
    )
    assert ran.stdout == ""
    assert ran.stderr == (
        "Error: model 'gemma3:207m' not found, so not pulled: did you mean gemma3:270m?\n"
    )
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


@pytest.mark.parametrize(
    ("typed", "known", "expected"),
    [
        ("gemma3:207m", "gemma3:270m", True),  # two neighbours swapped
        ("gema3:270m", "gemma3:270m", True),  # a letter dropped
        ("gemma3:270n", "gemma3:270m", True),  # a letter changed
        ("gemma3:12b", "gemma3:1b", False),  # another size, not a typo
        ("gemma3:4b", "gemma3:1b", False),
        ("llama3.2:latest", "llama3.1:latest", False),
        ("gemma3:latest", "gemma3:270m", False),  # another tag may be on the registry
    ],
)
def test_what_run_takes_for_a_typo(typed: str, known: str, expected: bool) -> None:
    assert one_keystroke(typed, known) is expected
    assert bool(typos(parse_reference(typed), [parse_reference(known)])) is expected


def test_close_names_for_commands_that_only_read() -> None:
    stored = [parse_reference(n) for n in ("gemma3:270m", "gemma3:1b", "qwen3:0.6b")]
    assert close_names(parse_reference("gemma3"), stored) == ["gemma3:1b", "gemma3:270m"]
    assert close_names(parse_reference("qwen3:06b"), stored) == ["qwen3:0.6b"]
    assert close_names(parse_reference("mistral"), stored) == []


def test_a_misspelled_parameter_names_the_right_one(
    gemma: Runner, tmp_path: Path, tiny_gguf: Path
) -> None:
    made = tmp_path / "typo"
    made.mkdir()
    modelfile(made, f"FROM {tiny_gguf}\nPARAMETER temprature 0\n")
    created = gemma("create", "typo", cwd=made, check=False)
    assert one_error_line(created) == (
        "Error: line 2: unknown parameter 'temprature': did you mean 'temperature'?"
    )
    ran = gemma("run", "--local", "gemma3:270m", "-p", "temprature=0", "hi", check=False)
    assert one_error_line(ran) == (
        "Error: unknown parameter 'temprature': did you mean 'temperature'?"
    )
    far = gemma("run", "--local", "gemma3:270m", "-p", "colour=0", "hi", check=False)
    assert one_error_line(far) == "Error: unknown parameter 'colour'"


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [
        ("pss", "'ps'"),
        ("pus", "'push'"),  # not 'ps', another verb
        ("rn", "'run'"),  # not 'rm', another verb by a letter
        ("rnu", "'run'"),
        ("lst", "'list'"),
        ("lsit", "'list'"),
        ("delete", "'rm'"),  # another tool's word
        ("remove", "'rm'"),
        ("insp", "'inspect'"),
        ("pu", None),  # pull or push: too short to tell
        ("x", None),
        ("hello", None),
    ],
)
def test_an_unknown_command_gets_a_suggestion_only_when_close(
    cairn: Runner, typed: str, suggested: str | None
) -> None:
    result = cairn(typed, check=False)
    last = one_error_line(result, code=2)
    said = f"Error: No such command '{typed}'."
    hint = "Try 'cairn --help' for help."
    assert last == (f"{said} Did you mean {suggested}?" if suggested else f"{said} {hint}")
