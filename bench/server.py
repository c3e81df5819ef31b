"""Benchmarks of ``cairn registry serve`` against CNCF distribution, in the same run.

    python bench/server.py [--runs N]

- GET of the 253 MB Gemma blob over loopback with curl, from cairn and from
  docker-registry serving the same blob;
- 8 concurrent curl GETs of it: aggregate throughput;
- skopeo pushing the model (a ``dir:`` copy) into each, fresh every run.

Medians of interleaved runs. Nothing gates CI.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, REPO, gemma_store, report
from bench.registry import SKOPEO_HTTP, Registry
from tests.conftest import start_cairn_registry, stop


def curl(url: str, copies: int = 1) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sf", "-o", "/dev/null", url]) for _ in range(copies)]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"curl {url} failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results: dict[str, float] = {}
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        store, env, digest = gemma_store(work)
        cairn = [str(BIN / "cairn")]
        origin = Registry(work / "distribution")
        served, proc = start_cairn_registry(store)
        try:
            subprocess.run(
                [
                    *cairn,
                    "push",
                    "gemma3:270m",
                    f"{origin.host}/library/gemma3:270m",
                    "--insecure",
                    "--format",
                    "oci",
                    "-q",
                ],
                env=env,
                check=True,
            )
            skopeo_dir = work / "skopeo-dir"
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "-q",
                    *SKOPEO_HTTP,
                    f"docker://{origin.host}/library/gemma3:270m",
                    f"dir:{skopeo_dir}",
                ],
                check=True,
            )
            urls = {
                "cairn": f"http://{served}/v2/library/gemma3/blobs/{digest}",
                "distribution": f"http://{origin.host}/v2/library/gemma3/blobs/{digest}",
            }
            for name in urls:  # warm both page caches
                curl(urls[name])
            for _ in range(args.runs):
                for name, url in urls.items():
                    samples.setdefault(f"get_{name}", []).append(curl(url))
                    samples.setdefault(f"get8_{name}", []).append(curl(url, 8))
            for run in range(args.runs):
                for name in ("cairn", "distribution"):
                    finish: Callable[[], None]
                    if name == "cairn":
                        root = work / f"push-cairn-{run}"
                        root.mkdir()
                        host, target = start_cairn_registry(root)
                        finish = functools.partial(stop, target)
                    else:
                        registry = Registry(work / f"push-dist-{run}")
                        host, finish = registry.host, registry.stop
                    try:
                        start = time.perf_counter()
                        subprocess.run(
                            [
                                "skopeo",
                                "copy",
                                "-q",
                                *SKOPEO_HTTP,
                                f"dir:{skopeo_dir}",
                                f"docker://{host}/library/gemma3:270m",
                            ],
                            check=True,
                        )
                        samples.setdefault(f"push_{name}", []).append(time.perf_counter() - start)
                    finally:
                        finish()
        finally:
            stop(proc)
            origin.stop()
            shutil.rmtree(work / "store", ignore_errors=True)
    size = 253_113_024
    for key, values in samples.items():
        results[key + "_s"] = statistics.median(values)
    results["get_ratio"] = results["get_cairn_s"] / results["get_distribution_s"]
    results["get8_throughput_ratio"] = results["get8_distribution_s"] / results["get8_cairn_s"]
    results["get8_cairn_mb_s"] = 8 * size / results["get8_cairn_s"] / 1e6
    results["push_ratio"] = results["push_cairn_s"] / results["push_distribution_s"]
    report("server", results, samples)


if __name__ == "__main__":
    main()
