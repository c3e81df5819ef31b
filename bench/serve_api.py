"""Benchmark of ``cairn serve`` against llama-cpp-python called directly, same process tree.

    python bench/serve_api.py [--runs N] [--tokens 64] [--clients 8] [--seconds 5]

Both sides load the real Gemma 3 270M (the same file: the store's blob) with
the same context and threads and
stream the same prompt at temperature 0 (cairn: ``/api/generate``, ``raw``,
streamed NDJSON read by httpx; direct: ``Llama.create_completion(stream=True)``,
as llama-cpp-python's users call it, and its bare token loop, ``generate`` and
``detokenize``, the least Python a decode can cost; each in a process of its
own, every prompt evaluated whole as cairn's runtime does):
- time to first token once the model is loaded; ``ttft_added_ms`` is cairn's
  minus direct's;
- decode tokens/s as the client sees it: the tokens between a short answer
  (a quarter of ``--tokens``) and a long one over the time between their
  last chunks (so the first chunks' latency, and any batching of lines on
  the way, cancels out);
- 8 clients at once (different prompts, same length): the tokens all of them
  got per second of wall time, against the direct sequential rate (tokens
  of one request over its whole time, prompt included);
- with ``--parallel N`` (``CAIRN_NUM_PARALLEL``) the clients are answered by
  up to N runners at once; ``--runtime`` picks cairn's runtime
  (``CAIRN_RUNTIME``: ``llama-server`` with the plugin installed);
- ``cairn serve``'s resident memory, idle with no model loaded;
- requests per second of ``GET /api/tags`` and ``POST /api/show`` with 8
  clients polling at once (the calls tools poll).
Medians of interleaved runs. Nothing gates CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx

from bench.common import BIN, gemma_store, report
from tests.conftest import free_port, stop

PROMPTS = [
    "Here is a long story about a lighthouse keeper and the sea:",
    "Here is a long story about a baker and her village:",
    "Here is a long story about a miner and the mountain:",
    "Here is a long story about a sailor and the storm:",
    "Here is a long story about a teacher and her school:",
    "Here is a long story about a farmer and the river:",
    "Here is a long story about a painter and the city:",
    "Here is a long story about a doctor and the island:",
]

DIRECT = r"""
import json, sys, time
from llama_cpp import Llama
counts, threads, runs = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
prompt, mode, weights = sys.argv[4], sys.argv[5], sys.argv[6]
llm = Llama(model_path=weights, n_ctx=512, n_threads=threads, n_threads_batch=threads,
            n_batch=512, seed=1, n_gpu_layers=0, verbose=False)
for tokens in [int(c) for c in counts for _ in range(runs)]:
    llm.reset()
    asked = time.perf_counter()
    first = last = None
    count = 0
    if mode == "completion":  # as llama-cpp-python's users call it
        parts = (p["choices"][0]["text"] for p in llm.create_completion(
            prompt, max_tokens=tokens, temperature=0.0, seed=1, stream=True))
    else:  # the bare token loop: the least Python a decode can cost
        def loop():
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            for n, token in enumerate(llm.generate(ids, temp=0.0)):
                if n >= tokens or token == llm.token_eos():
                    return
                yield llm.detokenize([token]).decode(errors="ignore") or " "
        parts = loop()
    for text in parts:
        now = time.perf_counter()
        if text:
            first = first or now
            last = now
            count += 1
    print(json.dumps({"asked": tokens, "ttft": first - asked, "tokens": count,
                      "whole": last - asked}), flush=True)
