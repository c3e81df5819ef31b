"""Ctrl-C on a busy machine: ``cairn run``, ``pull``, ``push`` and a chat, 20 times each.

Both cores are kept busy by a CPU and disk load the test starts and stops
itself. Each command gets SIGINT at a random point of its life (starting,
loading, generating, transferring) and must end with exit code 130 (or 0,
when it finished first), no traceback, no runner process left, and nothing
in the store whose bytes do not match its name. How long each took to end
is printed; the bound asserted catches a hang, it does not measure speed
(docs/performance.md has the figures).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GEMMA_TEMPLATE, Terminal, cairn_env, foreground, modelfile
from tests.conftest import Runner as Cli
from tests.runtime_plugins.test_run import require_llama, workers

TIMES = 20
HANG = 30.0
"""Seconds after which an interrupted command is taken to hang."""
BURN = "import time\nwhile True: sum(range(10000))"
WRITE = (
    "import os, sys\n"
    "path = sys.argv[1]\n"
    "block = os.urandom(1 << 20)\n"
    "while True:\n"
    "    with open(path, 'wb') as f:\n"
    "        for _ in range(32):\n"
    "            f.write(block)\n"
    "        f.flush(); os.fsync(f.fileno())\n"
    "    os.unlink(path)\n"
)


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[None]:
    """Both cores busy computing, and a disk writing and syncing 32 MiB at a time."""
    loads = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(2)]
    loads.append(subprocess.Popen([sys.executable, "-c", WRITE, str(tmp_path / "disk-load")]))
    try:
        yield
    finally:
        for load in loads:
            load.kill()
            load.wait()


def no_runner_left(store: Path) -> None:
    """The command's runner goes with it (a runner still starting may take a moment to
    read the end of its input; one that lives on is a leak)."""
    deadline = time.monotonic() + HANG
    while workers(store) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers(store), "a runner process outlived cairn"


def interrupt(argv: list[str], env: dict[str, str], latest: float) -> tuple[int, str, float]:
    """Start ``argv``, SIGINT it at a random moment before ``latest`` seconds; its exit
    code, its stderr and the seconds it took to end after the signal."""
    proc = subprocess.Popen(
        argv,
        env={**env, "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints where every thread is
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=foreground,  # as a user's shell starts it
    )
    time.sleep(random.uniform(0.0, latest))
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        tree = subprocess.run(
            ["ps", "-o", "pid,ppid,pgid,stat,wchan:24,etime,args", "--forest", "-e"],
            capture_output=True,
            text=True,
        ).stdout
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=HANG)
        raise AssertionError(f"{argv[1]} hung after Ctrl-C; its threads:\n{err}\n{tree}") from None
    return proc.returncode, err, time.monotonic() - sent


CAIRN_FRAME = re.compile(r'File "[^"]*/cairn/[^"]*\.py"')


def ended_by_ctrl_c(code: int, err: str, finished: tuple[int, ...] = ()) -> bool:
    """Whether the command ended as Ctrl-C should end it: exit status 130 (or killed by
    SIGINT while still starting, which a shell shows as 130 too), no traceback from
    cairn's code. Before cairn's first line runs, the interpreter itself answers Ctrl-C
    with a traceback of its own start-up (``<frozen runpy>``): counted in ``STARTUP``,
    not cairn's to change."""
    if CAIRN_FRAME.search(err):
        return False
    if "Traceback" in err:
        STARTUP.append(err.splitlines()[-1])
        return True
    return code in (130, -signal.SIGINT, *finished)


STARTUP: list[str] = []


def waiting_for_a_key(pid: int) -> None:
    """Until the process waits in select/poll (readline waiting for a key)."""
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            call = Path(f"/proc/{pid}/syscall").read_text().split()[0]
            if call in ("7", "23", "270", "271"):  # poll, select, pselect6, ppoll (x86-64)
                return
        time.sleep(0.01)


