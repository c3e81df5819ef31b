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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cairn import threads
from cairn.errors import CairnError, RunnerError, RunnerRequestError
from cairn.runtime_plugins.runner import Runner
from cairn.runtime_plugins.runtime import Chunk, Embedding, ModelSpec
from cairn.server.scheduler import Want

LOAD_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap"})
"""The options a model is loaded with: another value of any of them means another load."""


class Pooled(Protocol):
    """What the pool needs of a runner."""

    runtime: str

    def alive(self) -> bool: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Loaded:
    """A model's runners: ``runners`` alive, of which ``idle`` wait for a request.

    Every change to the pool happens with no ``await`` between reading it and
    writing it, so a request cancelled twice over (its client gone, then the
    server's own cancellation) can never leave it half changed; a runner's
    start and stop go on in tasks of their own whatever befalls the request
    that began them.
    """

    runner: Any
    """The first (its runtime's name is the pool's)."""
    start: Callable[[], Any]
    """Starts one more runner of the same load (blocking: called in a thread)."""
    most: int = 1
    runners: list[Any] = field(default_factory=list)
    idle: list[Any] = field(default_factory=list)
    starting: int = 0
    starts: set[asyncio.Future[Any]] = field(default_factory=set)
    """Runners starting: an unload waits for them (then stops them) before it is done."""
    stopped: bool = False
    """Unloaded or killed: no request may use it any more; a runner that arrives is stopped."""
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runners.append(self.runner)
        self.idle.append(self.runner)

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    def drop(self, runner: Any) -> None:
        if runner in self.runners:
            self.runners.remove(runner)
        if runner in self.idle:
            self.idle.remove(runner)
        self.wake()


_BACKGROUND: set[asyncio.Future[Any]] = set()
"""Starts and stops under way whose requests have gone: kept until they end."""


def _in_background(work: Callable[[], Any]) -> asyncio.Future[Any]:
    task = asyncio.ensure_future(asyncio.to_thread(work))
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task


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
        await _end(loaded, "close")

    async def kill(self, loaded: Loaded) -> None:
        """Stop the runners now, mid-answer if need be (the server is going)."""
        await _end(loaded, "stop")


async def _end(loaded: Loaded, how: str) -> None:
    """No request may use the pool any more; runners still starting are waited for (an
    unload that left them would let the next load run beside them), then every runner
    is closed (``close``) or killed (``stop``). Shielded: it ends whatever befalls its caller."""
    loaded.stopped = True
    loaded.wake()

    async def end() -> None:
        if loaded.starts:
            await asyncio.gather(*loaded.starts, return_exceptions=True)
        await asyncio.sleep(0)  # each start's ``arrived`` has run: its runner is listed
        runners, loaded.runners, loaded.idle = list(loaded.runners), [], []
        for runner in runners:
            await _in_background(getattr(runner, how))

    await asyncio.shield(asyncio.ensure_future(end()))


async def _take(loaded: Loaded) -> Any:
    """An idle runner, or a new one while the pool is under its size, else the first to
    come back (waiting for it)."""
    while True:
        if loaded.stopped:
            raise RunnerError("the {runtime} runner was stopped", runtime=loaded.runner.runtime)
        while loaded.idle:
            runner = loaded.idle.pop()
            if runner.alive():
                return runner
            loaded.drop(runner)  # died while idle: the pool makes another
        if len(loaded.runners) + loaded.starting < loaded.most:
            return await _start(loaded)
        waiter = asyncio.get_running_loop().create_future()
        loaded.waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in loaded.waiters:
                loaded.waiters.remove(waiter)


async def _start(loaded: Loaded) -> Any:
    """One more runner. The start goes on if this request is cancelled meanwhile: the
    runner then joins the pool idle (or is ended with the pool, the pool being unloaded)."""
    loaded.starting += 1
    starting = _in_background(loaded.start)
    loaded.starts.add(starting)
    abandoned = False

    def arrived(task: asyncio.Future[Any]) -> None:
        loaded.starts.discard(task)
        loaded.starting -= 1
        if not task.cancelled() and task.exception() is None:
            runner = task.result()
            loaded.runners.append(runner)  # listed: an unload ends it, whoever asked for it
            if abandoned and not loaded.stopped:
                loaded.idle.append(runner)
        loaded.wake()

    starting.add_done_callback(arrived)
    try:
        runner = await asyncio.shield(starting)
    except asyncio.CancelledError:
        abandoned = True  # ``arrived`` has not run yet: it makes the runner idle
        if starting.done() and not starting.cancelled() and starting.exception() is None:
            runner = starting.result()
            in_pool = runner in loaded.runners and not loaded.stopped
            if in_pool and runner not in loaded.idle:  # it has run
                loaded.idle.append(runner)
                loaded.wake()
        raise
    if loaded.stopped:  # unloaded while it started: the unload ends it
        raise RunnerError("the {runtime} runner was stopped", runtime=loaded.runner.runtime)
    return runner


@contextlib.asynccontextmanager
async def borrowed(loaded: Loaded) -> AsyncIterator[Any]:
    """One of the model's runners for one request. Given back when the request ends well;
    dropped and stopped when it did not (a client gone, a runner dead)."""
    runner = await _take(loaded)
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
        # The pool first, with no await before it: a second cancellation cannot skip it.
        if well and runner in loaded.runners and not loaded.stopped:
            loaded.idle.append(runner)
            loaded.wake()
        else:
            loaded.drop(runner)
            await asyncio.shield(_in_background(runner.stop))


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
