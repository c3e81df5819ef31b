"""The scheduler, as Ollama tests its own: a scripted runtime with set load times and memory.

Interleavings are forced with events the scripted loader waits on, not with
sleeps: each case says what must have happened before the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from cairn.errors import ConfigError, RunnerError, ServerBusyError
from cairn.server.scheduler import Scheduler, Want

GB = 1 << 30


@dataclass
class Scripted:
    """A runtime whose loads take as long as the test says, on a machine of ``memory``."""

    memory: int = 16 * GB
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    """A model whose load waits until its event is set."""
    unload_gates: dict[str, asyncio.Event] = field(default_factory=dict)
    """A model whose unload waits until its event is set."""
    failing: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    loaded: dict[int, Want] = field(default_factory=dict)
    most_loaded: int = 0

    async def load(self, want: Want) -> Any:
        gate = self.gates.get(want.model)
        if gate is not None:
            await gate.wait()
        if want.model in self.failing:
            raise RunnerError("the {runtime} runner exited with status 1", runtime=want.runtime)
        self.loads.append(want.model)
        handle = len(self.loads)
        self.loaded[handle] = want
        self.most_loaded = max(self.most_loaded, len(self.loaded))
        return handle

    async def unload(self, loaded: Any) -> None:
        gate = self.unload_gates.get(self.loaded[loaded].model)
        if gate is not None:
            await gate.wait()
        self.unloads.append(self.loaded.pop(loaded).model)

    def free(self) -> int:
        return self.memory - sum(w.size for w in self.loaded.values())


def want(model: str, size: int = GB, **options: Any) -> Want:
    return Want.of(model, "llama-cpp", options, size)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def test_load_on_first_use_then_reuse() -> None:
    async def case() -> None:
        runtime = Scripted()
        scheduler = Scheduler(runtime, free_memory=runtime.free)
        async with scheduler.lease(want("a")) as first:
            assert [s.model for s in scheduler.status()] == ["a"]
        async with scheduler.lease(want("a")) as second:
            assert second.loaded == first.loaded
        assert runtime.loads == ["a"]
        await scheduler.close()
        assert runtime.unloads == ["a"]

    run(case)


def test_keep_alive_expires_unloads_at_once_or_never() -> None:
    async def case() -> None:
        runtime = Scripted()
        scheduler = Scheduler(runtime, keep_alive=0.05)
        async with scheduler.lease(want("a")):
            assert scheduler.status()[0].expires is None  # in use: no expiry
        assert scheduler.status()[0].expires is not None
        await until(lambda: runtime.unloads == ["a"])  # the default keep_alive ran out
        async with scheduler.lease(want("b"), keep_alive=0):
            pass
        assert runtime.unloads == ["a", "b"]  # 0: at once
        async with scheduler.lease(want("c"), keep_alive=-1):
            pass
        assert [s.expires for s in scheduler.status()] == [None]  # negative: for ever
        await scheduler.close()

    run(case)


def test_the_least_recently_used_idle_model_is_evicted() -> None:
    async def case() -> None:
        runtime = Scripted()
        scheduler = Scheduler(runtime, max_loaded=2)
        for name in ("a", "b", "a"):
            async with scheduler.lease(want(name)):
                pass
        async with scheduler.lease(want("c")):
            pass
        assert runtime.unloads == ["b"]  # a was used after b
        assert sorted(s.model for s in scheduler.status()) == ["a", "c"]
        await scheduler.close()

    run(case)


def test_memory_evicts_idle_models_and_waits_for_busy_ones() -> None:
    async def case() -> None:
        runtime = Scripted(memory=10 * GB)
        scheduler = Scheduler(runtime, max_loaded=5, free_memory=runtime.free)
        async with scheduler.lease(want("small", 3 * GB)):
            pass
        async with scheduler.lease(want("busy", 4 * GB)):
            # 3 free: "big" needs 7; the idle one goes (6 free), then it waits for "busy"
            big = asyncio.create_task(use(scheduler, want("big", 7 * GB)))
            await until(lambda: runtime.unloads == ["small"])
            await asyncio.sleep(0.01)
            assert not big.done() and "big" not in runtime.loads
        await big
        assert runtime.unloads[:2] == ["small", "busy"] and "big" in runtime.loads
        assert runtime.free() >= 0
        with pytest.raises(ConfigError, match=r"needs 21 GB of memory and \d+ GB is free"):
            await use(scheduler, want("huge", 20 * GB))
        await scheduler.close()

    run(case)


def test_gpu_memory_evicts_idle_models_too() -> None:
    """A GPU runtime's model must fit the GPUs' free memory as well as the system's."""

    async def case() -> None:
        runtime = Scripted(memory=64 * GB)
        gpu = 12 * GB

        def free_gpu() -> int:
            return gpu - sum(w.gpu_size for w in runtime.loaded.values())

        scheduler = Scheduler(
            runtime, max_loaded=5, free_memory=runtime.free, free_gpu_memory=free_gpu
        )

        def on_gpu(model: str, size: int) -> Want:
            return Want.of(model, "llama-cpp-cuda", {}, size, gpu_size=size)

        async with scheduler.lease(on_gpu("first", 5 * GB)):
            pass
        async with scheduler.lease(want("cpu-only", 4 * GB)):
            pass
        async with scheduler.lease(on_gpu("second", 6 * GB)):
            pass
        assert runtime.unloads == []  # 11 of 12 GB: all fit
        async with scheduler.lease(on_gpu("third", 6 * GB)):
            pass
        assert runtime.unloads == ["first"]  # the least recently used, for its GPU memory
        with pytest.raises(
            ConfigError, match=r"huge needs \d+ GB of GPU memory and \d+ GB is free"
        ):
            await use(scheduler, on_gpu("huge", 13 * GB))
        await scheduler.close()

    run(case)


