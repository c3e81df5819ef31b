"""The README's tour and the samples in docs/cli.md are what the commands really print.

Every ``$ cairn ...`` line of the tour parses as a command with those options, and
every sample whose output does not depend on the clock or the machine is compared
with a real run over the real Gemma 3 270M model: ``cairn list``, ``cairn show``, the
"did you mean" errors and ``cairn tags``. A list's MODIFIED column is the one part
that is left out (it says how long ago the test created the model).

``CAIRN_REGENERATE_SAMPLES=1`` rewrites the samples from the run instead of failing:
the way the docs are regenerated after the output changed on purpose.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from cairn.cli import cli
from tests.conftest import cairn_env
from tests.ggufmaker import write_gguf

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CLI_DOC = REPO / "docs" / "cli.md"
REGENERATE = os.environ.get("CAIRN_REGENERATE_SAMPLES") == "1"


@dataclass
class Block:
    """One fenced code block: where it is and its lines."""

    path: Path
    lines: list[str]


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                found.append(Block(path, current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def tour() -> Block:
    (block,) = [b for b in blocks(README) if b.lines and b.lines[0] == "$ cat Modelfile"]
    return block


def sessions(block: Block) -> Iterator[tuple[str, list[str]]]:
    """Each ``$ command`` of a block with the lines it printed (trailing blanks dropped)."""
    command: str | None = None
    output: list[str] = []
    for line in [*block.lines, "$ end"]:
        if line.startswith("$ "):
            if command is not None:
                while output and not output[-1].strip():
                    output.pop()
                yield command, output
            command, output = line[2:], []
        else:
            output.append(line)


def words(command: str) -> list[str]:
    """A tour line as argv: the comment, a pipe's far side, ``&`` and ``VAR=`` dropped."""
    argv = shlex.split(command.partition("|")[0], comments=True)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        argv.pop(0)
    if argv and argv[-1] == "&":
        argv.pop()
    return argv


def test_every_tour_command_parses() -> None:
    """Each ``cairn`` line names a real command with options it has, in a valid order."""
    checked = 0
    for command, _ in sessions(tour()):
        argv = words(command)
        if not argv or argv[0] != "cairn":
            continue
        command_path: list[str] = []
        found: click.Command = cli
        rest = argv[1:]
        while isinstance(found, click.Group):
            name, rest = rest[0], rest[1:]
            sub = found.get_command(click.Context(found), name)
            assert sub is not None, f"README tour: {command!r}: no command {name!r}"
            found, command_path = sub, [*command_path, name]
        try:
            found.make_context(" ".join(command_path), rest, resilient_parsing=True)
        except click.UsageError as exc:
            pytest.fail(f"README tour: {command!r}: {exc.format_message()}")
        checked += 1
    assert checked >= 20