def every_blob_is_whole(store: Path) -> None:
    """Nothing under ``blobs/`` has bytes that do not hash to its name."""
    import hashlib

    for path in (store / "blobs").iterdir() if (store / "blobs").exists() else ():
        algorithm, _, hexdigest = path.name.partition("-")
        hasher = hashlib.new(algorithm)
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                hasher.update(block)
        assert hasher.hexdigest() == hexdigest, f"{path.name} does not hold its bytes"


@pytest.fixture
def model(cairn: Cli, tmp_path: Path, gemma_gguf: Path) -> str:
    require_llama()
    text = f'FROM {gemma_gguf}\nTEMPLATE """{GEMMA_TEMPLATE}"""\nPARAMETER temperature 0\n'
    modelfile(tmp_path, text, "MF")
    cairn("create", "gemma3:270m", "-f", str(tmp_path / "MF"))
    return "gemma3:270m"


def test_ctrl_c_ends_run_pull_and_push_under_load(
    model: str, store: Path, registry: str, cairn: Cli, tmp_path: Path, busy: None
) -> None:
    cli = [str(Path(sys.executable).parent / "cairn")]  # the command, as users start it
    ended: dict[str, list[float]] = {}
    story = [*cli, "run", model, "Tell me a long story.", "-p", "num_predict=2000"]
    for _ in range(TIMES):
        code, err, seconds = interrupt(story, cairn_env(store), latest=4.0)
        assert ended_by_ctrl_c(code, err), (code, err)
        ended.setdefault("run", []).append(seconds)
        no_runner_left(store)

    cairn("push", model, f"{registry}/library/gemma3:270m", "--insecure", "-q")
    for n in range(TIMES):
        other = tmp_path / f"pulled-{n % 2}"
        pull = [*cli, "pull", f"{registry}/library/gemma3:270m", "--insecure", "-q"]
        code, err, seconds = interrupt(pull, cairn_env(other), latest=1.5)
        assert ended_by_ctrl_c(code, err, finished=(0,)), (code, err)
        ended.setdefault("pull", []).append(seconds)
        every_blob_is_whole(other)
        push = [*cli, "push", model, f"{registry}/lab/copy{n}:1", "--insecure", "-q"]
        code, err, seconds = interrupt(push, cairn_env(store), latest=1.5)
        assert ended_by_ctrl_c(code, err, finished=(0,)), (code, err)
        ended.setdefault("push", []).append(seconds)
    every_blob_is_whole(store)
    for name, times in ended.items():
        print(f"{name}: ended {max(times):.2f} s after Ctrl-C at most, {sorted(times)}")
    print(f"interpreter start-up tracebacks: {len(STARTUP)} {STARTUP}")


def test_ctrl_c_in_a_chat_under_load(model: str, store: Path, busy: None) -> None:
    """Ctrl-C stops the answer being written (the chat goes on); while the prompt waits it
    says how to leave; /bye ends the chat, with its runner."""
    argv = [sys.executable, "-m", "cairn", "run", model, "-p", "num_predict=2000"]
    chat = Terminal(argv, cairn_env(store))
    assert chat.until(">>> ", HANG).endswith(">>> ")
    ended = []
    for _ in range(TIMES):
        chat.type("Tell me a long story.\n")
        time.sleep(random.uniform(0.0, 2.0))
        sent = time.monotonic()
        chat.type("\x03")  # Ctrl-C on the terminal
        assert chat.until(">>> ", HANG).endswith(">>> "), "the chat did not come back"
        ended.append(time.monotonic() - sent)
    # CPython's readline loses a SIGINT that lands between printing the prompt and
    # waiting for a key (until the next key): a user's Ctrl-C comes while it waits.
    waiting_for_a_key(chat.pid)
    chat.type("\x03")
    said = chat.until(">>> ", HANG)
    assert "Use Ctrl + d or /bye to exit." in said, (said, chat.poll())
    chat.type("/bye\n")
    assert chat.wait() == 0
    no_runner_left(store)
    print(f"chat: back at the prompt {max(ended):.2f} s after Ctrl-C at most, {sorted(ended)}")
    assert os.path.isdir(store)