async def use(scheduler: Scheduler, wanted: Want, keep_alive: float | None = None) -> Any:
    async with scheduler.lease(wanted, keep_alive) as lease:
        await asyncio.sleep(0)
        return lease.loaded


def test_other_load_options_reload_once_idle() -> None:
    async def case() -> None:
        runtime = Scripted()
        scheduler = Scheduler(runtime)
        async with scheduler.lease(want("a", num_ctx=2048)):
            other = asyncio.create_task(use(scheduler, want("a", num_ctx=8192)))
            await asyncio.sleep(0.01)
            assert runtime.loads == ["a"] and not other.done()  # not under a running request
        await other
        assert runtime.loads == ["a", "a"] and runtime.unloads == ["a"]
        assert dict(runtime.loaded.popitem()[1].options) == {"num_ctx": 8192}

    run(case)


def test_a_full_queue_refuses_and_nothing_hangs() -> None:
    async def case() -> None:
        runtime = Scripted(gates={"a": asyncio.Event()})
        scheduler = Scheduler(runtime, max_queue=10)
        waiting = [asyncio.create_task(use(scheduler, want("a"))) for _ in range(10)]
        await until(lambda: scheduler.waiting == 10)
        with pytest.raises(ServerBusyError, match="10 requests are waiting"):
            await use(scheduler, want("a"))
        runtime.gates["a"].set()
        await asyncio.gather(*waiting)  # all ten served
        assert runtime.loads == ["a"] and scheduler.waiting == 0

    run(case)


def test_a_crashed_runner_is_loaded_again_by_the_next_request() -> None:
    async def case() -> None:
        runtime = Scripted()
        scheduler = Scheduler(runtime)
        async with scheduler.lease(want("a")) as lease:
            lease.died()
        assert runtime.unloads == ["a"] and scheduler.status() == []
        await use(scheduler, want("a"))
        assert runtime.loads == ["a", "a"]

    run(case)


def test_a_failed_load_fails_every_request_that_waited_then_is_tried_again() -> None:
    async def case() -> None:
        runtime = Scripted(gates={"a": asyncio.Event()}, failing={"a"})
        scheduler = Scheduler(runtime)
        waiting = [asyncio.create_task(use(scheduler, want("a"))) for _ in range(3)]
        await until(lambda: scheduler.waiting == 3)
        runtime.gates["a"].set()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(o, RunnerError) for o in outcomes)
        runtime.failing.clear()
        await use(scheduler, want("a"))
        assert runtime.loads == ["a"]

    run(case)


def test_num_parallel_bounds_each_model() -> None:
    async def case() -> None:
        runtime = Scripted()
        scheduler = Scheduler(runtime, num_parallel=2)
        inside = 0
        most = 0
        release = asyncio.Event()

        async def request() -> None:
            nonlocal inside, most
            async with scheduler.lease(want("a")):
                inside += 1
                most = max(most, inside)
                await release.wait()
                inside -= 1

        tasks = [asyncio.create_task(request()) for _ in range(5)]
        await until(lambda: inside == 2 and scheduler.waiting == 3)
        release.set()
        await asyncio.gather(*tasks)
        assert most == 2

    run(case)


