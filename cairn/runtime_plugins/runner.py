"""Running a model in a separate process, so native crashes are errors, not deaths.

The parent starts ``python -m cairn.runtime_plugins.worker`` in a session
of its own (so a terminal's Ctrl-C reaches the parent only, which then
stops the runner), talks JSON lines over its stdin/stdout, and keeps the
last lines of its stderr. When the runner dies — SIGSEGV in llama.cpp, the
kernel's OOM killer — the parent raises :class:`RunnerError` with the
signal and those lines, and carries on.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from cairn import threads

# Only what starting the process needs is imported up front: the rest loads
# while the runner boots, on the other core (see Runner.__init__).
if TYPE_CHECKING:
    from cairn.runtime_plugins.runtime import Chunk, Embedding, ModelSpec

TAIL_LINES = 20


class Runner:
    """One runner process holding one loaded model."""

    def __init__(self, runtime: str, model_format: str = "gguf", module: str | None = None) -> None:
        """Start a runner for ``runtime``; ``module`` is its plugin's module when known,
        so the runner imports just that instead of discovering every plugin."""
        self.runtime = runtime
        self.format = model_format
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cairn.runtime_plugins.worker", *([module] if module else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._stderr = threads.start(
            threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True)
        )

    def _drain(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            self.tail.append(line.rstrip("\n"))

    def _send(self, message: Mapping[str, Any]) -> None:
        import json

        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died()

    def _receive(self) -> dict[str, Any]:
        import json

        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self._died()
        message: dict[str, Any] = json.loads(line)
        if message.get("event") == "error":  # the runner caught it and lives on
            from cairn.i18n import Phrase

            phrase = message.get("phrase")
            detail = Phrase.from_json(phrase) if phrase else message.get("message")
            from cairn.errors import ConfigError, InputTooLongError, RunnerRequestError

            asked_wrong = {"InputTooLongError": InputTooLongError, "ConfigError": ConfigError}
            kind = asked_wrong.get(str(message.get("kind")))
            if kind is not None and detail:  # the request's fault: told as such
                raise kind(detail)
            raise RunnerRequestError("{runtime}: {detail}", runtime=self.runtime, detail=detail)
        return message

    def _last_lines(self) -> str:
        self._stderr.join(timeout=1)
        lines = [line for line in self.tail if line.strip()][-5:]
        if not lines:
            return ""
        from cairn.i18n import Phrase

        return Phrase(" | last output: {lines}", lines=" / ".join(lines))

    def _died(self) -> None:
        from cairn.errors import RunnerError
        from cairn.i18n import Phrase

        code = self.proc.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = Phrase(
                "was killed by {name} (out of memory, or killed)"
                if -code == signal.SIGKILL
                else "was killed by {name}",
                name=name,
            )
        else:
            how = Phrase("exited with status {code}", code=code)
        raise RunnerError(
            "the {runtime} runner {how}{tail}",
            runtime=self.runtime,
            how=how,
            tail=self._last_lines(),
        )

    def load(self, model: ModelSpec, options: Mapping[str, Any]) -> float:
        """Load the model; the seconds it took."""
        self._send(
            {
                "op": "load",
                "runtime": self.runtime,
                "format": self.format,
                "model": {
                    "weights": str(model.weights),
                    "format": model.format,
                    "adapters": [str(p) for p in model.adapters],
                },
                "options": dict(options),
            }
        )
        seconds: float = self._receive()["seconds"]
        return seconds

    def generate(self, prompt: str, options: Mapping[str, Any]) -> Iterator[Chunk]:
        from cairn.runtime_plugins.runtime import Chunk

        self._send({"op": "generate", "prompt": prompt, "options": dict(options)})
        while True:
            message = self._receive()
            if message["event"] == "done":
                yield Chunk(done=True, stats=message.get("stats", {}))
                return
            yield Chunk(message.get("text", ""))

    def embed(self, texts: list[str], truncate: bool = True) -> list[Embedding]:
        """One vector per text (not normalised) and the tokens each took; a text longer
        than the context is cut, or with ``truncate`` false refused (InputTooLongError)."""
        from cairn.runtime_plugins.runtime import Embedding

        self._send({"op": "embed", "texts": texts, "truncate": truncate})
        answer = self._receive()
        return [Embedding(v, t) for v, t in zip(answer["vectors"], answer["tokens"], strict=True)]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """End the runner, at once (also mid-generation)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def close(self) -> None:
        """End the runner politely: it frees the model and exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.stop()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.stop()
