"""Device detection against recorded `nvidia-smi` output and a recorded KFD sysfs tree."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from cairn.runtime_plugins import devices
from cairn.runtime_plugins.llama_cpp import plugin
from cairn.runtime_plugins.runtime import Availability

# `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits` on a 2-GPU box.
NVIDIA_SMI = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\n"
# The same query on the lent H200, driver 580.159.04 (bench/gpu/results-2026-11-29-h200/).
H200_SMI = "0, NVIDIA H200, 143771\n"


def recorded(output: str | None) -> devices.Run:
    def run(command: Sequence[str]) -> str | None:
        assert command[0] == "nvidia-smi"
        return output

    return run


def test_nvidia_gpus() -> None:
    found = devices.nvidia({}, recorded(NVIDIA_SMI))
    assert [g.device for g in found] == ["cuda:0", "cuda:1"]
    assert found[0].name == "NVIDIA H100 80GB HBM3" and found[0].memory_mib == 81559


def test_cuda_visible_devices() -> None:
    assert [
        g.name for g in devices.nvidia({"CUDA_VISIBLE_DEVICES": "1"}, recorded(NVIDIA_SMI))
    ] == ["NVIDIA H100 80GB HBM3"]
    assert devices.nvidia({"CUDA_VISIBLE_DEVICES": ""}, recorded(NVIDIA_SMI)) == []
    assert devices.nvidia({"CUDA_VISIBLE_DEVICES": "-1"}, recorded(NVIDIA_SMI)) == []
    assert len(devices.nvidia({"CUDA_VISIBLE_DEVICES": "1,0"}, recorded(NVIDIA_SMI))) == 2


def test_the_recorded_h200() -> None:
    assert devices.nvidia({}, recorded(H200_SMI)) == [devices.GPU("cuda", 0, "NVIDIA H200", 143771)]


# `nvidia-smi --query-gpu=index,memory.free --format=csv,noheader,nounits`, two GPUs in use.
NVIDIA_FREE = "0, 70123\n1, 1024\n"


def test_free_gpu_memory_follows_the_visible_gpus() -> None:
    assert devices.nvidia_free_memory({}, recorded(NVIDIA_FREE)) == (70123 + 1024) << 20
    only = {"CUDA_VISIBLE_DEVICES": "1"}
    assert devices.nvidia_free_memory(only, recorded(NVIDIA_FREE)) == 1024 << 20
    assert devices.nvidia_free_memory({"CUDA_VISIBLE_DEVICES": ""}, recorded(NVIDIA_FREE)) is None
    assert devices.nvidia_free_memory({}, recorded(None)) is None
    assert devices.nvidia_free_memory({}, recorded("0, [N/A]\n")) is None


def test_no_nvidia_smi() -> None:
    assert devices.nvidia({}, recorded(None)) == []


def kfd_tree(root: Path, gpus: list[str]) -> Path:
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "kfd").write_text("")
    nodes = root / "sys/class/kfd/kfd/topology/nodes"
    cpu = nodes / "0"
    cpu.mkdir(parents=True)
    (cpu / "properties").write_text("cpu_cores_count 16\nsimd_count 0\n")
    (cpu / "name").write_text("\n")
    for i, name in enumerate(gpus, start=1):
        node = nodes / str(i)
        node.mkdir()
        (node / "properties").write_text("cpu_cores_count 0\nsimd_count 304\n")
        (node / "name").write_text(name + "\n")
    return root


def test_amd_gpus_from_sysfs(tmp_path: Path) -> None:
    root = kfd_tree(tmp_path, ["gfx942", "gfx942"])
    found = devices.amd({}, root)
    assert [(g.device, g.name) for g in found] == [("rocm:0", "gfx942"), ("rocm:1", "gfx942")]
    assert len(devices.amd({"HIP_VISIBLE_DEVICES": "0"}, root)) == 1
    assert devices.amd({"ROCR_VISIBLE_DEVICES": ""}, root) == []


def test_no_kfd(tmp_path: Path) -> None:
    assert devices.amd({}, tmp_path) == []


def test_detect_on_this_machine_has_no_gpu() -> None:
    # The project's machines have none; a lent device machine lists its H200 here.
    assert all(g.kind in ("cuda", "rocm") for g in devices.detect())
    assert devices.cpu_threads() >= 1


def cuda_build(monkeypatch: pytest.MonkeyPatch, build: str | None, smi: str | None) -> Availability:
    """The llama-cpp runtime's availability for a build of ``build`` and a recorded nvidia-smi."""
    monkeypatch.setattr(plugin, "_gpu_build", lambda: build)
    monkeypatch.setattr(devices, "detect", lambda: devices.nvidia(os.environ, recorded(smi)))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    return plugin.LlamaCppRuntime().availability()


def test_a_cuda_build_offers_the_gpus_it_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = cuda_build(monkeypatch, "cuda", H200_SMI)
    assert found.devices == ("cuda:0", "cpu") and found.no_gpu == ""


def test_a_cuda_build_with_the_gpu_hidden_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    found = cuda_build(monkeypatch, "cuda", H200_SMI)
    assert found.devices == ("cpu",)
    assert found.no_gpu == "this llama-cpp-python was built for CUDA, but no CUDA device is visible"


def test_a_cpu_build_beside_a_gpu_says_how_to_build_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    found = cuda_build(monkeypatch, None, H200_SMI)
    assert found.devices == ("cpu",)
    assert "built for the CPU only ('make install-cuda'" in found.no_gpu


def test_the_offload_is_read_from_llama_cpps_own_log(capfd: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python is not installed (make test builds it)")
    log = plugin._LoadLog()
    assert log.offloaded() is None  # a CPU build never says it
    # The lines llama.cpp printed on the H200 (llama-model.cpp, load_tensors):
    plugin._LoadLog._callback(1, b"load_tensors: offloading output layer to GPU\n", None)
    plugin._LoadLog._callback(1, b"load_tensors: offloaded 19/19 layers to GPU\n", None)
    assert log.offloaded() == (19, 19)
    plugin._LoadLog._callback(3, b"llama_model_load: error loading model: ", None)
    plugin._LoadLog._callback(5, b"tensor data is not within the file bounds\n", None)
    assert capfd.readouterr().err == (
        "llama_model_load: error loading model: tensor data is not within the file bounds\n"
    )


def test_the_default_thread_count_leaves_a_core_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp's threads wait on each other: one busy core made 2 threads 70x slower."""
    from cairn.runtime_plugins import devices

    for cores, threads in ((1, 1), (2, 1), (4, 3), (16, 15)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert devices.default_threads() == threads
