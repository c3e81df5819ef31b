"""The CLI's own cost (issue 15): `--help`, `list` of 100 models, a failing `show`.

    python bench/cli.py [--runs N] [--baseline PATH]

Each command runs as a whole process (Python's start-up, imports, click)
against a store of 100 models (one tiny model created, 99 copies by
`cairn cp`). With ``--baseline PATH`` (a checkout of older code) the same
commands run from it too, interleaved, for a before-and-after in the same
run: the issue asks for no slowdown. Both trees are compiled to bytecode
first, as an installed cairn is. Medians. Nothing gates CI.
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

COMMANDS = {
    "help": ["--help"],
    "list_100": ["list"],
    "show_missing": ["show", "nosuchmodel"],
}


def seconds(command: list[str], env: dict[str, str]) -> float:
    """Seconds ``command`` takes as a whole process, failing or not (a failing show is one of
    the benchmarks)."""
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", type=Path, help="a checkout of older code to compare")
    args = parser.parse_args()
    from tests.ggufmaker import write_gguf

    cairn = [str(BIN / "cairn")]
    results: dict[str, float | int] = {}
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as directory:
        work = Path(directory)
        env = {**os.environ, "CAIRN_MODELS": str(work / "store"), "CAIRN_HOME": str(work / "h")}
        env.pop("CAIRN_DEBUG", None)
        gguf = write_gguf(work / "tiny.gguf", fill=b"tiny")
        (work / "Modelfile").write_text(f"FROM {gguf}\n")
        make = [*cairn, "create", "tiny:0", "--quiet", "-f", str(work / "Modelfile")]
        subprocess.run(make, env=env, check=True)
        for number in range(1, 100):
            subprocess.run([*cairn, "cp", "tiny:0", f"tiny:{number}"], env=env, check=True)
        sides = {"after": env}
        trees = [REPO / "cairn"]
        if args.baseline is not None:
            sides["before"] = {**env, "PYTHONPATH": str(args.baseline)}
            trees.append(args.baseline / "cairn")
        # Both sides start from bytecode, as an installed cairn does: with
        # PYTHONDONTWRITEBYTECODE set (as on the project's VM), a tree without
        # fresh .pyc files would be compiled again on every run of every command.
        compile_all = [sys.executable, "-m", "compileall", "-q", *map(str, trees)]
        subprocess.run(compile_all, check=True, stdout=subprocess.DEVNULL)
        for _ in range(args.runs):
            for name, words in COMMANDS.items():
                for side, side_env in sides.items():
                    took = seconds([*cairn, *words], side_env)
                    samples.setdefault(f"{name}_{side}", []).append(took)
    for key, values in samples.items():
        results[f"{key}_s"] = statistics.median(values)
    report("cli", results, samples)


if __name__ == "__main__":
    main()
