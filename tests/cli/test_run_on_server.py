"""``cairn run`` through a running ``cairn serve`` honours what a run here honours (issue 15,
item 2): ``--keepalive`` as the requests' ``keep_alive``, ``--nowordwrap``, ``--verbose``, and
the chat's ``/set verbose``, ``/show info``, ``/show modelfile``, ``/save`` and ``/load``
through the server's API. The real Gemma 3 270M, answers kept short."""

from __future__ import annotations

import fcntl
import re
import struct
import sys
import termios
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.conftest import Runner, Terminal, cairn_env
from tests.server.conftest import serve, served  # noqa: F401 - the fixtures, shared

ASK = ("-p", "temperature=0", "-p", "seed=42")
SHORT = (*ASK, "-p", "num_predict=4")


def loaded(url: str) -> dict[str, float]:
    """The models the server holds, each with the seconds until it unloads if idle."""
    now = datetime.now(UTC)
    found = {}
    for model in httpx.get(f"{url}/api/ps", timeout=30).json()["models"]:
        until = datetime.fromisoformat(model["expires_at"].replace("Z", "+00:00")[:26] + "+00:00")
        found[model["name"]] = (until - now).total_seconds()
    return found


def chat_on(url: str, store: Path, *args: str, columns: int = 100) -> Terminal:
    """``cairn run gemma3:270m ARGS`` on a terminal of ``columns`` columns, through ``url``."""
    chat = Terminal(
        [sys.executable, "-m", "cairn", "run", "gemma3:270m", *args],
        {**cairn_env(store), "CAIRN_HOST": url},
    )
    fcntl.ioctl(chat.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    assert chat.until(">>> ", 120).endswith(">>> ")
    return chat


def said(chat: Terminal, text: str) -> str:
    """What the chat prints for the message ``text``, up to the next prompt."""
    chat.type(f"{text}\n")
    shown = chat.until(">>> ", 120).replace("\r", "")
    assert shown.endswith(">>> "), shown  # the answer ended
    return shown.split(text, 1)[1].rsplit(">>> ", 1)[0]


def test_keepalive_goes_with_every_request(
    served: str,  # noqa: F811
    cairn: Runner,
) -> None:
    server = {"CAIRN_HOST": served}
    cairn("run", "gemma3:270m", "Hi.", *SHORT, "--keepalive", "0", env=server)
    assert loaded(served) == {}  # unloaded at once, as with Ollama's keep_alive 0
    cairn("run", "gemma3:270m", "Hi.", *SHORT, "--keepalive", "1h30m", env=server)
    assert 80 * 60 < loaded(served)["gemma3:270m"] <= 90 * 60 + 30
    cairn("run", "gemma3:270m", "Hi.", *SHORT, "--keepalive", "-1s", env=server)
    assert "Forever" in cairn("ps", env=server).stdout


def test_the_chat_keeps_the_model_for_keepalive_and_wraps_as_asked(
    served: str,  # noqa: F811
    cairn: Runner,
    store: Path,
) -> None:
    question = "Once upon"  # short: the echoed line itself is not wrapped by readline
    alone = cairn(
        "run", "gemma3:270m", question, *ASK, "-p", "num_predict=24", env={"CAIRN_HOST": served}
    ).stdout.strip("\n")
    assert max(len(line) for line in alone.splitlines()) > 20  # long enough to be wrapped

    chat = chat_on(served, store, *ASK, "-p", "num_predict=24", "--keepalive", "10m", columns=20)
    assert 8 * 60 < loaded(served)["gemma3:270m"] <= 10 * 60 + 30  # loaded before the first message
    wrapped = said(chat, question).strip("\n")
    assert max(len(line) for line in wrapped.splitlines()) <= 20, repr(wrapped)
    assert wrapped.split() == alone.split()
    assert 8 * 60 < loaded(served)["gemma3:270m"] <= 10 * 60 + 30  # and kept so after the answer
    chat.type("/bye\n")
    assert chat.wait() == 0

    chat = chat_on(served, store, *ASK, "-p", "num_predict=24", "--nowordwrap", columns=20)
    assert said(chat, question).strip("\n") == alone
    chat.type("/bye\n")
    assert chat.wait() == 0


def test_chat_commands_through_the_server(
    served: str,  # noqa: F811
    cairn: Runner,
    store: Path,
) -> None:
    chat = chat_on(served, store, *SHORT, "--verbose")
    answer = said(chat, "Name a colour.")
    assert "eval count:" in answer and "total duration:" in answer
    chat.type("/set quiet\n")
    assert "Set 'quiet' mode." in chat.until(">>> ")
    assert "eval count:" not in said(chat, "Name a fruit.")
    chat.type("/set verbose\n")
    assert "Set 'verbose' mode." in chat.until(">>> ")
    assert "eval count:" in said(chat, "Name a tree.")
    chat.type("/set quiet\n")
    chat.until(">>> ")

    chat.type("/show info\n")
    info = chat.until(">>> ").replace("\r", "").rsplit(">>> ", 1)[0]
    assert info.split("\n", 1)[1] == cairn("show", "gemma3:270m").stdout
    chat.type('/set system You answer "briefly".\n')
    assert "Set system message." in chat.until(">>> ")
    chat.type("/set parameter temperature 0.5\n")
    chat.until(">>> ")
    chat.type("/show modelfile\n")
    shown = chat.until(">>> ").replace("\r", "")
    assert "FROM gemma3:270m\n" in shown
    assert 'SYSTEM """You answer "briefly"."""' in shown
    assert "PARAMETER temperature 0.5\n" in shown and "PARAMETER stop <end_of_turn>\n" in shown
    assert "MESSAGE user Name a colour.\n" in shown

    chat.type("/save mine:1\n")
    assert "Created new model 'mine:1'" in chat.until(">>> ", 120)
    saved = httpx.post(f"{served}/api/show", json={"model": "mine:1"}, timeout=30).json()
    assert saved["system"] == 'You answer "briefly".'
    assert [m["content"] for m in saved["messages"] if m["role"] == "user"] == [
        "Name a colour.",
        "Name a fruit.",
        "Name a tree.",
    ]
    assert re.search(r"temperature +0\.5", saved["parameters"])
    chat.type("/save bad!name\n")
    refused = chat.until(">>> ")
    assert "Error: the server at" in refused and "is not allowed" in refused, refused
    assert "Traceback" not in refused

    chat.type("/load nosuch:1\n")
    missing = chat.until(">>> ")
    assert "Loading model 'nosuch:1'" in missing and "Error:" in missing
    assert "Traceback" not in missing
    chat.type("/load mine:1\n")
    assert "Loading model 'mine:1'" in chat.until(">>> ", 120)
    assert "mine:1" in loaded(served)  # loaded before the next message, as at the start
    chat.type("/show modelfile\n")
    assert "FROM mine:1\n" in chat.until(">>> ").replace("\r", "")
    chat.type("/set parameter num_predict 4\n")  # -p's are the first model's, as here
    chat.until(">>> ")
    assert said(chat, "Name a bird.").strip()
    chat.type("/bye\n")
    assert chat.wait() == 0
    here = cairn("show", "mine:1", "--modelfile").stdout  # the same store: a real model
    assert 'You answer "briefly".' in here and "MESSAGE user Name a tree." in here
