"""Device detection against recorded `nvidia-smi` output and a recorded KFD sysfs tree."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cairn.runtime_plugins import devices

# `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits` on a 2-GPU box.
NVIDIA_SMI = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\n"


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
    # The project's machines have none; a lent device machine would list its H100 here.
    assert all(g.kind in ("cuda", "rocm") for g in devices.detect())
    assert devices.cpu_threads() >= 1
