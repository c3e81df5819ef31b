"""The CLI through a running ``cairn serve``: ``ps``, ``stop``, and ``run``, ``list``,
``pull`` going through the server when one answers at ``CAIRN_HOST``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from tests.conftest import Runner as Cli
from tests.conftest import Terminal, cairn_env, free_port, modelfile
from tests.server.conftest import Serve

ASK = ("Name a colour.", "-p", "temperature=0", "-p", "seed=42", "-p", "num_predict=12")


def loaded(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(f"{url}/api/ps", timeout=30).json()["models"]]


def rows(text: str) -> list[dict[str, str]]:
    """The table's lines after the header, each a dict by column name (cells may hold single
    spaces; columns are four or more apart)."""
    import re

    lines = [re.split(r" {4,}", line.strip()) for line in text.strip("\n").splitlines()]
    return [dict(zip(lines[0], line, strict=True)) for line in lines[1:]]


PS_HEADER = ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]


def test_run_through_the_server_then_ps_and_stop(served: str, cairn: Cli) -> None:
    server = {"CAIRN_HOST": served}
    assert cairn("ps", env=server).stdout.split() == PS_HEADER

    here = cairn("run", "gemma3:270m", *ASK, env={**server, "CAIRN_NO_SERVER": "1"})
    assert loaded(served) == []  # that one ran here, not on the server
    there = cairn("run", "gemma3:270m", *ASK, "--verbose", env=server)
    assert there.stdout == here.stdout and there.stdout.strip()
    assert "eval count:" in there.stderr and "load duration:" in there.stderr
    assert loaded(served) == ["gemma3:270m"]  # the server ran it, and keeps it loaded

    [shown] = rows(cairn("ps", env=server).stdout)
    digest = httpx.get(f"{served}/api/tags", timeout=30).json()["models"][0]["digest"]
    assert (shown["NAME"], shown["ID"]) == ("gemma3:270m", digest[:12])
    assert shown["PROCESSOR"] == "100% CPU" and shown["SIZE"].endswith(" MB")
    assert shown["UNTIL"].endswith("minutes from now")  # CAIRN_KEEP_ALIVE's default, 5m
    as_json = json.loads(cairn("ps", "--json", env=server).stdout)
    assert [(m["name"], m["digest"]) for m in as_json["models"]] == [("gemma3:270m", digest)]

    assert "no server" in cairn("ps", env={**server, "CAIRN_NO_SERVER": "1"}).stderr

    cairn("stop", "gemma3:270m", env=server)
    assert loaded(served) == []
    assert rows(cairn("ps", env=server).stdout) == []
    cairn("stop", "gemma3:270m", env=server)  # not loaded: nothing to do, as ollama stop
    assert loaded(served) == []  # and it was not loaded just to be stopped
    missing = cairn("stop", "nothing-here", env=server, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error: couldn't find model 'nothing-here' to stop"


def test_the_chat_through_the_server(served: str, cairn: Cli, store: Path) -> None:
    """On a terminal, ``cairn run MODEL`` chats through ``/api/chat``: the model is loaded
    before the first message, as ``ollama run`` does, and answers as a one-shot run."""
    chat = Terminal(
        [sys.executable, "-m", "cairn", "run", "gemma3:270m", *ASK[1:]],
        {**cairn_env(store), "CAIRN_HOST": served},
    )
    assert chat.until(">>> ").endswith(">>> ")
    assert loaded(served) == ["gemma3:270m"]
    chat.type(f"{ASK[0]}\n")
    answer = chat.until(">>> ").replace("\r", "")
    chat.type("/show\n")
    assert "num_predict: 12" in chat.until(">>> ")
    chat.type("/bye\n")
    assert chat.wait() == 0
    assert loaded(served) == ["gemma3:270m"]  # kept for its keep_alive, as after ollama run
    said = answer.split(ASK[0], 1)[1].rsplit(">>> ", 1)[0]
    alone = cairn("run", "gemma3:270m", *ASK, env={"CAIRN_HOST": served}).stdout
    assert " ".join(said.split()) == " ".join(alone.split()) != ""


def test_ps_and_stop_with_no_server(cairn: Cli) -> None:
    nobody = {"CAIRN_HOST": f"127.0.0.1:{free_port()}"}
    empty = cairn("ps", env=nobody)
    assert empty.stdout.split() == PS_HEADER
    assert "no server is running at http://127.0.0.1:" in empty.stderr
    assert json.loads(cairn("ps", "--json", env=nobody).stdout) == {"models": []}
    refused = cairn("stop", "gemma3:270m", env=nobody, check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("Error: no server is running at http://127.0.0.1:")
    assert "cairn serve" in refused.stderr


def test_a_named_server_over_another_store(
    served: str, cairn: Cli, store: Path, tmp_path: Path
) -> None:
    """With CAIRN_HOST naming a server over another store, list, run and pull are the
    server's; --local (or CAIRN_NO_SERVER=1) is the store at CAIRN_MODELS."""
    from cairn.server.client import store_identity

    other = tmp_path / "other"
    other.mkdir()
    elsewhere = {"CAIRN_HOST": served, "CAIRN_MODELS": str(other)}
    assert httpx.get(f"{served}/api/version", timeout=30).json()["store"] == store_identity(store)

    assert [r["NAME"] for r in rows(cairn("list", env=elsewhere).stdout)] == ["gemma3:270m"]
    listed = json.loads(cairn("list", "--json", env=elsewhere).stdout)["models"]
    local = json.loads(cairn("list", "--json", env={"CAIRN_HOST": served}).stdout)["models"]
    keys = ("name", "model", "id", "digest", "size")
    assert [{k: m[k] for k in keys} for m in listed] == [{k: m[k] for k in keys} for m in local]
    assert rows(cairn("list", "--local", env=elsewhere).stdout) == []
    assert rows(cairn("list", env={**elsewhere, "CAIRN_NO_SERVER": "1"}).stdout) == []

    # The model is the server's only: run gets it there, the prompt from standard input.
    there = cairn("run", "gemma3:270m", *ASK[1:], env=elsewhere, input=ASK[0])
    here = cairn("run", "gemma3:270m", *ASK, env={"CAIRN_NO_SERVER": "1"})
    assert there.stdout == here.stdout
    assert loaded(served) == ["gemma3:270m"]
    assert not [p for p in other.rglob("*") if p.is_file()]  # nothing came here


