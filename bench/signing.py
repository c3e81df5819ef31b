"""Signed models (issue 13): cairn against the reference implementation, and the policy's cost.

    python bench/signing.py [--runs N]

Three ratios, each of whole processes run alternately on the same data (the real
Gemma 3 270M, 253 MB), medians:

- ``verify``: ``cairn verify gemma3:270m --key PUB`` against ``model_signing verify key``
  of the same files (hard links to the store's blobs, named as the signature names
  them): cairn reads the digests from the manifest, the reference hashes the files.
- ``sign``: ``cairn sign --key`` against ``model_signing sign key`` of the same files.
- ``pull``: ``cairn pull`` from a local docker-registry into an empty store with a
  ``signedBy`` policy in force against the same pull with ``accept``.

The targets are 0.5, 0.5 and 1.05. Nothing gates CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, REPO, gemma_store, report


def keys(work: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = work / "team.pem", work / "team.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def lay_out(store: Path, folder: Path) -> None:
    """The model's files under the names its signature gives them: hard links, no copy."""
    from cairn.manifests.models import Models
    from cairn.signing.check import files_of

    models = Models(store)
    model = models.get("gemma3:270m")
    for name, layer in files_of(model):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(models.blobs.path(layer.digest), target)


def seconds(command: list[str], env: dict[str, str]) -> float:
    os.sync()
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def registry(work: Path) -> tuple[str, subprocess.Popen[bytes]]:
    from tests.conftest import start_registry

    root = work / "registry"
    root.mkdir()
    return start_registry(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cairn = str(BIN / "cairn")
    reference = str(BIN / "model_signing")
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        store, env, _ = gemma_store(work)
        private, public = keys(work)
        files = work / "files"
        lay_out(store, files)
        signature = work / "model.sig"
        ours_sign = [cairn, "sign", "gemma3:270m", "--key", str(private)]
        theirs_sign = [reference, "sign", "key", "--private_key", str(private)]
        theirs_sign += ["--signature", str(signature), str(files)]
        ours_verify = [cairn, "verify", "gemma3:270m", "--key", str(public)]
        theirs_verify = [reference, "verify", "key", "--public_key", str(public)]
        theirs_verify += ["--signature", str(signature), str(files)]
        for _ in range(args.runs):
            samples.setdefault("sign_cairn", []).append(seconds(ours_sign, env))
            samples.setdefault("sign_model_signing", []).append(seconds(theirs_sign, env))
        for _ in range(args.runs):
            samples.setdefault("verify_cairn", []).append(seconds(ours_verify, env))
            samples.setdefault("verify_model_signing", []).append(seconds(theirs_verify, env))

        host, proc = registry(work)
        try:
            name = f"{host}/lab/gemma3:270m"
            push = [cairn, "push", "--insecure", "gemma3:270m", name]
            subprocess.run(push, env=env, check=True, stdout=subprocess.DEVNULL)
            policies = {
                "pull_accept": {"default": [{"type": "accept"}]},
                "pull_signed_by": {"default": [{"type": "signedBy", "keyPath": str(public)}]},
            }
            for _ in range(args.runs):
                for label, policy in policies.items():
                    home = work / f"home-{label}"
                    fresh = work / f"store-{label}"
                    shutil.rmtree(fresh, ignore_errors=True)
                    home.mkdir(exist_ok=True)
                    (home / "policy.json").write_text(json.dumps(policy))
                    side = {**env, "CAIRN_MODELS": str(fresh), "CAIRN_HOME": str(home)}
                    pull = [cairn, "pull", "--insecure", name]
                    samples.setdefault(label, []).append(seconds(pull, side))
        finally:
            from tests.conftest import stop

            stop(proc)
    median = {key: statistics.median(values) for key, values in samples.items()}
    results: dict[str, float | int] = {f"{k}_s": v for k, v in median.items()}
    results["sign_ratio"] = median["sign_cairn"] / median["sign_model_signing"]
    results["verify_ratio"] = median["verify_cairn"] / median["verify_model_signing"]
    results["pull_ratio"] = median["pull_signed_by"] / median["pull_accept"]
    results["runs"] = args.runs
    report("signing", results, samples)


if __name__ == "__main__":
    main()
