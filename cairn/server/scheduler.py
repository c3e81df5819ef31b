"""Which models are loaded, for whom, and for how long: the heart of ``cairn serve``.

A request asks for a model with the options that decide how it is loaded
(runtime, ``num_ctx``, ...: its :class:`Want`). The scheduler gives it a
:class:`Lease` on a loaded model, as Ollama's does:

- a model loads on first use, and later requests reuse it;
- at most ``num_parallel`` requests use one model at once; the rest wait,
  and at most ``max_queue`` wait in all (past it, :class:`ServerBusyError`);
- an idle model stays loaded for its ``keep_alive`` (the last request's;
  0 unloads at once, a negative one keeps it for ever), then unloads;
- before a load, what the model needs (weights and KV cache, in bytes) is
  held against the memory free and ``max_loaded``: idle models are evicted,
  least recently used first, and a load waits for busy ones to finish; a
  model that cannot fit even alone is an error naming both figures;
- a request for a loaded model with other load options (another
  ``num_ctx``, another runtime) reloads it once it is idle;
- a lease whose runner died marks the model dead: it is unloaded, and the
  next request loads it again.

It knows nothing of HTTP or of runners: a :class:`Loader` loads and unloads
(the server's wraps runner processes; the tests' are scripted), so every
case is testable alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cairn.errors import ConfigError, ServerBusyError

FOREVER = -1.0


@dataclass(frozen=True)
class Want:
    """What a request needs loaded: a model, a runtime, and the options a load depends on."""

    model: str
    runtime: str
    options: tuple[tuple[str, Any], ...] = ()
    size: int = 0
    """Bytes the model takes loaded (weights and KV cache), as estimated from its header."""
    gpu_size: int = 0
    """Of those, the bytes it takes on GPUs (all of them when every layer is offloaded)."""
    target: Any = field(default=None, compare=False, hash=False)
    """What the loader needs beyond the above (where the weights are); not part of what
    makes two loads the same."""

    @classmethod
    def of(
        cls,
        model: str,
        runtime: str,
        options: Mapping[str, Any],
        size: int = 0,
        target: Any = None,
        gpu_size: int = 0,
    ) -> Want:
        return cls(model, runtime, tuple(sorted(options.items())), size, gpu_size, target)


class Loader(Protocol):
    """Loads a model (in a runner process, for the server) and unloads it."""

    async def load(self, want: Want) -> Any: ...

    async def unload(self, loaded: Any) -> None: ...


@dataclass
class _Slot:
    want: Want
    loaded: Any = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    active: int = 0
    dead: bool = False
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float = 300.0
    expires: float | None = None
    timer: asyncio.TimerHandle | None = None
    stopping: bool = False
    """``cairn stop`` (or a delete) asked for it while busy or loading: it goes when idle,
    whatever ``keep_alive`` the requests still under way asked."""


@dataclass(frozen=True)
class Status:
    """A loaded model, as ``/api/ps`` shows it."""

    model: str
    runtime: str
    size: int
    active: int
    expires: float | None
    gpu_size: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    """Monotonic time it unloads if still idle; None while in use or kept for ever."""


class Lease:
    """A request's use of a loaded model; :meth:`died` when its runner did."""

    def __init__(self, slot: _Slot) -> None:
        self._slot = slot
        self.loaded = slot.loaded

    def died(self) -> None:
        """The runner failed under this request: the model is loaded afresh next time."""
        self._slot.dead = True


