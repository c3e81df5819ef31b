"""Shared by the API tests: a real ``cairn serve`` over a store holding Gemma 3 270M."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GEMMA_TEMPLATE, cairn_env, free_port, modelfile, stop
from tests.conftest import Runner as Cli
from tests.runtime_plugins.test_run import require_llama

Serve = Callable[..., str]


@pytest.fixture
def serve(cairn: Cli, store: Path, tmp_path: Path, gemma_gguf: Path) -> Iterator[Serve]:
    """Start ``cairn serve`` (extra arguments and environment as given) over a store
    holding gemma3:270m; gives ``http://host:port``. Stopped at the test's end."""
    require_llama()
    text = f'FROM {gemma_gguf}\nTEMPLATE """{GEMMA_TEMPLATE}"""\nPARAMETER stop <end_of_turn>\n'
    modelfile(tmp_path, text, "MF")
    cairn("create", "gemma3:270m", "-f", str(tmp_path / "MF"))
    started: list[tuple[subprocess.Popen[bytes], object]] = []

    def start(*args: str, **environment: str) -> str:
        port = free_port()
        env = cairn_env(store, CAIRN_HOST=f"127.0.0.1:{port}", **environment)
        log_path = tmp_path / f"serve-{port}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "cairn", "serve", *args], env=env, stdout=log, stderr=log
        )
        started.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url, timeout=5).status_code in (200, 401):
                    return url
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "cairn serve did not start"
            time.sleep(0.05)

    try:
        yield start
    finally:
        for proc, log in started:
            stop(proc)
            log.close()  # type: ignore[attr-defined]


@pytest.fixture
def served(serve: Serve) -> str:
    """``http://host:port`` of a ``cairn serve`` over a store holding gemma3:270m."""
    return serve()