def test_many_requests_for_many_models_at_once() -> None:
    async def case() -> None:
        runtime = Scripted(memory=8 * GB)
        scheduler = Scheduler(runtime, max_loaded=2, num_parallel=2, free_memory=runtime.free)
        models = [want(name, 3 * GB) for name in "abcd"]
        served: list[str] = []

        async def request(n: int) -> None:
            async with scheduler.lease(models[n % 4]) as lease:
                assert runtime.loaded[lease.loaded].model == models[n % 4].model
                await asyncio.sleep(0.001 * (n % 3))
                served.append(models[n % 4].model)

        await asyncio.gather(*(request(n) for n in range(40)))
        assert sorted(served) == sorted(m.model for n in range(40) for m in [models[n % 4]])
        assert runtime.most_loaded <= 2 and runtime.free() >= 0
        await scheduler.close()
        assert runtime.loaded == {}

    run(case)


def test_stop_unloads_now_or_when_the_request_ends() -> None:
    async def case() -> None:
        runtime = Scripted()
        scheduler = Scheduler(runtime)
        await use(scheduler, want("a"))
        assert await scheduler.stop("a") and runtime.unloads == ["a"]
        async with scheduler.lease(want("b")):
            assert await scheduler.stop("b") and runtime.unloads == ["a"]
        assert runtime.unloads == ["a", "b"]
        assert not await scheduler.stop("nothing")

    run(case)


def test_a_request_cancelled_twice_still_frees_its_model() -> None:
    """Found by the attack: a request cancelled (its client gone), then cancelled again
    while its release waited for the scheduler's lock, left its model busy for ever."""

    async def case() -> None:
        runtime = Scripted()
        gate = asyncio.Event()
        runtime.unload_gates["old"] = gate
        scheduler = Scheduler(runtime, max_loaded=2, free_memory=runtime.free)
        async with scheduler.lease(want("old")):
            pass
        inside, leave = asyncio.Event(), asyncio.Event()

        async def request() -> None:
            async with scheduler.lease(want("a")):
                inside.set()
                await leave.wait()

        answering = asyncio.create_task(request())
        await inside.wait()
        # "c" needs room: the lock is held while "old" unloads, which waits on the gate.
        evicting = asyncio.create_task(use(scheduler, want("c")))
        await until(lambda: "old" not in runtime.unloads and scheduler._changed.locked())
        answering.cancel()  # the client goes: its release waits for the lock...
        await asyncio.sleep(0.01)
        answering.cancel()  # ...and is cancelled again
        await asyncio.sleep(0.01)
        gate.set()
        await evicting
        with pytest.raises(asyncio.CancelledError):
            await answering
        await until(lambda: all(s.active == 0 for s in scheduler.status()))
        assert sorted(s.model for s in scheduler.status()) == ["a", "c"]
        await scheduler.close()

    run(case)


def test_a_model_whose_asker_left_during_its_load_still_expires() -> None:
    """Found by the second attack: a client gone while its model loaded left the model
    loaded for ever (only a release armed the expiry, and it never acquired)."""

    async def case() -> None:
        runtime = Scripted()
        scheduler = Scheduler(runtime, free_memory=runtime.free)
        for model, keep in (("quick", 0.0), ("brief", 0.05)):
            gate = asyncio.Event()
            runtime.gates[model] = gate
            asker = asyncio.create_task(use(scheduler, want(model), keep))
            await until(lambda m=model: m in scheduler._slots)  # type: ignore[misc]
            asker.cancel()  # gone while its model loads
            with pytest.raises(asyncio.CancelledError):
                await asker
            gate.set()
            await until(lambda m=model: m in runtime.loads)  # type: ignore[misc]
            await until(lambda m=model: m in runtime.unloads)  # type: ignore[misc]
        assert scheduler.status() == []
        await scheduler.close()

    run(case)


def test_a_stop_during_a_load_wins_over_the_requests_keep_alive() -> None:
    """Found by the second attack: a delete (a stop) while the model loaded for a request
    was overwritten by that request's keep_alive, and the model stayed five minutes."""

    async def case() -> None:
        runtime = Scripted()
        gate = asyncio.Event()
        runtime.gates["victim"] = gate
        scheduler = Scheduler(runtime, free_memory=runtime.free)
        asking = asyncio.create_task(use(scheduler, want("victim"), 300.0))
        await until(lambda: "victim" in scheduler._slots)
        assert await scheduler.stop("victim")  # loading: it goes once idle
        gate.set()
        await asking
        await until(lambda: runtime.unloads == ["victim"])
        assert scheduler.status() == []
        await scheduler.close()

    run(case)
