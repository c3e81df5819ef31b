"""The cost of the Korean interface: the same commands under LANG=ko_KR.UTF-8 and LANG=C.UTF-8.

    python bench/korean.py [--runs N]

- ``cairn list`` over 100 models (the catalog is read, headers and ages
  translated, columns padded by display width);
- ``cairn show nosuchmodel`` (an error: its template looked up and filled);
- ``cairn --help`` (click's own words and every command's help).

The peer is cairn itself in English, run interleaved in the same process
tree on the same store; the figure is the ratio of medians. Nothing here
gates CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BIN, REPO, report

CAIRN = str(BIN / "cairn")
COMMANDS = {"list_100_models": ["list"], "error": ["show", "nosuchmodel"], "help": ["--help"]}


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([CAIRN, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    from cairn.manifests.models import Models
    from tests.ggufmaker import write_gguf

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        store = work / "store"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
        base.update(CAIRN_MODELS=str(store), PYTHONPATH=str(REPO))
        english, korean = {**base, "LANG": "C.UTF-8"}, {**base, "LANG": "ko_KR.UTF-8"}
        (work / "Modelfile").write_text(f"FROM {write_gguf(work / 'tiny.gguf')}\n")
        subprocess.run(
            [CAIRN, "create", "tiny", "--quiet", "-f", str(work / "Modelfile")], env=base
        )
        models = Models(store)
        source = models.get("tiny")
        for i in range(99):
            models.tags.write(source.reference.with_tag(f"t{i}"), source.manifest.to_bytes())
        for name, command in COMMANDS.items():
            timed(command, english), timed(command, korean)  # warm the bytecode caches
            samples: dict[str, list[float]] = {"en": [], "ko": []}
            for _ in range(args.runs):
                samples["en"].append(timed(command, english))
                samples["ko"].append(timed(command, korean))
            en, ko = (statistics.median(samples[k]) for k in ("en", "ko"))
            results |= {f"{name}_en_s": en, f"{name}_ko_s": ko, f"{name}_ratio_ko_to_en": ko / en}
    report("korean", results)


if __name__ == "__main__":
    main()