class Scheduler:
    def __init__(
        self,
        loader: Loader,
        *,
        max_loaded: int = 3,
        num_parallel: int = 1,
        max_queue: int = 512,
        keep_alive: float = 300.0,
        free_memory: Callable[[], int] | None = None,
        free_gpu_memory: Callable[[], int] | None = None,
    ) -> None:
        if max_loaded < 1 or num_parallel < 1 or max_queue < 1:
            raise ConfigError("max loaded models, parallel requests and queue must be at least 1")
        self.loader = loader
        self.max_loaded = max_loaded
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.keep_alive = keep_alive
        self.free_memory = free_memory
        self.free_gpu_memory = free_gpu_memory
        self._slots: dict[str, _Slot] = {}
        self._changed = asyncio.Condition()
        self._waiting = 0
        self._closed = False
        self._releasing: set[asyncio.Future[None]] = set()

    # -- what is loaded -----------------------------------------------------

    def status(self) -> list[Status]:
        return [
            Status(
                s.want.model,
                s.want.runtime,
                s.want.size,
                s.active,
                s.expires,
                s.want.gpu_size,
                s.want.options,
            )
            for s in sorted(self._slots.values(), key=lambda s: s.want.model)
            if s.ready.is_set() and s.error is None
        ]

    def loaded(self) -> list[Any]:
        """What the loader loaded, for each model loaded now."""
        return [s.loaded for s in self._slots.values() if s.loaded is not None]

    @property
    def waiting(self) -> int:
        """Requests waiting for a model or a turn (the queue's depth)."""
        return self._waiting

    # -- leases -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, want: Want, keep_alive: float | None = None) -> AsyncIterator[Lease]:
        """The model ``want`` names, loaded, for the length of a ``with`` block."""
        slot = await self._acquire(want, keep_alive)
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        try:
            yield Lease(slot)
        finally:
            # In a task of its own: a request cancelled again while the release waits for
            # the lock must not leave the model counted busy for ever.
            release = asyncio.ensure_future(self._release(slot))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)
            await asyncio.shield(release)

    async def _acquire(self, want: Want, keep_alive: float | None = None) -> _Slot:
        if self._waiting >= self.max_queue:
            raise ServerBusyError(
                "{waiting} requests are waiting already (CAIRN_MAX_QUEUE={most}); try later",
                waiting=self._waiting,
                most=self.max_queue,
            )
        self._waiting += 1
        try:
            while True:
                async with self._changed:
                    slot = await self._slot_for(want, keep_alive)
                    if slot is None:
                        await self._changed.wait()
                        continue
                    if slot.ready.is_set() and slot.active < self.num_parallel:
                        if slot.error is not None:
                            raise slot.error
                        slot.active += 1
                        self._cancel_expiry(slot)
                        return slot
                    if slot.ready.is_set():
                        await self._changed.wait()  # its turn comes when one finishes
                        continue
                await slot.ready.wait()  # loading: outside the lock
                if slot.error is not None:  # every request that waited for it is told
                    raise slot.error
        finally:
            self._waiting -= 1

    async def _slot_for(self, want: Want, keep_alive: float | None = None) -> _Slot | None:
        """The slot to use for ``want`` (loading it if need be), or None to wait. Holding
        the lock."""
        slot = self._slots.get(want.model)
        if slot is not None and slot.ready.is_set() and slot.error is not None:
            del self._slots[want.model]  # a failed load: try again
            slot = None
        if slot is not None and (slot.want != want or slot.dead):
            if slot.active or not slot.ready.is_set():
                return None  # reloaded once idle
            await self._unload(slot)
            slot = None
        if slot is not None:
            return slot
        if not await self._make_room(want):
            return None
        # The asker's keep_alive from the start: if it goes before the load ends, the
        # model still expires as it asked (``_load``).
        slot = _Slot(want, keep_alive=self.keep_alive if keep_alive is None else keep_alive)
        self._slots[want.model] = slot
        asyncio.get_running_loop().create_task(self._load(slot))
        return slot

    async def _make_room(self, want: Want) -> bool:
        """Evict idle models (least recently used first) until ``want`` fits; False when
        busy ones must finish first. Holding the lock."""
        while True:
            loaded = list(self._slots.values())
            short, need, free, kind = self._short_of(want, loaded)
            if len(loaded) < self.max_loaded and short <= 0:
                return True
            idle = [s for s in loaded if s.active == 0 and s.ready.is_set()]
            if not idle:
                if not loaded and short > 0:
                    from cairn.cli.output import human_size

                    raise ConfigError(
                        "{model} needs {need} of {memory} and {free} is free: it cannot be"
                        " loaded here (a smaller num_ctx needs less)",
                        model=want.model,
                        need=human_size(need),
                        memory=kind,
                        free=human_size(max(0, free)),
                    )
                return False
            await self._unload(min(idle, key=lambda s: s.last_used))

    def _short_of(self, want: Want, loaded: list[_Slot]) -> tuple[int, int, int, str]:
        """Bytes ``want`` lacks (counting what loading models will take), of the memory
        it lacks most: (short, need, free, which memory)."""
        worst = (0, 0, 0, "memory")
        for need, measure, kind in (
            (want.size, self.free_memory, "memory"),
            (want.gpu_size, self.free_gpu_memory, "GPU memory"),
        ):
            if measure is None or not need:
                continue
            loading = sum(
                s.want.size if kind == "memory" else s.want.gpu_size
                for s in loaded
                if not s.ready.is_set()
            )
            free = measure() - loading
            if need - free > worst[0]:
                worst = (need - free, need, free, kind)
        return worst

    async def _load(self, slot: _Slot) -> None:
        try:
            slot.loaded = await self.loader.load(slot.want)
        except Exception as exc:
            slot.error = exc
        finally:
            slot.ready.set()
            async with self._changed:
                if slot.error is None and slot.active == 0:
                    self._idle(slot)  # whoever asked for it may be gone: it expires anyway
                self._changed.notify_all()

    async def _release(self, slot: _Slot) -> None:
        async with self._changed:
            slot.active -= 1
            slot.last_used = time.monotonic()
            if slot.active == 0:
                if slot.dead or slot.stopping or slot.keep_alive == 0:
                    await self._unload(slot)
                elif slot.keep_alive > 0:
                    self._expire_later(slot)
            self._changed.notify_all()

    def _idle(self, slot: _Slot) -> None:
        """A slot just loaded that no request holds: it expires as its asker wanted (at
        once for 0 or a stop: the requests woken by the load come first, and keep it)."""
        if slot.stopping or slot.keep_alive == 0:
            self._expire_later(slot, 0.0)
        elif slot.keep_alive > 0:
            self._expire_later(slot)

    # -- unloading ----------------------------------------------------------

    def _expire_later(self, slot: _Slot, after: float | None = None) -> None:
        self._cancel_expiry(slot)
        wait = slot.keep_alive if after is None else after
        slot.expires = time.monotonic() + wait
        loop = asyncio.get_running_loop()

        def expire() -> None:
            task = loop.create_task(self._expire(slot))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

        slot.timer = loop.call_later(wait, expire)

    def _cancel_expiry(self, slot: _Slot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
        slot.timer, slot.expires = None, None

    async def _expire(self, slot: _Slot) -> None:
        async with self._changed:
            if slot.active == 0 and self._slots.get(slot.want.model) is slot:
                await self._unload(slot)
                self._changed.notify_all()

    async def _unload(self, slot: _Slot) -> None:
        """Holding the lock."""
        self._cancel_expiry(slot)
        if self._slots.get(slot.want.model) is slot:
            del self._slots[slot.want.model]
        if slot.loaded is not None:
            loaded, slot.loaded = slot.loaded, None
            with contextlib.suppress(Exception):
                await self.loader.unload(loaded)

    async def stop(self, model: str) -> bool:
        """Unload ``model`` now if idle, else once its requests are done (``cairn stop``)."""
        async with self._changed:
            slot = self._slots.get(model)
            if slot is None:
                return False
            if slot.active == 0 and slot.ready.is_set():
                await self._unload(slot)
            else:
                slot.stopping = True
            self._changed.notify_all()
            return True

    async def close(self) -> None:
        async with self._changed:
            for slot in list(self._slots.values()):
                await self._unload(slot)
