"""Output as Ollama's users know it: ages, sizes, ``show`` and its JSON, ``ls``, progress."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from cairn.cli.output import human_age, human_size
from cairn.server.shown import go_float, go_quote, parameters_text, template_names
from tests.conftest import Runner, cairn_env, modelfile, run_in_pty
from tests.ggufmaker import write_gguf

NOW = 1_700_000_000.0
HOUR, DAY = 3600.0, 86400.0


@pytest.mark.parametrize(
    ("ago", "said"),
    [
        (0, "Less than a second ago"),
        (0.999, "Less than a second ago"),
        (1, "1 second ago"),
        (2, "2 seconds ago"),
        (59.9, "59 seconds ago"),
        (60, "About a minute ago"),
        (119.9, "About a minute ago"),
        (120, "2 minutes ago"),
        (HOUR - 1, "59 minutes ago"),
        (HOUR, "About an hour ago"),
        (1.49 * HOUR, "About an hour ago"),  # hours are rounded, not cut
        (1.5 * HOUR, "2 hours ago"),
        (25 * HOUR, "25 hours ago"),
        (47.4 * HOUR, "47 hours ago"),
        (47.5 * HOUR, "2 days ago"),  # 48 hours, rounded: days from here
        (8 * DAY, "8 days ago"),
        (13.9 * DAY, "13 days ago"),
        (14 * DAY, "2 weeks ago"),
        (5 * 7 * DAY, "5 weeks ago"),
        (59.9 * DAY, "8 weeks ago"),
        (60 * DAY, "2 months ago"),
        (13 * 30 * DAY, "13 months ago"),
        (729 * DAY, "24 months ago"),
        (730 * DAY, "2 years ago"),
        (3 * 365 * DAY, "3 years ago"),
        (-0.5, "Less than a second from now"),
        (-1, "1 second from now"),
        (-30, "30 seconds from now"),
        (-90, "About a minute from now"),
        (-2 * HOUR, "2 hours from now"),
        (-3 * DAY, "3 days from now"),
        (-5 * 7 * DAY, "5 weeks from now"),
        (-13 * 30 * DAY, "13 months from now"),
        (-20 * 365 * DAY, "20 years from now"),
        (-21 * 365 * DAY, "Forever"),
    ],
)
def test_ages_take_ollamas_thresholds_and_words(ago: float, said: str) -> None:
    assert human_age(NOW - ago, now=NOW) == said


@pytest.mark.parametrize(
    ("size", "said"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1026, "1.0 KB"),
        (1500, "1.5 KB"),
        (9_999, "10.0 KB"),
        (10_000, "10 KB"),
        (253_113_024, "253 MB"),
        (253_999_999, "253 MB"),  # ten units and more are cut, not rounded
        (999_999_999, "999 MB"),
        (1_000_000_000, "1 GB"),
        (4_700_000_000, "4.7 GB"),
        (1_500_000_000_000, "1.5 TB"),
        (12 * 10**15, "12000 TB"),
    ],
)
def test_sizes_are_ollamas_human_bytes(size: int, said: str) -> None:
    assert human_size(size) == said


def test_values_are_written_as_go_writes_them() -> None:
    cases = {0.7: "0.7", 1.0: "1", 40.0: "40", 123456.0: "123456", 1e6: "1e+06"}
    cases |= {1234567.0: "1.234567e+06", 1e-4: "0.0001", 1e-5: "1e-05", -2.5: "-2.5"}
    for value, said in cases.items():
        assert go_float(value) == said, value
    assert go_quote('a"b\\c\n\x07é\x1b') == '"a\\"b\\\\c\\n\\aé\\x1b"'
    text = parameters_text({"stop": ["<end_of_turn>", "User:"], "temperature": 0.7, "x": True})
    assert text.splitlines() == [
        "stop" + " " * 27 + '"<end_of_turn>"',
        "stop" + " " * 27 + '"User:"',
        "temperature" + " " * 20 + "0.7",
        "x" + " " * 30 + "true",
    ]


def test_template_names_are_what_ollamas_vars_finds() -> None:
    template = (
        "{{- if .Tools }}{{ range $.Tools }}{{ .Function.Name }}{{ end }}{{ end }}"
        "{{ if .Suffix }}<fim>{{ .Suffix }}{{ end }}{{/* .Thinking in a comment */}}"
        '{{ printf "%s" ".Hidden" }} .Text outside'
    )
    names = template_names(template)
    assert {"tools", "$", "function", "name", "suffix"} <= names
    assert not names & {"thinking", "hidden", "text"}


def _create(cairn: Runner, tmp_path: Path, name: str, text: str, **metadata: object) -> None:
    gguf = write_gguf(tmp_path / f"{name}.gguf", metadata=dict(metadata))
    source = modelfile(tmp_path, f"FROM {gguf}\n{text}", f"Modelfile.{name}")
    cairn("create", name, "--quiet", "-f", str(source))


def test_list_says_ages_as_ollama_does(cairn: Runner, store: Path, tmp_path: Path) -> None:
    _create(cairn, tmp_path, "tiny", "")
    now = time.time()
    ages = {
        "day": (now - 25 * HOUR, "25 hours ago"),
        "week": (now - 8 * DAY, "8 days ago"),
        "month": (now - 5 * 7 * DAY, "5 weeks ago"),
        "year": (now - 13 * 30 * DAY - HOUR, "13 months ago"),
        "later": (now + 3 * DAY + HOUR, "3 days from now"),
    }
    for tag, (when, _said) in ages.items():
        cairn("cp", "tiny", f"tiny:{tag}")
        manifest = store / "manifests/registry.ollama.ai/library/tiny" / tag
        os.utime(manifest, (when, when))
    latest = store / "manifests/registry.ollama.ai/library/tiny/latest"
    os.utime(latest, (now - 2 * HOUR, now - 2 * HOUR))  # the same in both listings
    listed = cairn("list")
    assert listed.stderr == ""
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    for tag, (_when, said) in ages.items():
        [row] = [line for line in lines if line.startswith(f"tiny:{tag} ")]
        assert row.endswith(f"    {said}") and "    1.0 KB    " in row, row
    assert cairn("ls").stdout == listed.stdout


def test_ls_is_an_alias_not_a_second_command(cairn: Runner) -> None:
    helped = cairn("--help").stdout
    commands = [line.split()[0] for line in helped.split("Commands:")[1].splitlines() if line]
    assert "list" in commands and "ls" not in commands
    assert cairn("ls", "--json").stdout == cairn("list", "--json").stdout
    completed = cairn(
        env={"_CAIRN_COMPLETE": "bash_complete", "COMP_WORDS": "cairn ls --j", "COMP_CWORD": "2"}
    )
    assert completed.stdout.split() == ["plain,--json"]


def test_show_is_ollamas_show(cairn: Runner, tmp_path: Path) -> None:
    template = 'TEMPLATE """{{ if .Tools }}tools{{ end }}{{ .Prompt }}"""\n'
    parameters = 'PARAMETER stop "<end>"\nPARAMETER temperature 0.7\nPARAMETER num_ctx 1000000\n'
    _create(
        cairn,
        tmp_path,
        "talker",
        template + parameters + 'SYSTEM be brief\nLICENSE """one\ntwo\nthree"""\n',
        **{"tiny.rope.freq_base": 10000.0, "tiny.vision.block_count": 2},
    )
    shown = cairn("show", "talker")
    assert shown.stderr == ""
    text = shown.stdout
    assert text.startswith("  Model\n    architecture        tiny\n")
    assert "\n  Capabilities\n    completion\n    vision\n    tools\n\n" in text
    assert "\n  Parameters\n" in text
    assert '    stop           "<end>"\n' in text
    assert "    temperature    0.7\n" in text and "    num_ctx        1e+06\n" in text
    assert "\n  License\n    one\n    two\n    ...\n" in text  # two lines, as Ollama's
    assert "Metadata" not in text and "Tensors" not in text

    verbose = cairn("show", "talker", "-v").stdout
    assert "\n  Metadata\n" in verbose and re.search(
        r"\n    tiny\.rope\.freq_base +10000\n", verbose
    )
    assert "\n  Tensors\n    token_embd.weight    F32    [8 16]\n" in verbose
    assert cairn("show", "talker", "--verbose").stdout == verbose

    answer = json.loads(cairn("show", "talker", "--json").stdout)
    assert answer["parameters"].splitlines() == [
        f"{'stop':<30} " + '"<end>"',
        f"{'temperature':<30} 0.7",
        f"{'num_ctx':<30} 1e+06",
    ]
    assert answer["capabilities"] == ["completion", "vision", "tools"]
    assert answer["model_info"]["tiny.context_length"] == 256
    assert answer["model_info"]["general.architecture"] == "tiny"
    assert answer["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "tiny",
        "families": ["tiny"],
        "parameter_size": "128",
        "quantization_level": "F32",
    }
    assert answer["license"] == "one\ntwo\nthree" and answer["system"] == "be brief"
    assert answer["template"].startswith("{{ if .Tools }}")
    assert answer["modelfile"].startswith('# Modelfile generated by "cairn show"\n')
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", answer["modified_at"])
    assert "tensors" not in answer
    verbose_answer = json.loads(cairn("show", "talker", "--json", "-v").stdout)
    assert verbose_answer["tensors"] == [
        {"name": "token_embd.weight", "type": "F32", "shape": [8, 16]}
    ]

    parameters_only = cairn("show", "talker", "--parameters").stdout
    assert parameters_only == answer["parameters"] + "\n"


@pytest.mark.parametrize(
    ("metadata", "text", "capabilities"),
    [
        ({}, "", ["completion"]),
        ({"tiny.pooling_type": 1}, "", ["embedding"]),
        ({}, 'TEMPLATE "{{ .Prompt }}<fim>{{ .Suffix }}"\n', ["completion", "insert"]),
        ({}, 'TEMPLATE "{{ range .Messages }}{{ .Thinking }}{{ end }}"\n', None),
        (
            {"tokenizer.chat_template": "{% if tools %}<think></think>{% endif %}"},
            "",
            ["tools", "thinking", "completion"],
        ),
    ],
)
def test_capabilities_are_decided_as_ollama_decides(
    cairn: Runner, tmp_path: Path, metadata: dict[str, object], text: str, capabilities: object
) -> None:
    _create(cairn, tmp_path, "m", text, **metadata)
    answer = json.loads(cairn("show", "m", "--json").stdout)
    assert answer["capabilities"] == (capabilities or ["completion", "thinking"])
    section = cairn("show", "m").stdout.split("  Capabilities\n")[1].split("\n\n")[0]
    assert section.split() == answer["capabilities"]


def test_show_takes_one_part_at_a_time(cairn: Runner, tmp_path: Path) -> None:
    _create(cairn, tmp_path, "tiny", "SYSTEM hi\n")
    for pair in (("--template", "--system"), ("--license", "--modelfile", "--parameters")):
        refused = cairn("show", "tiny", *pair, check=False)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr == (
            "Error: only one of '--license', '--modelfile', '--parameters', '--system',"
            " or '--template' can be specified\n"
        )
    assert cairn("show", "tiny", "--system", "-v").stdout == "hi\n"


def test_prune_says_sizes_as_ollama_does(cairn: Runner, store: Path) -> None:
    data = b"unused" * 250
    blob = store / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    said = cairn("prune", "--dry-run", "--grace", "0").stderr
    assert said == "would remove 1 blobs and 0 partial files (1.5 KB)\n"


def _pushed(cairn: Runner, tmp_path: Path, registry: str) -> str:
    _create(cairn, tmp_path, "tiny", "")
    ref = f"{registry}/lab/tiny:1"
    cairn("push", "tiny", ref, "--insecure", "-q")
    cairn("rm", "tiny")
    return ref


def test_a_pull_into_a_pipe_says_sizes_as_ollama_does(
    cairn: Runner, tmp_path: Path, registry: str
) -> None:
    ref = _pushed(cairn, tmp_path, registry)
    lines = cairn("pull", ref, "--insecure").stderr.splitlines()
    layers = [line for line in lines if re.fullmatch(r"pulling [0-9a-f]{12} \d+(\.\d)? K?B", line)]
    assert len(layers) == 2, lines
    assert all(line.strip() for line in lines) and "bytes" not in " ".join(lines)


def _screen(output: str) -> list[str]:
    """What a terminal shows after ``output``: carriage returns, line feeds, cursor-up."""
    rows: list[list[str]] = [[]]
    row = column = 0
    for token in re.findall(r"\x1b\[\d*[A-Za-z]|.", output, re.DOTALL):
        if token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            continue
        if token == "\r":
            column = 0
        elif token == "\n":
            row, column = row + 1, 0
            rows.extend([] for _ in range(row + 1 - len(rows)))
        else:
            line = rows[row]
            line.extend(" " * (column + 1 - len(line)))
            line[column] = token
            column += 1
    return ["".join(line).rstrip() for line in rows]


def test_a_terminal_without_a_size_still_gets_bars(
    store: Path, tmp_path: Path, cairn: Runner, registry: str
) -> None:
    """A pseudo-terminal of 0 x 0 (a CI runner's) and no COLUMNS: bars, not blank lines."""

    ref = _pushed(cairn, tmp_path, registry)
    env = {k: v for k, v in cairn_env(store).items() if k not in ("COLUMNS", "LINES")}
    # A new terminal, which has no size until someone gives it one.
    code, text = run_in_pty([sys.executable, "-m", "cairn", "pull", ref, "--insecure"], env, None)
    assert code == 0
    assert "Traceback" not in text
    screen = _screen(text)
    assert any(re.match(r"total 100% ▕█+▏ 1\.0 KB$", line) for line in screen), screen
    bars = [line for line in screen if re.match(r"pulling [0-9a-f]{12} 100% ▕█+▏ \d+ B$", line)]
    assert bars, screen
    assert screen[-1] == "" and "" not in screen[screen.index("success") + 1 : -1], screen


def test_show_of_a_model_with_no_gguf_and_an_empty_config(cairn: Runner, store: Path) -> None:
    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (store / "blobs").mkdir(parents=True, exist_ok=True)
        (store / "blobs" / f"sha256-{digest}").write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **blob(b"{}")},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", **blob(b"not gguf")}],
    }
    path = store / "manifests/registry.ollama.ai/library/bare/latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    for args in ([], ["-v"]):
        shown = cairn("show", "bare", *args)
        assert shown.stdout.startswith("  Model\n") and "Capabilities" not in shown.stdout
    answer = json.loads(cairn("show", "bare", "--json").stdout)
    assert answer["model_info"] == {} and "capabilities" not in answer