def test_pull_through_a_named_server(
    serve: Serve, cairn: Cli, registry: str, tmp_path: Path, tiny_gguf: Path
) -> None:
    """The server pulls into its store; the CLI shows the server's NDJSON progress as a
    pull of its own shows it."""
    mine = tmp_path / "mine"
    mine.mkdir()
    here = {"CAIRN_MODELS": str(mine), "CAIRN_NO_SERVER": "1"}
    modelfile(tmp_path, f"FROM {tiny_gguf}\n", "Tiny")
    cairn("create", "tiny:1", "-f", str(tmp_path / "Tiny"), env=here)
    remote = f"{registry}/library/tiny:1"
    cairn("push", "tiny:1", remote, "--insecure", "-q", env=here)

    url = serve()
    elsewhere = {"CAIRN_HOST": url, "CAIRN_MODELS": str(mine)}
    pulled = cairn("pull", remote, "--insecure", "--json", env=elsewhere)
    events = [json.loads(line) for line in pulled.stdout.splitlines()]
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
    layers = [e for e in events if e["status"].startswith("pulling ") and "digest" in e]
    assert layers and all(e["total"] >= e.get("completed", 0) for e in layers)
    names = [m["name"] for m in httpx.get(f"{url}/api/tags", timeout=30).json()["models"]]
    assert f"{registry}/library/tiny:1" in names  # in the server's store

    quiet = cairn("pull", remote, "--insecure", env=elsewhere)
    assert "success" in quiet.stderr  # status lines, as a pull here prints them off a terminal
    limited = cairn("pull", remote, "--insecure", "--limit-rate", "1M", env=elsewhere, check=False)
    assert limited.returncode == 1 and "--limit-rate" in limited.stderr
