"""Benchmark of the pull-through cache (``cairn registry serve --upstream``).

    python bench/pull_through.py [--runs N]

With Gemma 3 270M (253 MB) in a local docker-registry:

- cold: ``cairn pull`` through a cache that holds nothing (a fresh one each
  run, upstream = the docker-registry) vs ``cairn pull`` straight from the
  docker-registry; target ratio <= 1.2;
- warm: ``cairn pull`` from the cache once it holds the model vs from a plain
  ``cairn registry serve`` over a store holding it; target ratio <= 1.0.

Every pull goes into an empty store. Medians of interleaved runs;
``os.sync()`` before each. Nothing gates CI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, REPO, gemma_store, report, timed
from tests.conftest import free_port, serve_command, start_registry, stop, wait_until_serving


@contextlib.contextmanager
def serving(root: Path, env: dict[str, str], *args: str) -> Iterator[str]:
    """``cairn registry serve ARGS`` over ``root``; its ``host:port``."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        serve_command(root, port, *args),
        env={**env, "CAIRN_MODELS": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(proc, port, "cairn registry serve")
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cairn = [str(BIN / "cairn")]
    samples: dict[str, list[float]] = {"cold": [], "direct": [], "warm": [], "plain": []}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        source, env, _ = gemma_store(work)
        (work / "origin").mkdir()
        origin, proc = start_registry(work / "origin")
        try:
            subprocess.run(
                [
                    *cairn,
                    "push",
                    "gemma3:270m",
                    f"{origin}/library/gemma3:270m",
                    "--insecure",
                    "-q",
                ],
                env=env,
                check=True,
            )
            client = work / "client"
            client_env = {**env, "CAIRN_MODELS": str(client)}

            def pull(host: str) -> float:
                shutil.rmtree(client, ignore_errors=True)
                return timed(
                    [*cairn, "pull", "-q", "--insecure", f"{host}/library/gemma3:270m"], client_env
                )

            with serving(source, env) as plain:
                for run in range(args.runs):
                    cache_root = work / f"cache-{run}"
                    with serving(cache_root, env, "--upstream", f"http://{origin}") as cache:
                        samples["cold"].append(pull(cache))
                        samples["direct"].append(pull(origin))
                        samples["warm"].append(pull(cache))
                        samples["plain"].append(pull(plain))
                    shutil.rmtree(cache_root, ignore_errors=True)
        finally:
            stop(proc)
    results: dict[str, float | int] = {k + "_s": statistics.median(v) for k, v in samples.items()}
    results["cold_ratio"] = results["cold_s"] / results["direct_s"]
    results["warm_ratio"] = results["warm_s"] / results["plain_s"]
    report("pull_through", results, samples)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(REPO))
    main()
