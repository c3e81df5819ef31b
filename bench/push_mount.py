"""A push of a model that is already in another repository of the same registry.

    python bench/push_mount.py [--runs N]

Gemma 3 270M (the real model, as an OCI artifact) is pushed once to
``HOST/x/gemma3`` on a local docker-registry, which puts its blobs in cairn's
blob-location cache. Then, interleaved, each run into a fresh repository:

- ``cairn push gemma3:270m HOST/y<N>/gemma3:270m``: mounts every blob from
  ``x/gemma3`` (``POST ?mount=&from=``) instead of uploading 253 MB;
- ``skopeo copy docker://HOST/x/gemma3:270m docker://HOST/z<N>/gemma3:270m``:
  skopeo, with its own blob-info cache, mounts them too.

A warm-up run of each comes first (untimed). Also timed, for scale:
``cairn push`` into a fresh repository with an empty cache (a full upload);
``cairn --version`` (the start of a cairn process: interpreter and imports);
and the same mounting push made in this process, once everything is
imported (what is left when process start is taken away).
Medians; ``os.sync()`` before each run. Nothing gates CI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, REPO, gemma_store, report, timed
from tests.conftest import start_registry, stop

SKOPEO_HTTP = ["--src-tls-verify=false", "--dest-tls-verify=false"]


def in_process(host: str, env: dict[str, str], repositories: list[str]) -> list[float]:
    """Seconds of each push of gemma3:270m to ``host/<repository>``, made here."""
    os.environ.update(env)
    from cairn.manifests.models import Models
    from cairn.manifests.reference import parse_reference
    from cairn.registry.clients import make_client
    from cairn.registry.push import push

    async def once(repository: str) -> None:
        dest = parse_reference(f"{host}/{repository}/gemma3:270m")
        async with make_client(dest, True) as client:
            await push(Models.from_environment(), "gemma3:270m", dest, client, "oci")

    times = []
    for repository in repositories:
        os.sync()
        start = time.perf_counter()
        asyncio.run(once(repository))
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    cairn = [str(BIN / "cairn")]
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        _, env, _ = gemma_store(work)
        (work / "registry").mkdir()
        host, proc = start_registry(work / "registry")
        try:
            source = f"{host}/x/gemma3:270m"

            def push(repository: str) -> list[str]:
                return [
                    *cairn,
                    "push",
                    "gemma3:270m",
                    f"{host}/{repository}/gemma3:270m",
                    "--insecure",
                    "--format",
                    "oci",
                    "-q",
                ]

            def copy(repository: str) -> list[str]:
                dest = f"docker://{host}/{repository}/gemma3:270m"
                return ["skopeo", "copy", "-q", *SKOPEO_HTTP, f"docker://{source}", dest]

            timed(push("x"), env)  # the first push: the cache learns where the blobs are
            timed(push("y-warm"), env)
            timed(copy("z-warm"), env)
            samples: dict[str, list[float]] = {"cairn": [], "skopeo": [], "upload": []}
            samples["start"] = []
            for run in range(args.runs):
                samples["cairn"].append(timed(push(f"y{run}"), env))
                samples["skopeo"].append(timed(copy(f"z{run}"), env))
                samples["start"].append(timed([*cairn, "--version"], env))
            samples["in_process"] = in_process(host, env, [f"p{n}" for n in range(args.runs)])
            for run in range(min(3, args.runs)):  # no cache: every blob uploaded
                fresh = {**env, "CAIRN_HOME": str(work / f"empty-home-{run}")}
                samples["upload"].append(timed(push(f"u{run}"), fresh))
        finally:
            stop(proc)
    results: dict[str, float | int] = {
        "mount_push_cairn_s": statistics.median(samples["cairn"]),
        "mount_push_skopeo_s": statistics.median(samples["skopeo"]),
    }
    results["mount_push_ratio"] = results["mount_push_cairn_s"] / results["mount_push_skopeo_s"]
    results["upload_push_cairn_s"] = statistics.median(samples["upload"])
    results["cairn_start_s"] = statistics.median(samples["start"])
    results["mount_push_in_process_s"] = statistics.median(samples["in_process"])
    report("push_mount", results, samples)


if __name__ == "__main__":
    main()
