"""Benchmark of ``cairn sync`` against ``skopeo sync``, registry to registry.

    python bench/sync.py [--runs N]

Gemma 3 270M (an OCI artifact, which skopeo reads) is pushed to a local
docker-registry under 5 tags; each run syncs the repository (every tag) into
a fresh, empty docker-registry, ``cairn sync`` and ``skopeo sync --src docker
--dest docker`` each into their own, then times a second ``cairn sync`` that
finds nothing new. Medians of interleaved runs; ``os.sync()`` before each.
Nothing gates CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, REPO, gemma_store, report, timed
from bench.registry import SKOPEO_HTTP, Registry

TAGS = ("t1", "t2", "t3", "t4", "t5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cairn = [str(BIN / "cairn")]
    samples: dict[str, list[float]] = {"cairn": [], "skopeo": [], "again": []}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        _, env, _ = gemma_store(work)
        origin = Registry(work / "origin")
        try:
            repository = f"{origin.host}/library/gemma3"
            for tag in TAGS:
                push = [*cairn, "push", "gemma3:270m", f"{repository}:{tag}", "--insecure"]
                subprocess.run([*push, "--format", "oci", "-q"], env=env, check=True)
            for run in range(args.runs):
                run_env = {**env, "CAIRN_HOME": str(work / f"home-{run}")}
                target = Registry(work / f"cairn-{run}")
                try:
                    command = [
                        *cairn, "sync", repository, target.host, "--insecure", "--dest-insecure",
                        "-q",
                    ]  # fmt: skip
                    samples["cairn"].append(timed(command, run_env))
                    samples["again"].append(timed(command, run_env))
                finally:
                    target.stop()
                    shutil.rmtree(work / f"cairn-{run}", ignore_errors=True)
                target = Registry(work / f"skopeo-{run}")
                try:
                    command = [
                        "skopeo", "sync", "--src", "docker", "--dest", "docker",
                        *SKOPEO_HTTP, repository, target.host,
                    ]  # fmt: skip
                    samples["skopeo"].append(timed(command, {**os.environ}))
                finally:
                    target.stop()
                    shutil.rmtree(work / f"skopeo-{run}", ignore_errors=True)
        finally:
            origin.stop()
    results: dict[str, float | int] = {
        "sync_cairn_s": statistics.median(samples["cairn"]),
        "sync_skopeo_s": statistics.median(samples["skopeo"]),
    }
    results["sync_ratio"] = results["sync_cairn_s"] / results["sync_skopeo_s"]
    results["sync_again_s"] = statistics.median(samples["again"])
    report("sync", results, samples)


if __name__ == "__main__":
    main()
