"""The real Gemma 3 270M through the llama.cpp runtime, in its runner process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cairn.errors import RunnerError
from cairn.gguf import read_gguf
from cairn.runtime_plugins.runner import Runner
from cairn.runtime_plugins.runtime import ModelSpec
from tests.conftest import GEMMA_TEMPLATE, Terminal, cairn_env, foreground, modelfile, run_in_pty
from tests.conftest import Runner as Cli

OPTIONS = {"temperature": 0.0, "seed": 42, "num_ctx": 512}


def require_llama() -> None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:  # no skip: `make test` installs it
        pytest.fail("llama-cpp-python is not installed (make test builds it; see docs/runtimes.md)")


@pytest.fixture
def gemma(cairn: Cli, tmp_path: Path, gemma_gguf: Path) -> str:
    require_llama()
    modelfile(
        tmp_path,
        f'FROM {gemma_gguf}\nTEMPLATE """{GEMMA_TEMPLATE}"""\nPARAMETER temperature 0\n'
        "PARAMETER seed 42\nPARAMETER stop <end_of_turn>\n",
        "MF",
    )
    cairn("create", "gemma3:270m", "-f", str(tmp_path / "MF"))
    return "gemma3:270m"


def test_deterministic_answer_and_verbose_stats(cairn: Cli, gemma: str) -> None:
    first = cairn("run", gemma, "Name a colour.", "-p", "num_predict=16", "--verbose")
    second = cairn("run", gemma, "Name a colour.", "-p", "num_predict=16")
    assert first.stdout == second.stdout
    assert first.stdout.strip()  # it said something
    assert "load duration:" in first.stderr
    rate = next(line for line in first.stderr.splitlines() if line.startswith("eval rate:"))
    assert float(rate.split()[2]) > 0 and rate.endswith("tokens/s")
    count = next(line for line in first.stderr.splitlines() if line.startswith("eval count:"))
    assert 1 <= int(count.split()[2]) <= 16
    # Gemma 3 270M has 18 blocks and an output layer; this build runs them all on the CPU.
    assert "offload:              0/19 layers on GPU" in first.stderr.splitlines()


def test_gpu_layers_asked_for_without_a_gpu_warn_and_run_on_the_cpu(cairn: Cli, gemma: str) -> None:
    asked = cairn(
        "run", gemma, "Name a colour.", "-p", "num_predict=8", "-p", "num_gpu=99", "--verbose"
    )
    plain = cairn("run", gemma, "Name a colour.", "-p", "num_predict=8")
    assert asked.stdout == plain.stdout  # the same answer, from the CPU
    assert asked.stderr.splitlines()[0] == (
        "warning: num_gpu=99 asks for GPU offload, but llama-cpp cannot: this llama-cpp-python"
        " was built for the CPU only ('make install-cuda' builds it for CUDA; see"
        " docs/runtimes.md); running on the CPU"
    )
    assert "offload:              0/19 layers on GPU" in asked.stderr.splitlines()
    assert "warning" not in plain.stderr


def test_prompt_from_stdin(cairn: Cli, gemma: str) -> None:
    piped = cairn("run", gemma, "-p", "num_predict=8", input="Name a colour.")
    given = cairn("run", gemma, "Name a colour.", "-p", "num_predict=8")
    assert piped.stdout == given.stdout


def test_num_predict_and_stop(gemma_gguf: Path) -> None:
    require_llama()
    spec = ModelSpec(gemma_gguf)
    with Runner("llama-cpp") as runner:
        runner.load(spec, OPTIONS)
        chunks = list(runner.generate("The capital of France is", {**OPTIONS, "num_predict": 24}))
        text = "".join(c.text for c in chunks)
        assert chunks[-1].done and chunks[-1].stats["eval_count"] <= 24
        words = text.split()
        assert len(words) >= 3
        stop = words[2]
        stopped = "".join(
            c.text
            for c in runner.generate(
                "The capital of France is", {**OPTIONS, "num_predict": 24, "stop": [stop]}
            )
        )
        assert stop not in stopped
        assert text.startswith(stopped)


def test_runner_killed_mid_generation_is_an_error_and_we_live_on(gemma_gguf: Path) -> None:
    require_llama()
    runner = Runner("llama-cpp")
    runner.load(ModelSpec(gemma_gguf), OPTIONS)
    stream = runner.generate("Once upon a time", {**OPTIONS, "num_predict": 400})
    next(stream)
    os.kill(runner.proc.pid, signal.SIGKILL)
    with pytest.raises(RunnerError, match="killed by SIGKILL"):
        for _ in stream:
            pass
    # the parent is fine, and a new runner works
    with Runner("llama-cpp") as fresh:
        fresh.load(ModelSpec(gemma_gguf), OPTIONS)
        assert any(c.text for c in fresh.generate("Hello", {**OPTIONS, "num_predict": 4}))


def test_segfault_in_the_runner_is_an_error(gemma_gguf: Path) -> None:
    """A crash in native code (SIGSEGV) ends the runner, not us."""
    require_llama()
    runner = Runner("llama-cpp")
    runner.load(ModelSpec(gemma_gguf), OPTIONS)
    os.kill(runner.proc.pid, signal.SIGSEGV)
    with pytest.raises(RunnerError, match="SIGSEGV"):
        list(runner.generate("Hello", OPTIONS))


def test_corrupt_gguf_is_a_clear_error(cairn: Cli, tmp_path: Path, gemma_gguf: Path) -> None:
    require_llama()
    info = read_gguf(gemma_gguf)
    corrupt = tmp_path / "corrupt.gguf"
    with open(gemma_gguf, "rb") as src, open(corrupt, "wb") as out:
        out.write(src.read(info.data_offset))
        left = info.file_size - info.data_offset
        while left:
            out.write(os.urandom(min(left, 1 << 20)))
            left -= min(left, 1 << 20)
    modelfile(tmp_path, f"FROM {corrupt}\n", "MF")
    cairn("create", "broken", "-f", str(tmp_path / "MF"))
    result = cairn("run", "broken", "hello", "-p", "num_predict=4", check=False)
    assert result.returncode == 1
    assert "weights are corrupt" in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback
    # raised in the runner process, said in the user's language in the parent
    korean = cairn(
        "run", "broken", "hi", "-p", "num_predict=4", env={"LANG": "ko_KR.UTF-8"}, check=False
    )
    assert korean.stderr.startswith("오류: llama-cpp: 모델이 모든 토큰에 대해 NaN을 계산합니다")


def workers(store: Path) -> set[str]:
    """The runner processes of cairn commands run on ``store`` (their environment names
    it): another test, or another suite on the machine, runs runners of its own."""
    found = subprocess.run(
        ["pgrep", "-f", "cairn.runtime_plugins.worker"], capture_output=True, text=True
    )
    mark = f"CAIRN_MODELS={store}".encode()
    ours = set()
    for pid in found.stdout.split():
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        if mark in environment:
            ours.add(pid)
    return ours


def test_sigint_stops_cleanly(store: Path, gemma: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cairn",
            "run",
            gemma,
            "Tell me a long story.",
            "-p",
            "num_predict=2000",
        ],
        env=cairn_env(store),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=foreground,
    )
    assert proc.stdout is not None
    proc.stdout.read(20)  # it is generating
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + 30
    while workers(store) and time.monotonic() < deadline:  # a poll, not a fixed sleep
        time.sleep(0.05)
    assert not workers(store)  # the runner went with it


def test_runtimes_lists_llama_cpp(cairn: Cli) -> None:
    require_llama()
    listed = json.loads(cairn("runtimes", "--json").stdout)
    [llama] = [r for r in listed["runtimes"] if r["name"] == "llama-cpp"]
    assert llama["available"] is True and "cpu" in llama["devices"]
    assert "llama-cpp" in cairn("runtimes").stdout


def test_interactive_chat_on_a_terminal(store: Path, gemma: str) -> None:
    chat = Terminal(
        [sys.executable, "-m", "cairn", "run", gemma, "-p", "num_predict=8"], cairn_env(store)
    )
    assert chat.until(">>> ").endswith(">>> ")
    chat.type("/?\n")
    assert "/bye" in chat.until(">>> ")
    chat.type("/set parameter temperature 0\n")
    assert "Set parameter 'temperature' to '0'" in chat.until(">>> ")
    chat.type("/show\n")
    shown = chat.until(">>> ").replace("\r", "")
    assert "Parameters:\n" in shown and "  temperature: 0.0\nTemplate:\n" in shown
    chat.type("/set parameter bogus 1\n")
    assert "unknown parameter 'bogus'" in chat.until(">>> ")
    chat.type("Name a colour.\n")
    answer = chat.until(">>> ")
    assert len(answer.replace("Name a colour.", "").replace(">>> ", "").strip()) > 0
    chat.type('"""first line\nsecond line"""\n')
    assert "... " in chat.until(">>> ")
    chat.type("/bye\n")
    assert chat.wait() == 0


def test_chat_edits_hangul_lines_in_korean(store: Path, gemma: str) -> None:
    """Backspace and the arrow keys move over whole Hangul syllables (two columns each)."""
    chat = Terminal(
        [sys.executable, "-m", "cairn", "run", gemma, "-p", "num_predict=4"],
        {**cairn_env(store), "LANG": "ko_KR.UTF-8", "TERM": "xterm"},
    )
    assert chat.until(">>> ").endswith(">>> ")
    # "하늘색", two backspaces, "늘", two steps left, "파란 ": the line is "파란 하늘"
    chat.type("/set parameter stop 하늘색\x7f\x7f늘\x1b[D\x1b[D파란 \r")
    shown = chat.until(">>> ")
    assert "\ufffd" not in shown
    assert "파라미터 'stop'을(를) '파란 하늘'(으)로 설정했습니다" in shown
    chat.type("/bye\r")
    assert chat.wait() == 0


def test_format_json(cairn: Cli, gemma: str) -> None:
    # Grammar-constrained sampling over a 262,144-token vocabulary is slow: a few tokens do.
    answer = cairn(
        "run", gemma, "A JSON object describing a cat:", "--format", "json", "-p", "num_predict=4"
    ).stdout.strip()
    assert answer[:1] in ("{", "[")


def test_korean_prompt_gives_well_formed_text(cairn: Cli, gemma: str) -> None:
    answer = cairn(
        "run", gemma, "한국어로 대답하세요: 하늘은 왜 파란가요? 🦙", "-p", "num_predict=40"
    ).stdout
    assert answer.strip()
    assert "\ufffd" not in answer


def test_chat_outside_a_utf8_locale_says_what_is_wrong(store: Path, gemma: str) -> None:
    code, output = run_in_pty(
        [sys.executable, "-m", "cairn", "run", gemma],
        {**cairn_env(store), "PYTHONIOENCODING": "latin-1"},
    )
    assert code == 1
    assert "not UTF-8" in output
