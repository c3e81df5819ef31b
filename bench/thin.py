"""Pulls over thin links (issue 18): cairn's adaptive streams against skopeo's one stream.

    python bench/thin.py [--runs N] [--loopback-runs N]

Gemma 3 270M (an OCI artifact) in a local docker-registry, pulled through
``tests/throttle.py`` (a proxy that caps each TCP connection's rate, and can
hold each answer's first byte back) by ``cairn pull`` into an empty store
and by ``skopeo copy docker://... dir:...``, interleaved, same run:

- 20 MB/s per connection; 5 MB/s per connection; 20 MB/s per connection
  with 50 ms before each answer's first byte;
- 20 MB/s through ``../shared/tools/throttle_proxy.py`` as well, the proxy
  the issue was measured with (no latency; its pace does not restart per
  request), where it is there;
- loopback without a proxy (the pull issue's figure, which must not move);
  with ``--baseline PATH`` (a checkout of older code) its ``cairn pull``
  runs there too, interleaved, for a before-and-after in the same run.

For each path it also gives what Ollama's fixed scheme would take: the
blob cut into parts of ``max(100 MB, size / 16)`` (at most 1 GB, so
``ceil(size / part)`` parts, all at once), one connection each, so the
largest part at the per-connection rate, plus the latency. It reports the
most streams cairn had open (from ``--json``) and the peak RSS of a
throttled pull. Medians; ``os.sync()`` before each run. Nothing gates CI.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, REPO, report, timed
from bench.registry import SKOPEO_HTTP, Registry, max_rss_kib
from tests.conftest import free_port

SHARED_PROXY = REPO.parent / "shared" / "tools" / "throttle_proxy.py"
PUSH = ("--insecure", "--format", "oci", "-q")
SKOPEO = ("skopeo", "copy", "-q", *SKOPEO_HTTP)
OLLAMA_PARTS, OLLAMA_MIN_PART, OLLAMA_MAX_PART = 16, 100_000_000, 1_000_000_000


def ollama_seconds(size: int, rate: float, first_byte: float) -> float:
    """Ollama's downloader on this path: its parts all at once, one connection each."""
    part = min(OLLAMA_MAX_PART, max(OLLAMA_MIN_PART, size // OLLAMA_PARTS))
    parts = math.ceil(size / part)  # at most 16 at once (errgroup's limit): all of them here
    rounds = math.ceil(parts / OLLAMA_PARTS)
    return rounds * (min(part, size) / rate + first_byte)


class Proxy:
    def __init__(self, target: int, rate: float, first_byte: float, shared: bool) -> None:
        self.port = free_port()
        if shared:
            command = [sys.executable, str(SHARED_PROXY), str(self.port), str(target), str(rate)]
        else:
            command = [sys.executable, "-m", "tests.throttle", str(self.port), str(target)]
            command += [str(rate), "--first-byte", str(first_byte)]
        self.proc = subprocess.Popen(command, cwd=REPO)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the throttle proxy did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def most_streams(command: list[str], env: dict[str, str]) -> int:
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return max((json.loads(line).get("streams", 0) for line in out.splitlines()), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loopback-runs", type=int, default=7)
    parser.add_argument("--only", help="run only the path of this name")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of older code: on loopback its `cairn pull` runs too, interleaved",
    )
    args = parser.parse_args()
    from bench.common import gemma_store

    cairn = [str(BIN / "cairn")]
    results: dict[str, float | int] = {}
    samples: dict[str, list[float]] = {}
    paths = [
        ("p20", 20e6, 0.0, False),
        ("p5", 5e6, 0.0, False),
        ("p20_50ms", 20e6, 0.05, False),
        ("p20_shared", 20e6, 0.0, True),
        ("loopback", 0.0, 0.0, False),
    ]
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        _, env, weights = gemma_store(work)
        tag = work / "store/manifests/registry.ollama.ai/library/gemma3/270m"
        size = next(
            layer["size"]
            for layer in json.loads(tag.read_bytes())["layers"]
            if layer["digest"] == weights
        )
        origin = Registry(work / "origin")
        try:
            port = int(origin.host.rpartition(":")[2])
            subprocess.run(
                [*cairn, "push", "gemma3:270m", f"{origin.host}/library/gemma3:270m", *PUSH],
                env=env,
                check=True,
            )
            for name, rate, first_byte, shared in paths:
                if args.only and name != args.only:
                    continue
                if shared and not SHARED_PROXY.exists():
                    continue
                proxy = Proxy(port, rate, first_byte, shared) if rate else None
                host = f"127.0.0.1:{proxy.port}" if proxy else origin.host
                ref = f"{host}/library/gemma3:270m"
                store, skopeo_dir = work / "pulled", work / "skopeo-dir"
                pull_env = {**env, "CAIRN_MODELS": str(store)}
                cairn_s: list[float] = []
                skopeo_s: list[float] = []
                baseline_s: list[float] = []
                baseline = None
                if args.baseline is not None and proxy is None:
                    baseline = {**pull_env, "PYTHONPATH": str(args.baseline)}
                try:
                    for _ in range(args.loopback_runs if proxy is None else args.runs):
                        shutil.rmtree(store, ignore_errors=True)
                        cairn_s.append(timed([*cairn, "pull", "-q", "--insecure", ref], pull_env))
                        if baseline is not None:
                            shutil.rmtree(store, ignore_errors=True)
                            baseline_s.append(
                                timed([*cairn, "pull", "-q", "--insecure", ref], baseline)
                            )
                        shutil.rmtree(skopeo_dir, ignore_errors=True)
                        skopeo_s.append(
                            timed(
                                [*SKOPEO, f"docker://{ref}", f"dir:{skopeo_dir}"],
                                env,
                            )
                        )
                    shutil.rmtree(store, ignore_errors=True)
                    streams = most_streams([*cairn, "pull", "--json", "--insecure", ref], pull_env)
                    if name == "p20":
                        shutil.rmtree(store, ignore_errors=True)
                        results["p20_max_rss_mib"] = (
                            max_rss_kib([*cairn, "pull", "-q", "--insecure", ref], pull_env) // 1024
                        )
                finally:
                    if proxy is not None:
                        proxy.stop()
                results[f"{name}_cairn_s"] = statistics.median(cairn_s)
                results[f"{name}_skopeo_s"] = statistics.median(skopeo_s)
                results[f"{name}_ratio"] = results[f"{name}_cairn_s"] / results[f"{name}_skopeo_s"]
                results[f"{name}_most_streams"] = streams
                if baseline_s:
                    results[f"{name}_baseline_s"] = statistics.median(baseline_s)
                    results[f"{name}_baseline_ratio"] = (
                        results[f"{name}_baseline_s"] / results[f"{name}_skopeo_s"]
                    )
                    samples[f"{name}_baseline"] = baseline_s
                if rate:
                    ollama = ollama_seconds(size, rate, first_byte)
                    results[f"{name}_ollama_computed_s"] = ollama
                    results[f"{name}_ollama_ratio"] = ollama / results[f"{name}_skopeo_s"]
                samples[f"{name}_cairn"] = cairn_s
                samples[f"{name}_skopeo"] = skopeo_s
        finally:
            origin.stop()
    report("thin" if not args.only else f"thin_{args.only}", results, samples)


if __name__ == "__main__":
    main()
