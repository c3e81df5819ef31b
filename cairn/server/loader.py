"""Loading models into runner processes for the scheduler, and generating (or embedding)
with them.

A runner speaks one request at a time, in a thread of its own (its pipes
block); text comes back to the event loop through a queue. A loaded model
is a pool of up to ``CAIRN_NUM_PARALLEL`` runners of the same weights (the
first started by the load, the others when that many requests come at
once; the weights are memory-mapped, so each more costs its KV cache, not
another copy): each request borrows one runner for its whole answer. A
request whose client went away stops its runner at once (the only way to
stop native code mid-token); that runner leaves the pool, the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cairn import threads
from cairn.errors import CairnError, RunnerError, RunnerRequestError
from cairn.runtime_plugins.runner import Runner
from cairn.runtime_plugins.runtime import Chunk, Embedding, ModelSpec
from cairn.server.scheduler import Want

LOAD_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap"})
"""The options a model is loaded with: another value of any of them means another load."""


@dataclass
class Loaded:
    """A model's runners: ``runners`` alive, of which ``idle`` wait for a request."""

    runner: Runner
    """The first (its runtime's name is the pool's)."""
    start: Any
    """Starts one more runner of the same load (blocking: call in a thread)."""
    most: int = 1
    runners: list[Runner] = field(default_factory=list)
    idle: list[Runner] = field(default_factory=list)
    starting: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    stopped: bool = False
    """Killed (the server is going): no request may use it any more."""

    def __post_init__(self) -> None:
        self.runners.append(self.runner)
        self.idle.append(self.runner)


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

        def start() -> Runner:
            runner = Runner(want.runtime, module=target.module)
            try:
                runner.load(target.spec, options)
            except BaseException:
                runner.stop()
                raise
            return runner

        first = await asyncio.to_thread(start)
        return Loaded(first, start, most=self.parallel)

    def __init__(self, parallel: int = 1) -> None:
        self.parallel = max(1, parallel)

    async def unload(self, loaded: Loaded) -> None:
        async with loaded.changed:
            runners, loaded.runners, loaded.idle = list(loaded.runners), [], []
        for runner in runners:
            await asyncio.to_thread(runner.close)

    async def kill(self, loaded: Loaded) -> None:
        """Stop the runners now, mid-answer if need be (the server is going)."""
        loaded.stopped = True
        for runner in list(loaded.runners):
            await asyncio.to_thread(runner.stop)


@contextlib.asynccontextmanager
async def borrowed(loaded: Loaded) -> AsyncIterator[Runner]:
    """One of the model's runners for one request: an idle one, a new one while the pool
    is under its size, else the first to come back. Given back when the request ends
    well; stopped and dropped when it did not (a client gone, a runner dead)."""
    runner: Runner | None = None
    async with loaded.changed:
        while runner is None:
            if loaded.stopped:
                raise RunnerError("the {runtime} runner was stopped", runtime=loaded.runner.runtime)
            if loaded.idle:
                runner = loaded.idle.pop()
            elif len(loaded.runners) + loaded.starting < loaded.most:
                loaded.starting += 1
                break
            else:
                await loaded.changed.wait()
    if runner is None:
        try:
            runner = await asyncio.to_thread(loaded.start)
        finally:
            async with loaded.changed:
                loaded.starting -= 1
                if runner is not None:
                    loaded.runners.append(runner)
                loaded.changed.notify_all()
    assert runner is not None
    well = False
    try:
        yield runner
        well = True
    except CairnError as exc:
        # What the runner said and lived through (a schema it cannot use, an input too
        # long) leaves it fit for the next request; a runner that died does not.
        well = not isinstance(exc, RunnerError) or isinstance(exc, RunnerRequestError)
        raise
    finally:
        if not well:
            await asyncio.shield(asyncio.to_thread(runner.stop))
        async with loaded.changed:
            if well and runner in loaded.runners and not loaded.stopped:
                loaded.idle.append(runner)
            elif runner in loaded.runners:
                loaded.runners.remove(runner)
            loaded.changed.notify_all()


async def generate(
    loaded: Loaded, prompt: str, options: Mapping[str, Any]
) -> AsyncGenerator[Chunk, None]:
    """A runner's chunks as they come; cancelled (a client gone), its runner is stopped."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()

    async with borrowed(loaded) as runner:

        def pump() -> None:
            try:
                for chunk in runner.generate(prompt, dict(options)):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            loop.call_soon_threadsafe(queue.put_nowait, None)

        threads.start(threading.Thread(target=pump, daemon=True))
        while (item := await queue.get()) is not None:
            if isinstance(item, (ValueError, OSError)):  # its pipes, closed under it
                raise RunnerError(
                    "the {runtime} runner stopped: {reason}",
                    runtime=runner.runtime,
                    reason=str(item),
                )
            if isinstance(item, BaseException):
                raise item
            yield item


async def embed(loaded: Loaded, texts: list[str], truncate: bool = True) -> list[Embedding]:
    """A runner's vectors for ``texts``; cancelled (a client gone), its runner is stopped."""
    async with borrowed(loaded) as runner:
        try:
            return await asyncio.to_thread(runner.embed, texts, truncate)
        except (ValueError, OSError) as exc:  # its pipes, closed under it
            raise RunnerError(
                "the {runtime} runner stopped: {reason}",
                runtime=runner.runtime,
                reason=str(exc),
            ) from None
