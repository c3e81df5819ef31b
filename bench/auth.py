"""Authenticated manifest HEADs per second, ``cairn registry serve`` against CNCF distribution.

    python bench/auth.py [--seconds 5] [--clients 8] [--cost 10]

Both serve the same htpasswd file (one user, bcrypt at ``--cost``, 10 being
``htpasswd -B``'s default) and hold the same small manifest; ``--clients``
threads HEAD it with Basic credentials, each on its own keep-alive
connection, for ``--seconds``; the figure is requests answered 200 per
second. Interleaved runs, medians. Nothing gates CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import bcrypt
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, report
from tests.conftest import start_cairn_registry, start_registry, stop

USER, PASSWORD = "bench", "a long enough password"


def seed(host: str) -> str:
    """Push a config blob and a manifest naming it; return the manifest's URL."""
    auth = (USER, PASSWORD)
    config = b"{}"
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    with httpx.Client(base_url=f"http://{host}", auth=auth) as http:
        started = http.post("/v2/bench/m/blobs/uploads/")
        location = started.headers["Location"]
        joined = "&" if "?" in location else "?"  # keep distribution's _state
        done = http.put(f"{location}{joined}digest={digest}", content=config)
        assert done.status_code == 201, done.text
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest,
                    "size": len(config),
                },
                "layers": [],
            }
        ).encode()
        put = http.put(
            "/v2/bench/m/manifests/v1",
            content=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert put.status_code == 201, put.text
    return f"http://{host}/v2/bench/m/manifests/v1"


def heads_per_second(url: str, clients: int, seconds: float) -> float:
    counts = [0] * clients
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}  # distribution wants it
        with httpx.Client(auth=(USER, PASSWORD), timeout=60, headers=accept) as http:
            while time.monotonic() < stop_at:
                if http.head(url).status_code == 200:
                    counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cost", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"cairn": [], "distribution": []}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        htpasswd = work / "htpasswd"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=args.cost)).decode()
        htpasswd.write_text(f"{USER}:{hashed}\n")
        (work / "distribution").mkdir()
        dist_host, dist = start_registry(work / "distribution", htpasswd)
        cairn_host, cairn = start_cairn_registry(work / "cairn", "--htpasswd", str(htpasswd))
        try:
            urls = {"cairn": seed(cairn_host), "distribution": seed(dist_host)}
            for _ in range(args.runs):
                for name, url in urls.items():
                    samples[name].append(heads_per_second(url, args.clients, args.seconds))
        finally:
            stop(cairn)
            stop(dist)
    results = {f"{name}_heads_per_s": statistics.median(v) for name, v in samples.items()}
    results["ratio"] = results["cairn_heads_per_s"] / results["distribution_heads_per_s"]
    report("auth", results, samples)


if __name__ == "__main__":
    main()
