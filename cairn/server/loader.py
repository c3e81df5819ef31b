"""Loading models into runner processes for the scheduler, and generating (or embedding)
with them.

A runner speaks one request at a time, in a thread of its own (its pipes
block); text comes back to the event loop through a queue. A request whose
client went away stops its runner at once (the only way to stop native code
mid-token), and the scheduler loads the model afresh for the next one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cairn import threads
from cairn.errors import RunnerError
from cairn.runtime_plugins.runner import Runner
from cairn.runtime_plugins.runtime import Chunk, Embedding, ModelSpec
from cairn.server.scheduler import Want

LOAD_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap"})
"""The options a model is loaded with: another value of any of them means another load."""


@dataclass
class Loaded:
    runner: Runner
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stopped: bool = False
    """Killed mid-answer (its client went away): no request may use it any more."""


@dataclass(frozen=True)
class Target:
    """What the loader needs beyond the :class:`Want`: where the weights are, and the
    runtime's plugin module. Not part of a load's identity beyond what ``Want`` holds."""

    spec: ModelSpec
    module: str | None


class RunnerLoader:
    def want(
        self,
        model: str,
        runtime: str,
        module: str | None,
        spec: ModelSpec,
        options: Mapping[str, Any],
        size: int,
        gpu_size: int = 0,
    ) -> Want:
        load = {k: v for k, v in options.items() if k in LOAD_OPTIONS}
        load["weights"] = str(spec.weights)
        return Want.of(model, runtime, load, size, Target(spec, module), gpu_size)

    async def load(self, want: Want) -> Loaded:
        target: Target = want.target
        options = {k: v for k, v in want.options if k in LOAD_OPTIONS}

        def start() -> Loaded:
            runner = Runner(want.runtime, module=target.module)
            try:
                runner.load(target.spec, options)
            except BaseException:
                runner.stop()
                raise
            return Loaded(runner)

        return await asyncio.to_thread(start)

    async def unload(self, loaded: Loaded) -> None:
        await asyncio.to_thread(loaded.runner.close)

    async def kill(self, loaded: Loaded) -> None:
        """Stop the runner now, mid-answer if need be (the server is going)."""
        loaded.stopped = True
        await asyncio.to_thread(loaded.runner.stop)


async def generate(
    loaded: Loaded, prompt: str, options: Mapping[str, Any]
) -> AsyncGenerator[Chunk, None]:
    """The runner's chunks as they come; cancelled (a client gone), the runner is stopped."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for chunk in loaded.runner.generate(prompt, dict(options)):
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
        except BaseException as exc:
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    async with loaded.lock:
        if loaded.stopped:
            raise RunnerError("the {runtime} runner was stopped", runtime=loaded.runner.runtime)
        threads.start(threading.Thread(target=pump, daemon=True))
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, (ValueError, OSError)):  # its pipes, closed under it
                    raise RunnerError(
                        "the {runtime} runner stopped: {reason}",
                        runtime=loaded.runner.runtime,
                        reason=str(item),
                    )
                if isinstance(item, BaseException):
                    raise item
                yield item
        except (asyncio.CancelledError, GeneratorExit):
            loaded.stopped = True
            await asyncio.to_thread(loaded.runner.stop)
            raise


async def embed(loaded: Loaded, texts: list[str], truncate: bool = True) -> list[Embedding]:
    """The runner's vectors for ``texts``; cancelled (a client gone), the runner is stopped."""
    async with loaded.lock:
        if loaded.stopped:
            raise RunnerError("the {runtime} runner was stopped", runtime=loaded.runner.runtime)
        try:
            return await asyncio.to_thread(loaded.runner.embed, texts, truncate)
        except (ValueError, OSError) as exc:  # its pipes, closed under it
            raise RunnerError(
                "the {runtime} runner stopped: {reason}",
                runtime=loaded.runner.runtime,
                reason=str(exc),
            ) from None
        except asyncio.CancelledError:
            loaded.stopped = True
            await asyncio.to_thread(loaded.runner.stop)  # its thread then ends too
            raise
