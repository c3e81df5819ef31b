"""The second runtime, a plugin package of its own: llama-server, built from the sdist's sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GEMMA_TEMPLATE, REPO, Runner, modelfile

PLUGIN = REPO / "plugins" / "cairn-llama-server"


@pytest.fixture(scope="session")
def llama_server() -> str:
    """The llama-server binary (built once per machine, then cached)."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-llama-server.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=3000,
    )
    if result.returncode != 0:  # no skip: the suite builds it
        pytest.fail(f"building llama-server failed: {result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def installed_plugin() -> Iterator[None]:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(PLUGIN)], check=True)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "cairn-llama-server"], check=True)


def test_llama_server_runtime_answers_like_llama_cpp(
    cairn: Runner, tmp_path: Path, gemma_gguf: Path, llama_server: str, installed_plugin: None
) -> None:
    env = {"CAIRN_LLAMA_SERVER": llama_server}
    listed = json.loads(cairn("runtimes", "--json", env=env).stdout)["runtimes"]
    [server] = [r for r in listed if r["name"] == "llama-server"]
    assert server["available"] is True and server["plugin"] == "llama-server"
    missing = json.loads(
        cairn("runtimes", "--json", env={"CAIRN_LLAMA_SERVER": "/nonexistent"}).stdout
    )
    [unavailable] = [r for r in missing["runtimes"] if r["name"] == "llama-server"]
    assert unavailable["available"] is False and "CAIRN_LLAMA_SERVER" in unavailable["reason"]

    modelfile(tmp_path, f'FROM {gemma_gguf}\nTEMPLATE """{GEMMA_TEMPLATE}"""\n', "MF")
    cairn("create", "gemma3:270m", "-f", str(tmp_path / "MF"))
    args = [
        "run",
        "gemma3:270m",
        "The capital of France is",
        "-p",
        "temperature=0",
        "-p",
        "seed=1",
        "-p",
        "num_predict=6",
    ]
    by_server = cairn(*args, "--runtime", "llama-server", env=env).stdout
    by_python = cairn(*args, "--runtime", "llama-cpp", env=env).stdout
    assert by_server.strip()
    assert by_server.split()[:2] == by_python.split()[:2]  # the same first tokens


def test_uninstalled_plugin_is_no_longer_listed(cairn: Runner) -> None:
    listed = json.loads(cairn("runtimes", "--json").stdout)["runtimes"]
    assert "llama-server" not in [r["name"] for r in listed]
