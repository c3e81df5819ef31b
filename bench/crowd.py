"""A crowd against ``cairn registry serve`` and CNCF distribution: 64 clients for 60 s.

    python bench/crowd.py [--clients 64] [--seconds 60] [--every 50] [--processes 4]

Both registries hold the Gemma 3 270M model (cairn: the store it was
created in; distribution: pushed to it). ``--clients`` clients, spread over
``--processes`` client processes (asyncio + aiohttp, one keep-alive
connection each), loop for ``--seconds``: a manifest HEAD, and every
``--every``-th request a GET of the whole 253 MB model blob, read and
dropped. Bounded in time and count (``--most`` requests per client).

Reported per server: manifest HEADs per second, blob GETs, failed requests
(any answer but 200, or an error), and the server's RSS and open file
descriptors 10 s in and a second before the end (growth between them would
be a leak), and the descriptors once the crowd has gone. The servers run
one after the other, each alone on the machine. Nothing gates CI.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, REPO, gemma_store, report
from bench.registry import Registry
from tests.conftest import start_cairn_registry, stop

ACCEPT = {
    "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json"
}


def crowd(
    manifest: str, blob: str, clients: int, seconds: float, every: int, most: int
) -> dict[str, Any]:
    """One client process: ``clients`` connections looping until the time is up."""
    import aiohttp

    async def one(session: aiohttp.ClientSession, stop_at: float, tally: dict[str, Any]) -> None:
        for n in range(most):
            if time.monotonic() >= stop_at:
                return
            try:
                if n % every == every - 1:
                    async with session.get(blob) as answer:
                        async for _ in answer.content.iter_chunked(1 << 20):
                            pass
                        kind = "gets"
                else:
                    async with session.head(manifest, headers=ACCEPT) as answer:
                        kind = "heads"
                ok = answer.status == 200
            except (TimeoutError, aiohttp.ClientError) as exc:
                tally["errors"].append(repr(exc)[:200])
                continue
            if ok:
                tally[kind] += 1
            else:
                tally["errors"].append(f"{kind}: {answer.status}")

    async def run() -> dict[str, Any]:
        tally: dict[str, Any] = {"heads": 0, "gets": 0, "errors": []}
        stop_at = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(one(session, stop_at, tally) for _ in range(clients)))
        return tally

    return asyncio.run(run())


def resources(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def measure(pid: int, manifest: str, blob: str, args: argparse.Namespace) -> dict[str, float]:
    per = args.clients // args.processes
    job = (manifest, blob, per, args.seconds, args.every, args.most)
    sampled: dict[str, tuple[int, int]] = {"start": resources(pid)}

    def sample() -> None:  # 10 s in, and a second before the end, the crowd still on
        time.sleep(10)
        sampled["10s"] = resources(pid)
        time.sleep(max(0.0, args.seconds - 11))
        sampled["end"] = resources(pid)

    sampler = threading.Thread(target=sample)
    started = time.monotonic()
    sampler.start()
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        tallies = pool.starmap(crowd, [job] * args.processes)
    elapsed = time.monotonic() - started
    sampler.join()
    sampled["after"] = resources(pid)
    errors = [e for t in tallies for e in t["errors"]]
    if errors:
        print(f"  {len(errors)} failed, e.g. {errors[:3]}", file=sys.stderr)
    return {
        "heads_per_s": sum(t["heads"] for t in tallies) / elapsed,
        "blob_gets": sum(t["gets"] for t in tallies),
        "failed": len(errors),
        "rss_kib_10s": sampled["10s"][0],
        "rss_kib_end": sampled["end"][0],
        "fds_10s": sampled["10s"][1],
        "fds_end": sampled["end"][1],
        "fds_after": sampled["after"][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--most", type=int, default=1_000_000)
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        store, env, digest = gemma_store(work)
        cairn = [str(BIN / "cairn")]
        origin = Registry(work / "distribution")
        push = [*cairn, "push", "gemma3:270m", f"{origin.host}/library/gemma3:270m"]
        subprocess.run([*push, "--insecure", "-q"], env=env, check=True)
        served, proc = start_cairn_registry(store)
        try:
            hosts = {"cairn": (served, proc.pid), "distribution": (origin.host, origin.pid)}
            for name, (host, pid) in hosts.items():
                base = f"http://{host}/v2/library/gemma3"
                figures = measure(pid, f"{base}/manifests/270m", f"{base}/blobs/{digest}", args)
                results.update({f"{name}_{key}": value for key, value in figures.items()})
        finally:
            stop(proc)
            origin.stop()
    results["heads_ratio"] = results["cairn_heads_per_s"] / results["distribution_heads_per_s"]
    report("crowd", results)


if __name__ == "__main__":
    main()