"""


def cairn_stream(url: str, prompt: str, options: dict[str, Any]) -> dict[str, float]:
    body = {"model": "gemma3:270m", "prompt": prompt, "raw": True, "options": options}
    asked = time.perf_counter()
    first = last = 0.0
    pieces = 0
    final: dict[str, Any] = {}
    with httpx.stream("POST", url + "/api/generate", json=body, timeout=600) as answer:
        for line in answer.iter_lines():
            item = json.loads(line)
            now = time.perf_counter()
            if item.get("response"):
                first = first or now
                last = now
                pieces += 1
            if item.get("done"):
                final = item
    count = int(final.get("eval_count", pieces))
    return {
        "ttft": first - asked,
        "decode": (pieces - 1) / (last - first) if last > first else 0.0,
        "tokens": count,
        "whole": last - asked,
    }


def crowd(url: str, options: dict[str, Any], clients: int) -> float:
    """Tokens per second of wall time, ``clients`` generating at once."""
    counts = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def one(i: int) -> None:
        barrier.wait()
        counts[i] = int(cairn_stream(url, PROMPTS[i % len(PROMPTS)], options)["tokens"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def polled(url: str, method: str, path: str, body: Any, clients: int, seconds: float) -> float:
    """Requests per second that ``clients`` threads, each on its own connection, get."""
    done = [0] * clients
    stop_at = time.perf_counter() + seconds

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.perf_counter() < stop_at:
                answer = client.request(method, path, json=body)
                assert answer.status_code == 200, answer.text
                done[i] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--name", default="serve_api")
    parser.add_argument("--parallel", type=int, default=1, help="CAIRN_NUM_PARALLEL")
    parser.add_argument("--runtime", help="CAIRN_RUNTIME for cairn serve (else the best)")
    args = parser.parse_args()
    from cairn.runtime_plugins.devices import default_threads

    threads = default_threads()
    options = {
        "temperature": 0,
        "seed": 1,
        "num_predict": args.tokens,
        "num_ctx": 512,
        "num_thread": threads,
    }
    with tempfile.TemporaryDirectory() as work:
        store, env, digest = gemma_store(Path(work))
        # The very file cairn serves: which file the weights are read from changes
        # llama.cpp's speed (here the same bytes decoded at 56 tokens/s from the store's
        # fresh blob and at 43 from the package's assembled copy in ~/.cache).
        weights = str(store / "blobs" / digest.replace(":", "-"))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**env, "CAIRN_HOST": f"127.0.0.1:{port}", "CAIRN_KEEP_ALIVE": "-1"}
        env["CAIRN_NUM_PARALLEL"] = str(args.parallel)
        if args.runtime:
            env["CAIRN_RUNTIME"] = args.runtime
        server = subprocess.Popen([str(BIN / "cairn"), "serve"], env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url).status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "cairn serve did not start"
                    time.sleep(0.05)
            httpx.get(url + "/api/tags")
            time.sleep(1)
            idle_rss = rss(server.pid)
            tags = polled(url, "GET", "/api/tags", None, args.clients, args.seconds)
            show = polled(
                url, "POST", "/api/show", {"model": "gemma3:270m"}, args.clients, args.seconds
            )
            httpx.post(  # loaded, with these options, before anything is timed
                url + "/api/generate",
                json={"model": "gemma3:270m", "prompt": "", "options": options},
                timeout=600,
            )
            ours: list[dict[str, float]] = []
            theirs: list[dict[str, float]] = []
            bare: list[dict[str, float]] = []

            short = max(4, args.tokens // 4)
            lengths = f"{short},{args.tokens}"

            def direct(mode: str) -> list[dict[str, float]]:
                command = [sys.executable, "-c", DIRECT, lengths, str(threads), "2"]
                out = subprocess.run(
                    [*command, PROMPTS[0], mode, weights],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.splitlines()
                runs = [json.loads(line) for line in out if line.startswith("{")]
                return [runs[1], runs[3]]  # each length's second run: loaded and warm

            for _ in range(args.runs):
                for length in (short, args.tokens):
                    ours.append(
                        {
                            **cairn_stream(url, PROMPTS[0], {**options, "num_predict": length}),
                            "asked": length,
                        }
                    )
                theirs += direct("completion")
                bare += direct("loop")
            together = [crowd(url, options, args.clients) for _ in range(max(1, args.runs // 2))]
        finally:
            stop(server)

    def median(side: list[dict[str, float]], key: str, asked: int | None = None) -> float:
        asked = args.tokens if asked is None else asked
        return statistics.median(s[key] for s in side if s["asked"] == asked)

    short = max(4, args.tokens // 4)

    def decode(side: list[dict[str, float]]) -> float:
        """Tokens per second between the short answer's end and the long one's, as the
        client sees them: whatever the first chunks' latency, it cancels out."""
        tokens = median(side, "tokens") - median(side, "tokens", short)
        return tokens / (median(side, "whole") - median(side, "whole", short))

    sequential = median(theirs, "tokens") / median(theirs, "whole")
    results = {
        "decode_cairn_tps": decode(ours),
        "decode_direct_tps": decode(theirs),
        "decode_ratio": decode(ours) / decode(theirs),
        "decode_loop_tps": decode(bare),
        "decode_ratio_loop": decode(ours) / decode(bare),
        "ttft_cairn_ms": median(ours, "ttft") * 1000,
        "ttft_direct_ms": median(theirs, "ttft") * 1000,
        "ttft_added_ms": (median(ours, "ttft") - median(theirs, "ttft")) * 1000,
        "ttft_loop_ms": median(bare, "ttft") * 1000,
        "ttft_added_loop_ms": (median(ours, "ttft") - median(bare, "ttft")) * 1000,
        "crowd_clients": args.clients,
        "num_parallel": args.parallel,
        "crowd_tps": statistics.median(together),
        "direct_sequential_tps": sequential,
        "crowd_ratio": statistics.median(together) / sequential,
        "idle_rss_mib": idle_rss / (1 << 20),
        "tags_rps": tags,
        "show_rps": show,
        "threads": threads,
        "cpus": os.cpu_count() or 0,
    }
    report(
        args.name,
        results,
        {
            "whole_cairn": [s["whole"] for s in ours if s["asked"] == args.tokens],
            "whole_direct": [s["whole"] for s in theirs if s["asked"] == args.tokens],
            "crowd_tps": together,
        },
    )


if __name__ == "__main__":
    main()
