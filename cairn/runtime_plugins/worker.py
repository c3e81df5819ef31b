"""The runner process: loads one model with one runtime and serves requests over a pipe.

Requests and answers are JSON lines. The protocol uses the process's
original stdout; fd 1 is pointed at stderr first, so whatever native code
prints cannot corrupt it. Run as ``python -m cairn.runtime_plugins.worker``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from cairn.runtime_plugins.runtime import Runtime


def _find(name: str, model_format: str, module: str | None) -> Runtime:
    """The runtime ``name``: from the plugin module the parent named, else by discovery."""
    if module:
        import importlib

        found: list[Runtime] = []
        register = getattr(importlib.import_module(module), "register_runtimes", None)
        if callable(register):
            register(register=found.append)
            for runtime in found:
                if runtime.name == name:
                    return runtime
    from cairn.runtime_plugins.manager import plugins

    return plugins().choose(model_format, name).runtime


def _serve(requests: TextIO, answers: TextIO, module: str | None) -> None:
    from cairn.runtime_plugins.runtime import LoadedModel, ModelSpec

    def send(message: dict[str, Any]) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    model: LoadedModel | None = None
    for line in requests:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "load":
                started = time.perf_counter()
                runtime = _find(request["runtime"], request["format"], module)
                spec = request["model"]
                model = runtime.load(
                    ModelSpec(
                        Path(spec["weights"]),
                        spec.get("format", "gguf"),
                        tuple(Path(p) for p in spec.get("adapters", [])),
                    ),
                    request.get("options", {}),
                )
                send({"event": "loaded", "seconds": time.perf_counter() - started})
            elif op == "generate":
                assert model is not None, "load first"
                for chunk in model.generate(request["prompt"], request.get("options", {})):
                    if chunk.done:
                        send({"event": "done", "stats": dict(chunk.stats)})
                    else:
                        send({"event": "chunk", "text": chunk.text})
            elif op == "embed":
                assert model is not None, "load first"
                found = model.embed(request["texts"], bool(request.get("truncate", True)))
                vectors, tokens = [e.vector for e in found], [e.tokens for e in found]
                send({"event": "embeddings", "vectors": vectors, "tokens": tokens})
            else:
                send({"event": "error", "message": f"unknown request {op!r}"})
        except Exception as exc:  # reported to the parent, which raises
            import traceback

            traceback.print_exc()
            from cairn.errors import CairnError

            if isinstance(exc, CairnError):  # the parent can still say it in the user's language
                phrase = exc.message.to_json()
                kind = type(exc).__name__
                send({"event": "error", "message": str(exc), "phrase": phrase, "kind": kind})
            else:
                send({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
    if model is not None:
        model.close()


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # native code printing to stdout lands on stderr
    sys.stdout = sys.stderr
    module = sys.argv[1] if len(sys.argv) > 1 else None
    _serve(sys.stdin, answers, module)


if __name__ == "__main__":
    main()
