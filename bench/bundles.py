"""Bundles (issue 11): ``cairn export`` then ``cairn import``, against tar, zstd, cp and hashlib.

    python bench/bundles.py [--runs N]

- ``.tar.zst``: ``cairn export gemma3:270m -o B.tar.zst`` plus ``cairn import B.tar.zst``
  into an empty store, against ``tar -I 'zstd -T0' -cf`` of the same blob files plus
  ``tar -I 'zstd -T0' -xf`` plus a hashlib check of every extracted file.
- a directory: ``cairn export -o DIR`` plus ``cairn import DIR``, against ``cp -r`` of
  the blob files plus a hashlib check of every copied file.
- the compression zstd gets on a quantized GGUF, at levels 1, 3 and 9.

Each figure is the median of N runs of the whole sequence; ``os.sync()`` runs before
every step (``timed``), so no step pays for the last one's write-back. cairn fsyncs
what it writes (a bundle, a layout's blobs, every blob into the store); the peers
write without fsync, so each ratio is also given against the same peers followed by
``sync`` (``*_durable``). Nothing here gates CI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, gemma_store, report, timed

CAIRN = str(BIN / "cairn")
ZSTD = "zstd -T0"

HASH_EVERY_FILE = r"""
import hashlib, os, sys
for root, _, names in os.walk(sys.argv[1]):
    for name in names:
        path = os.path.join(root, name)
        hasher = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            while count := f.readinto(buffer):
                hasher.update(view[:count])
        expected = name.removeprefix("sha256-")
        if hasher.hexdigest() != expected:
            sys.exit(f"{path}: wrong digest")
"""


def model_blobs(store: Path) -> list[str]:
    """The blob files of gemma3:270m, relative to the store."""
    manifest = json.loads((store / "manifests/registry.ollama.ai/library/gemma3/270m").read_bytes())
    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    return [f"blobs/{digest.replace(':', '-')}" for digest in digests]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cairn-bench-bundles-") as tmp:
        work = Path(tmp)
        store, env, _ = gemma_store(work)
        files = model_blobs(store)
        total = sum((store / f).stat().st_size for f in files)
        samples: dict[str, list[float]] = {
            "cairn_zst": [],
            "peer_zst": [],
            "cairn_dir": [],
            "peer_dir": [],
            "peer_zst_durable": [],
            "peer_dir_durable": [],
        }
        for _ in range(args.runs):
            for path in ("b.tar.zst", "peer.tar.zst", "dir", "peer-out", "peer-dir", "into"):
                target = work / path
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            into = {**env, "CAIRN_MODELS": str(work / "into")}
            bundle = str(work / "b.tar.zst")
            samples["cairn_zst"].append(
                timed([CAIRN, "export", "gemma3:270m", "-o", bundle, "-q"], env)
                + timed([CAIRN, "import", bundle, "-q"], into)
            )
            (work / "peer-out").mkdir()
            peer = str(work / "peer.tar.zst")
            samples["peer_zst"].append(
                timed(["tar", "-I", ZSTD, "-cf", peer, "-C", str(store), *files])
                + timed(["tar", "-I", ZSTD, "-xf", peer, "-C", str(work / "peer-out")])
                + timed([sys.executable, "-c", HASH_EVERY_FILE, str(work / "peer-out")])
            )
            shutil.rmtree(work / "peer-out")
            (work / "peer-out").mkdir()
            samples["peer_zst_durable"].append(
                timed(
                    [
                        "sh",
                        "-c",
                        f"tar -I '{ZSTD}' -cf {peer}.2 -C {store} {' '.join(files)} && sync",
                    ]
                )
                + timed(
                    ["sh", "-c", f"tar -I '{ZSTD}' -xf {peer}.2 -C {work / 'peer-out'} && sync"]
                )
                + timed([sys.executable, "-c", HASH_EVERY_FILE, str(work / "peer-out")])
            )
            Path(f"{peer}.2").unlink()
            shutil.rmtree(work / "into")
            layout = str(work / "dir")
            samples["cairn_dir"].append(
                timed([CAIRN, "export", "gemma3:270m", "-o", layout, "-q"], env)
                + timed([CAIRN, "import", layout, "-q"], into)
            )
            (work / "peer-dir").mkdir()
            samples["peer_dir"].append(
                timed(["cp", "-r", *(str(store / f) for f in files), str(work / "peer-dir")])
                + timed([sys.executable, "-c", HASH_EVERY_FILE, str(work / "peer-dir")])
            )
            shutil.rmtree(work / "peer-dir")
            (work / "peer-dir").mkdir()
            copied = " ".join(str(store / f) for f in files)
            samples["peer_dir_durable"].append(
                timed(["sh", "-c", f"cp -r {copied} {work / 'peer-dir'} && sync"])
                + timed([sys.executable, "-c", HASH_EVERY_FILE, str(work / "peer-dir")])
            )
        results: dict[str, float | int] = {
            key: statistics.median(values) for key, values in samples.items()
        }
        results["ratio_zst"] = results["cairn_zst"] / results["peer_zst"]
        results["ratio_dir"] = results["cairn_dir"] / results["peer_dir"]
        # Peers whose writes reach the disk before they are done, as cairn's do (fsync).
        results["ratio_zst_durable"] = results["cairn_zst"] / results["peer_zst_durable"]
        results["ratio_dir_durable"] = results["cairn_dir"] / results["peer_dir_durable"]
        results["model_bytes"] = total
        for level in (1, 3, 9):
            target = work / f"level{level}.tar.zst"
            level_args = ["export", "gemma3:270m", "-o", str(target), "--level", str(level), "-q"]
            results[f"export_s_level{level}"] = timed([CAIRN, *level_args], env)
            results[f"compressed_percent_level{level}"] = round(
                100 * target.stat().st_size / total, 1
            )
        report("bundles", results, samples)


if __name__ == "__main__":
    main()