@pytest.fixture(scope="module")
def toured(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding gemma3:270m, made as the tour makes it: from the tour's Modelfile."""
    work = tmp_path_factory.mktemp("tour")
    store = work / "models"
    store.mkdir()
    lines = dict(sessions(tour()))["cat Modelfile"]
    from_line = lines[0].split()
    (work / from_line[1]).symlink_to(gemma_gguf)
    (work / "Modelfile").write_text("\n".join(lines) + "\n")
    run(store, work, "create", "gemma3:270m")
    return store


def run(store: Path, cwd: Path, *args: str, check: bool = True) -> str:
    """What a command printed, stdout then stderr, as a user's terminal shows it."""
    done = subprocess.run(
        [sys.executable, "-m", "cairn", *args],
        env=cairn_env(store, COLUMNS="100"),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check:
        assert done.returncode == 0, f"cairn {args}: {done.stderr}"
    return done.stdout + done.stderr


def undated(lines: list[str]) -> list[str]:
    """A list table without its MODIFIED column, which says how long ago."""
    at = lines[0].find("MODIFIED")
    assert at > 0, lines
    for line in lines[1:]:
        assert re.search(r"(ago|now)$", line), line
    return [line[:at] for line in lines]


class Samples:
    """Compares samples with real output; under CAIRN_REGENERATE_SAMPLES rewrites them."""

    def __init__(self) -> None:
        self.wrong: list[str] = []

    def check(self, path: Path, shown: list[str], real: list[str], same: bool) -> None:
        if same:
            return
        if REGENERATE:
            text = path.read_text(encoding="utf-8")
            old, new = "\n".join(shown) + "\n", "\n".join(real) + "\n"
            assert text.count(old) >= 1, f"{path.name}: sample not found once"
            path.write_text(text.replace(old, new), encoding="utf-8")
            return
        said = "\n".join(shown)
        printed = "\n".join(real)
        self.wrong.append(
            f"{path.relative_to(REPO)} shows:\n{said}\nbut the command prints:\n{printed}\n"
            "(CAIRN_REGENERATE_SAMPLES=1 rewrites it)"
        )

    def list_table(self, path: Path, shown: list[str], store: Path, cwd: Path) -> None:
        real = run(store, cwd, "list").rstrip("\n").splitlines()
        # The sample's age stays as written: only the rest is compared or rewritten.
        at = shown[0].find("MODIFIED")
        rewritten = [r[:at] + s[at:] for r, s in zip(real, shown, strict=False)]
        self.check(path, shown, rewritten, undated(shown) == undated(real))

    def output(self, path: Path, shown: list[str], real_text: str) -> None:
        real = real_text.rstrip("\n").splitlines()
        self.check(path, shown, real, shown == real)


def test_readme_tour_prints_what_it_shows(toured: Path, tmp_path: Path) -> None:
    samples = Samples()
    for command, shown in sessions(tour()):
        argv = words(command)
        if argv[:2] == ["cairn", "list"]:
            samples.list_table(README, shown, toured, tmp_path)
        elif argv[:2] == ["cairn", "show"]:
            samples.output(README, shown, run(toured, tmp_path, *argv[1:]))
        elif argv[:1] == ["cairn"]:
            assert not shown, f"README tour: {command!r} shows output the test does not check"
    assert not samples.wrong, "\n\n".join(samples.wrong)


def test_cli_doc_samples_are_real(toured: Path, tmp_path: Path) -> None:
    """docs/cli.md's tables, show output and error samples, over the same model."""
    samples = Samples()
    checked = 0
    for block in blocks(CLI_DOC):
        first = block.lines[0] if block.lines else ""
        if first.startswith("NAME") and first.rstrip().endswith("MODIFIED"):
            samples.list_table(CLI_DOC, block.lines, toured, tmp_path)
            checked += 1
        elif first.startswith("NAME") and "PROCESSOR" in first:  # cairn ps: same model, same ID
            real_id = run(toured, tmp_path, "list").splitlines()[1].split()[1]
            shown_id = block.lines[1].split()[1]
            fixed = block.lines[1].replace(shown_id, real_id)
            samples.check(CLI_DOC, block.lines, [first, fixed], shown_id == real_id)
            checked += 1
        elif first == "  Model":
            samples.output(CLI_DOC, block.lines, run(toured, tmp_path, "show", "gemma3:270m"))
            checked += 1
        elif first.startswith("$ cairn") and any("did you mean" in x.lower() for x in block.lines):
            for command, shown in sessions(block):
                argv, _, note = command.partition("(")
                if "temprature" in note:
                    gguf = next(toured.parent.glob("*.gguf"))
                    (tmp_path / "Modelfile").write_text(f"FROM {gguf}\nPARAMETER temprature 0\n")
                real = run(toured, tmp_path, *shlex.split(argv)[1:], check=False)
                samples.output(CLI_DOC, [f"$ {command}", *shown], f"$ {command}\n{real}")
                checked += 1
    assert checked >= 6
    assert not samples.wrong, "\n\n".join(samples.wrong)


def in_order(tags: str) -> str:
    """``cairn tags`` output with its tags sorted, as text or as --json's list."""
    if tags.startswith("{"):
        listed = json.loads(tags)
        listed["Tags"].sort()
        return json.dumps(listed, indent=4) + "\n"
    return "".join(sorted(tags.splitlines(keepends=True)))


def test_cli_doc_tags_sample_is_real(registry: str, tmp_path: Path) -> None:
    """``cairn tags`` against a real registry holding the sample's two tags."""
    (block,) = [b for b in blocks(CLI_DOC) if b.lines and b.lines[0].startswith("$ cairn tags")]
    store = tmp_path / "models"
    store.mkdir()
    gguf = write_gguf(tmp_path / "tiny.gguf", fill=b"tiny")
    (tmp_path / "Modelfile").write_text(f"FROM {gguf}\n")
    run(store, tmp_path, "create", "tiny")
    for tag in ("1", "2"):
        run(store, tmp_path, "push", "--insecure", "tiny", f"{registry}/lab/tiny:{tag}")
    samples = Samples()
    for command, shown in sessions(block):
        real = run(store, tmp_path, *words(command.replace("127.0.0.1:5000", registry))[1:])
        # The registry lists tags in its own order (as skopeo prints them): sorted here.
        samples.output(CLI_DOC, shown, in_order(real.replace(registry, "127.0.0.1:5000")))
    assert not samples.wrong, "\n\n".join(samples.wrong)
