"""``cairn run`` as Ollama's users type it (issue 15, item 2), with the real Gemma 3 270M."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.conftest import Runner, Terminal, cairn_env

SHORT = ("-p", "num_predict=6")
DURATION = r"[0-9.]+(ns|µs|ms|s)|[0-9]+m[0-9.]+s"


def test_words_are_one_prompt_and_piped_input_goes_first(cairn: Runner, gemma: str) -> None:
    words = cairn("run", gemma, "why", "is", "the", "sky", "blue", *SHORT)
    quoted = cairn("run", gemma, "why is the sky blue", *SHORT)
    assert words.stdout == quoted.stdout and words.stdout.strip()
    piped = cairn("run", gemma, "summarize:", *SHORT, input="The sky is blue.")
    joined = cairn("run", gemma, "The sky is blue. summarize:", *SHORT)
    assert piped.stdout == joined.stdout and piped.stdout.strip()
    assert "Traceback" not in words.stderr + piped.stderr


def test_an_empty_prompt_is_refused(cairn: Runner, gemma: str) -> None:
    empty = cairn("run", gemma, check=False, input="")
    assert empty.returncode == 1
    assert empty.stderr.splitlines() == [
        "Error: the prompt is empty: give it after the model's name, or pipe it in"
    ]


def test_runtime_is_checked_before_any_pull(cairn: Runner) -> None:
    # The registry named does not exist: reaching for it would be a different error.
    model = "registry.invalid:5/lab/nothing:1"
    flag = cairn("run", "--runtime", "nonexist", model, "hi", check=False)
    assert flag.returncode == 1
    assert flag.stderr.splitlines() == ["Error: no runtime named 'nonexist' (installed: llama-cpp)"]
    env = cairn("run", model, "hi", check=False, env={"CAIRN_RUNTIME": "nonexist"})
    assert env.returncode == 1
    assert env.stderr.splitlines() == [
        "Error: CAIRN_RUNTIME: no runtime named 'nonexist' (installed: llama-cpp)"
    ]
    assert "pulling" not in flag.stdout + env.stdout


def test_ollama_flags_are_accepted(cairn: Runner, gemma: str, tmp_path: Path) -> None:
    plain = cairn("run", gemma, "Name a colour.", *SHORT)
    flagged = cairn(
        "run", gemma, "Name a colour.", *SHORT, "--keepalive", "5m", "--nowordwrap", "--think"
    )
    assert flagged.stdout == plain.stdout
    assert flagged.stderr.splitlines() == ["warning: gemma3:270m cannot think; --think is ignored"]
    hidden = cairn("run", gemma, "Name a colour.", *SHORT, "--think=high", "--hidethinking")
    assert hidden.stdout == plain.stdout
    assert hidden.stderr.count("warning:") == 1
    bad = cairn("run", gemma, "hi", "--think=loud", check=False)
    assert bad.returncode == 2 and "'loud' is not one of true, false" in bad.stderr
    late = cairn("run", gemma, "hi", "--keepalive", "5 minutes", check=False)
    assert late.returncode == 1
    assert late.stderr.splitlines() == [
        "Error: --keepalive '5 minutes' is not a duration (5m, 1h30m, 0, -1s)"
    ]


def test_format_takes_json_or_a_schema(cairn: Runner, gemma: str, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    by_file = cairn("run", gemma, "A number:", "--format", str(tmp_path / "schema.json"), *SHORT)
    inline = cairn("run", gemma, "A number:", "--format", json.dumps(schema), *SHORT)
    assert by_file.stdout == inline.stdout
    assert by_file.stdout.lstrip().startswith("{")
    wrong = cairn("run", gemma, "hi", "--format", "xml", check=False)
    assert wrong.returncode == 1
    assert wrong.stderr.splitlines() == [
        "Error: --format 'xml' is not json, a JSON schema, or a file holding one"
    ]


def test_verbose_prints_ollamas_timing_lines(cairn: Runner, gemma: str) -> None:
    done = cairn("run", gemma, "Name a colour.", *SHORT, "--verbose")
    lines = done.stderr.splitlines()
    for name in ("total duration", "load duration", "prompt eval duration", "eval duration"):
        [line] = [x for x in lines if x.startswith(name + ":")]
        assert re.fullmatch(rf"{name}: +({DURATION})", line), line
        assert line.index(line.split()[-1]) == 22  # the values line up, as Ollama's do
    for name in ("prompt eval count", "eval count"):
        [line] = [x for x in lines if x.startswith(name + ":")]
        assert re.fullmatch(rf"{name}: +[0-9]+ token\(s\)", line), line
    for name in ("prompt eval rate", "eval rate"):
        [line] = [x for x in lines if x.startswith(name + ":")]
        assert re.fullmatch(rf"{name}: +[0-9]+\.[0-9]{{2}} tokens/s", line), line


def test_chat_commands(store: Path, gemma: str, cairn: Runner) -> None:
    chat = Terminal(
        [sys.executable, "-m", "cairn", "run", gemma, "-p", "num_predict=4"], cairn_env(store)
    )
    assert chat.until(">>> ").endswith(">>> ")
    chat.type("/set foo\n")
    shown = chat.until(">>> ")
    assert "Unknown command '/set foo'." in shown and "/set system TEXT" in shown
    chat.type("/show foo\n")
    shown = chat.until(">>> ")
    assert "Unknown command '/show foo'." in shown and "/show modelfile" in shown
    chat.type("/set system You answer briefly.\n")
    assert "Set system message." in chat.until(">>> ")
    chat.type("/set verbose\n")
    assert "Set 'verbose' mode." in chat.until(">>> ")
    chat.type("Name a colour.\n")
    answer = chat.until(">>> ")
    assert "eval count:" in answer and "Traceback" not in answer
    chat.type("/set format json\n")
    assert "Set format to 'json' mode." in chat.until(">>> ")
    chat.type("/set quiet\n")
    assert "Set 'quiet' mode." in chat.until(">>> ")
    chat.type("/set parameter temperature 0\n")
    chat.until(">>> ")
    chat.type("/show info\n")
    info = chat.until(">>> ")
    assert "architecture" in info and "gemma3" in info
    chat.type("/show modelfile\n")
    shown = chat.until(">>> ").replace("\r", "")
    assert "FROM gemma3:270m" in shown and "You answer briefly." in shown
    assert "MESSAGE user Name a colour." in shown
    chat.type("/save mine:1\n")
    assert "Created new model 'mine:1'" in chat.until(">>> ")
    chat.type("/load mine:1\n")
    assert "Loading model 'mine:1'" in chat.until(">>> ")
    chat.type("/show system\n")
    assert "You answer briefly." in chat.until(">>> ")
    chat.type("/load nosuch:1\n")
    assert "Error:" in chat.until(">>> ")
    chat.type("/bye\n")
    assert chat.wait() == 0
    saved = cairn("show", "mine:1", "--modelfile").stdout
    assert "You answer briefly." in saved and "MESSAGE user Name a colour." in saved
