"""Runs models through llama.cpp's ``llama-server`` (entry point ``llama-server``).

The runner starts ``llama-server`` on a free loopback port for the model,
waits for ``/health``, and streams ``/completion`` (server-sent events).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from cairn.errors import RunnerError
from cairn.runtime_plugins.devices import default_threads
from cairn.runtime_plugins.hookspecs import hookimpl
from cairn.runtime_plugins.runtime import Availability, Chunk, LoadedModel, ModelSpec, Runtime

_REQUEST = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "num_keep": "n_keep",
}


def executable() -> str | None:
    configured = os.environ.get("CAIRN_LLAMA_SERVER")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("llama-server")


class LlamaServerRuntime(Runtime):
    name = "llama-server"
    devices = ("cpu",)
    formats = ("gguf",)
    priority = 5

    def availability(self) -> Availability:
        found = executable()
        if found is None:
            where = os.environ.get("CAIRN_LLAMA_SERVER")
            why = f"{where} is not an executable" if where else "no llama-server on PATH"
            return Availability(False, f"{why} (set CAIRN_LLAMA_SERVER)")
        return Availability(True, "", ("cpu",))

    def load(self, model: ModelSpec, options: Mapping[str, Any]) -> LoadedModel:
        return LlamaServerModel(model, options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServerModel(LoadedModel):
    def __init__(self, model: ModelSpec, options: Mapping[str, Any]) -> None:
        binary = executable()
        if binary is None:
            raise RunnerError("llama-server is not available")
        started = time.perf_counter()
        self.port = _free_port()
        command = [
            binary,
            "-m",
            str(model.weights),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-c",
            str(int(options.get("num_ctx", 4096))),
            "-t",
            str(int(options.get("num_thread", default_threads()))),
            "-tb",
            str(int(options.get("num_thread", default_threads()))),
            "-b",
            str(int(options.get("num_batch", 512))),
            "-ngl",
            str(int(options.get("num_gpu", 0))),
            "--parallel",
            "1",
        ]
        for adapter in model.adapters:
            command += ["--lora", str(adapter)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                tail = (self.proc.stderr.read() if self.proc.stderr else b"").decode(
                    errors="replace"
                )
                raise RunnerError(f"llama-server exited ({self.proc.returncode}): {tail[-500:]}")
            try:
                status, _ = self._get("/health")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RunnerError("llama-server did not become ready in 300 s")
            time.sleep(0.05)
        self.load_seconds = time.perf_counter() - started

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def generate(self, prompt: str, options: Mapping[str, Any]) -> Iterator[Chunk]:
        body: dict[str, Any] = {
            theirs: options[ours] for ours, theirs in _REQUEST.items() if ours in options
        }
        body.update(
            prompt=prompt,
            stream=True,
            cache_prompt=True,
            n_predict=int(options.get("num_predict", -1)),
        )
        stop = options.get("stop")
        if stop:
            body["stop"] = list(stop) if isinstance(stop, list | tuple) else [stop]
        if options.get("format") == "json":
            body["json_schema"] = {}  # any JSON value
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        started = time.perf_counter()
        timings: dict[str, Any] = {}
        try:
            conn.request(
                "POST",
                "/completion",
                body=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            if response.status != 200:
                raise RunnerError(
                    f"llama-server answered {response.status}: {response.read()[:300]!r}"
                )
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("content"):
                    yield Chunk(event["content"])
                if event.get("stop"):
                    timings = event.get("timings", {})
                    break
        finally:
            conn.close()
        first_token = timings.get("prompt_ms", 0.0) / 1000
        yield Chunk(
            done=True,
            stats={
                "load_duration": self.load_seconds,
                "prompt_eval_count": timings.get("prompt_n", 0),
                "prompt_eval_duration": first_token or (time.perf_counter() - started),
                "eval_count": timings.get("predicted_n", 0),
                "eval_duration": timings.get("predicted_ms", 0.0) / 1000,
            },
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@hookimpl
def register_runtimes(register: Callable[[Runtime], None]) -> None:
    register(LlamaServerRuntime())
