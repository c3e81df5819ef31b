"""A model's pool of runners under the interleavings the attack on ``cairn serve`` found.

Runners here are stand-ins whose start and stop wait on events the test sets:
the interleavings (a request cancelled twice while its runner stops, a
request cancelled while its runner starts) are forced, not hoped for. The
real runners go through the same pool in ``test_concurrency.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cairn.errors import RunnerError
from cairn.server.loader import Loaded, RunnerLoader, borrowed


class Stand:
    """A runner whose ``stop`` waits until the test lets it."""

    runtime = "stand-in"

    def __init__(self, name: str, stopping: threading.Event | None = None) -> None:
        self.name = name
        self.dead = False
        self.stopping = stopping

    def alive(self) -> bool:
        return not self.dead

    def stop(self) -> None:
        if self.stopping is not None:
            assert self.stopping.wait(30)
        self.dead = True

    def close(self) -> None:
        self.dead = True

    def __repr__(self) -> str:
        return self.name


class Starts:
    """``Loaded.start``: makes runners, each waiting for ``go`` first when it is set up."""

    def __init__(self) -> None:
        self.made: list[Stand] = []
        self.go: threading.Event | None = None
        self.begun = threading.Event()

    def __call__(self) -> Stand:
        self.begun.set()
        if self.go is not None:
            assert self.go.wait(30)
        runner = Stand(f"runner-{len(self.made) + 1}")
        self.made.append(runner)
        return runner


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


async def answer(loaded: Loaded, inside: asyncio.Event | None = None) -> Any:
    async with borrowed(loaded) as runner:
        if inside is not None:
            inside.set()
            await asyncio.Event().wait()  # until cancelled: a long answer
        return runner


def test_a_request_cancelled_twice_while_its_runner_stops_frees_the_pool() -> None:
    async def case() -> None:
        stopping = threading.Event()
        first = Stand("first", stopping)
        loaded = Loaded(first, Starts())
        inside = asyncio.Event()
        request = asyncio.create_task(answer(loaded, inside))
        await inside.wait()
        request.cancel()  # the client goes: its runner is stopped (slowly)
        await until(lambda: first not in loaded.runners)
        request.cancel()  # cancelled again while the stop goes on
        await asyncio.sleep(0.01)
        stopping.set()
        with pytest.raises(asyncio.CancelledError):
            await request
        await until(lambda: first.dead)
        assert loaded.runners == [] and loaded.idle == []
        nxt = await answer(loaded)  # the pool starts another
        assert nxt.name == "runner-1" and loaded.idle == [nxt]

    run(case)


def test_a_runner_started_for_a_request_that_went_joins_the_pool() -> None:
    async def case() -> None:
        starts = Starts()
        first = Stand("first")
        loaded = Loaded(first, starts)
        loaded.drop(first)  # it died: the next request starts one
        starts.go = threading.Event()
        request = asyncio.create_task(answer(loaded))
        await asyncio.to_thread(starts.begun.wait, 30)
        request.cancel()  # the client goes while its runner starts
        with pytest.raises(asyncio.CancelledError):
            await request
        starts.go.set()
        await until(lambda: loaded.starting == 0)
        assert loaded.runners == starts.made and loaded.idle == starts.made  # not leaked
        again = await answer(loaded)
        assert again is starts.made[0] and len(starts.made) == 1  # taken, not started anew

    run(case)


def test_an_unload_waits_for_a_runner_still_starting_and_ends_it() -> None:
    """Found by the second attack: an unload left a start under way (its request gone),
    and the next load ran beside the runner it made."""

    async def case() -> None:
        starts = Starts()
        first = Stand("first")
        loaded = Loaded(first, starts, most=2)
        inside = asyncio.Event()
        holding = asyncio.create_task(answer(loaded, inside))
        await inside.wait()  # the first runner is busy: the next request starts one
        starts.go = threading.Event()
        request = asyncio.create_task(answer(loaded))
        await asyncio.to_thread(starts.begun.wait, 30)
        request.cancel()  # its client goes while the runner starts
        with pytest.raises(asyncio.CancelledError):
            await request
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding
        unloading = asyncio.create_task(RunnerLoader().unload(loaded))
        await asyncio.sleep(0.05)
        assert not unloading.done()  # it waits for the start...
        starts.go.set()
        await unloading
        assert starts.made and all(r.dead for r in starts.made)  # ...and ends what it made
        assert loaded.runners == [] and loaded.starting == 0
        with pytest.raises(RunnerError):
            await answer(loaded)  # unloaded: no request may use it

    run(case)


def test_requests_past_the_pool_size_wait_their_turn() -> None:
    async def case() -> None:
        loaded = Loaded(Stand("first"), Starts(), most=1)
        inside = asyncio.Event()
        holding = asyncio.create_task(answer(loaded, inside))
        await inside.wait()
        waiting = asyncio.create_task(answer(loaded))
        await asyncio.sleep(0.01)
        assert not waiting.done() and loaded.starting == 0  # no second runner: most is 1
        waiting.cancel()  # a waiter that goes changes nothing
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert loaded.waiters == [] or all(w.done() for w in loaded.waiters)
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding
        assert (await answer(loaded)).name == "runner-1"  # the first was stopped with it

    run(case)
