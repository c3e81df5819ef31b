"""Which accelerators this machine has: NVIDIA (``nvidia-smi``), AMD (``/dev/kfd``, KFD topology).

``CUDA_VISIBLE_DEVICES`` and ``HIP_VISIBLE_DEVICES`` (or
``ROCR_VISIBLE_DEVICES``) are honoured as the drivers honour them: a list of
indices, and an empty value (or ``-1``) hides every device. The command
runner and the filesystem root are parameters, so tests replay recorded
``nvidia-smi`` output and sysfs trees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cairn.gguf import GGUFInfo

Run = Callable[[Sequence[str]], str | None]


@dataclass(frozen=True)
class GPU:
    kind: str  # "cuda" or "rocm"
    index: int
    name: str
    memory_mib: int | None = None

    @property
    def device(self) -> str:
        return f"{self.kind}:{self.index}"


def _run(command: Sequence[str]) -> str | None:
    import shutil  # here, not at the top: the runner imports this module on its way to a load
    import subprocess

    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _visible(value: str | None, count: int) -> list[int]:
    """Indices a ``*_VISIBLE_DEVICES`` value leaves visible, in its order."""
    if value is None:
        return list(range(count))
    chosen = []
    for part in value.split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit():
            break  # UUIDs and the like: the drivers stop at the first they can't read
        index = int(part)
        if index < 0:
            break
        if index < count and index not in chosen:
            chosen.append(index)
    return chosen


def nvidia(env: Mapping[str, str], run: Run = _run) -> list[GPU]:
    output = run(
        ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
    )
    if not output:
        return []
    found = []
    for line in output.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2 and fields[0].isdigit():
            memory = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None
            found.append(GPU("cuda", int(fields[0]), fields[1], memory))
    visible = _visible(env.get("CUDA_VISIBLE_DEVICES"), len(found))
    return [GPU("cuda", i, found[old].name, found[old].memory_mib) for i, old in enumerate(visible)]


def nvidia_free_memory(env: Mapping[str, str], run: Run = _run) -> int | None:
    """Bytes free on the visible NVIDIA GPUs together, or None without any (or nvidia-smi)."""
    output = run(["nvidia-smi", "--query-gpu=index,memory.free", "--format=csv,noheader,nounits"])
    if not output:
        return None
    free: list[int] = []
    for line in output.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
            return None  # a line it cannot read: better no figure than a wrong one
        free.append(int(fields[1]) << 20)
    visible = _visible(env.get("CUDA_VISIBLE_DEVICES"), len(free))
    return sum(free[i] for i in visible) if visible else None


def amd(env: Mapping[str, str], root: Path = Path("/")) -> list[GPU]:
    if not (root / "dev" / "kfd").exists():
        return []
    nodes_dir = root / "sys" / "class" / "kfd" / "kfd" / "topology" / "nodes"
    found: list[GPU] = []
    try:
        nodes = sorted(nodes_dir.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0)
    except FileNotFoundError:
        return []
    for node in nodes:
        try:
            properties = dict(
                line.split(maxsplit=1)
                for line in (node / "properties").read_text().splitlines()
                if len(line.split(maxsplit=1)) == 2
            )
        except OSError:
            continue
        if int(properties.get("simd_count", "0")) <= 0:
            continue  # a CPU node
        try:
            name = (node / "name").read_text().strip() or "AMD GPU"
        except OSError:
            name = "AMD GPU"
        found.append(GPU("rocm", len(found), name))
    hip = env.get("HIP_VISIBLE_DEVICES", env.get("ROCR_VISIBLE_DEVICES"))
    visible = _visible(hip, len(found))
    return [GPU("rocm", i, found[old].name) for i, old in enumerate(visible)]


def detect(
    env: Mapping[str, str] | None = None, run: Run = _run, root: Path = Path("/")
) -> list[GPU]:
    """Every visible GPU, NVIDIA first."""
    env = os.environ if env is None else env
    return nvidia(env, run) + amd(env, root)


def cpu_threads() -> int:
    """Threads for the cores this process may use (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Threads for llama.cpp when ``num_thread`` is not set: one core left free.

    llama.cpp's threads wait for each other at every step: on this project's
    2-core machine, Gemma 3 270M decodes at 73 tokens/s with 2 threads and
    56 with 1 on an idle machine, but at 0.8 against 56 when another process
    keeps one core busy (``bench/threads.py``, docs/runtimes.md). Leaving a
    core free costs a little on an idle machine and saves everything on a
    busy one; ``num_thread`` still sets any count.
    """
    return max(1, cpu_threads() - 1)


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes of memory available now (``MemAvailable``), or None where it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def kv_cache_bytes(gguf: GGUFInfo, n_ctx: int) -> int | None:
    """What llama.cpp's KV cache takes for ``n_ctx`` tokens (f16 keys and values, every
    layer full length: an upper bound for sliding-window layers); None when the header
    does not say enough.

    Arithmetic only, whatever the header claims (a block count of 2**32 is a
    number to multiply, not a loop to run).
    """
    layers = gguf.arch_value("block_count")
    embedding = gguf.arch_value("embedding_length")
    if not all(_count(v) for v in (layers, embedding)):
        return None
    heads = _heads(gguf.arch_value("attention.head_count"), layers)
    kv_heads = _heads(gguf.arch_value("attention.head_count_kv"), layers) or heads
    if not heads or not kv_heads:
        return None
    # One entry for all layers, or one for each (then at most 256: longer arrays
    # are not kept); one of each kind may be either.
    count = max(len(heads), len(kv_heads))
    heads, kv_heads = (h * count if len(h) == 1 else h for h in (heads, kv_heads))
    key = gguf.arch_value("attention.key_length")
    value = gguf.arch_value("attention.value_length")
    if _count(key):
        widths = [int(key) + (int(value) if _count(value) else int(key))] * count
    else:  # the head width follows from the embedding, layer by layer
        widths = [2 * (int(embedding) // h) for h in heads]
    per_token = sum(kv * width for kv, width in zip(kv_heads, widths, strict=True)) * 2
    return per_token * (int(layers) if count == 1 else 1) * n_ctx


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _heads(value: object, layers: int) -> list[int]:
    """A head count for all layers (one entry) or one per layer; empty when unknown."""
    if _count(value):
        return [value]  # type: ignore[list-item]
    items = getattr(value, "values", None)
    if isinstance(items, tuple) and len(items) == layers and all(_count(i) for i in items):
        return list(items)
    return []
