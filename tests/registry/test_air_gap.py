"""The air-gap walk-through of docs/offline.md, each step as written there.

Separate stores and ports stand for the machines: a docker-registry for the
internet (it serves what registry.ollama.ai would), machine A online, machine
B inside the gap serving what it imported, machine C pulling from B by name
and through ``CAIRN_MIRRORS``, then running the real Gemma 3 270M.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import GEMMA_TEMPLATE, Runner, modelfile, serving, start_registry, stop
from tests.registry.test_pull_push import other_store
from tests.runtime_plugins.test_run import require_llama


@pytest.mark.slow
def test_air_gap_walk_through(cairn: Runner, tmp_path: Path, gemma_gguf: Path) -> None:
    require_llama()
    modelfile(
        tmp_path,
        f'FROM {gemma_gguf}\nTEMPLATE """{GEMMA_TEMPLATE}"""\nPARAMETER temperature 0\n'
        "PARAMETER seed 42\nPARAMETER stop <end_of_turn>\n",
        "MF",
    )
    cairn("create", "gemma3:270m", "-f", str(tmp_path / "MF"), "--quiet")
    (tmp_path / "internet").mkdir()
    internet, registry_proc = start_registry(tmp_path / "internet")
    try:
        cairn("push", "gemma3:270m", f"{internet}/library/gemma3:270m", "--insecure", "-q")

        # Machine A, online: pulls gemma3:270m (its registry.ollama.ai is the docker-registry)
        # and exports it.
        machine_a = other_store(tmp_path, cairn, "machine-a")
        online = {"CAIRN_MIRRORS": f"registry.ollama.ai=http://{internet}"}
        machine_a("pull", "gemma3:270m", "-q", env=online)
        bundle = tmp_path / "usb-stick" / "gemma3.tar.zst"
        machine_a("export", "gemma3:270m", "-o", str(bundle), "-q")
    finally:
        stop(registry_proc)  # the gap: from here on, no internet

    # Machine B, inside: imports the bundle and serves it.
    machine_b = other_store(tmp_path, cairn, "machine-b")
    machine_b("import", str(bundle), "-q")
    assert [m["name"] for m in json.loads(machine_b("list", "--json").stdout)["models"]] == [
        "gemma3:270m"
    ]
    with serving(tmp_path / "machine-b") as mirror:
        # Machine C: by name from B ...
        machine_c = other_store(tmp_path, cairn, "machine-c")
        machine_c("pull", f"{mirror}/library/gemma3:270m", "--insecure", "-q")
        # ... and as plain gemma3:270m, B standing in for registry.ollama.ai.
        inside = {"CAIRN_MIRRORS": f"registry.ollama.ai=http://{mirror}"}
        machine_d = other_store(tmp_path, cairn, "machine-c-mirrored")
        machine_d("pull", "gemma3:270m", "-q", env=inside)
    for run, name in (
        (machine_c, f"{mirror}/library/gemma3:270m"),
        (machine_d, "gemma3:270m"),
    ):
        assert "all intact" in run("verify").stdout
        answer = run(
            "run", name, "Name a colour.", "-p", "num_predict=8", "--local", "--insecure"
        ).stdout
        assert answer.strip()
    first = json.loads(machine_c("show", f"{mirror}/library/gemma3:270m", "--json").stdout)
    second = json.loads(machine_d("show", "gemma3:270m", "--json").stdout)
    assert first["digest"] == second["digest"]  # the very manifest A pulled
