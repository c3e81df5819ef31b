"""Plugin discovery and runtime choice on fresh plugin managers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pytest

from cairn.errors import RuntimeUnavailableError
from cairn.runtime_plugins import manager
from cairn.runtime_plugins.hookspecs import hookimpl
from cairn.runtime_plugins.runtime import Availability, Chunk, LoadedModel, ModelSpec, Runtime


class Fake(Runtime):
    def __init__(
        self, name: str, devices: tuple[str, ...], available: bool = True, priority: int = 0
    ) -> None:
        self.name = name
        self.devices = devices
        self.priority = priority
        self._available = available

    def availability(self) -> Availability:
        if not self._available:
            return Availability(False, "its library is missing")
        return Availability(True, "", self.devices)

    def load(self, model: ModelSpec, options: Mapping[str, Any]) -> LoadedModel:
        class Echo(LoadedModel):
            def generate(self, prompt: str, options: Mapping[str, Any]) -> Iterator[Chunk]:
                yield Chunk(prompt)
                yield Chunk(done=True)

        return Echo()


def plugin(*runtimes: Runtime) -> object:
    class Plugin:
        @hookimpl
        def register_runtimes(self, register: Callable[[Runtime], None]) -> None:
            for runtime in runtimes:
                register(runtime)

    return Plugin()


def test_a_plugin_on_a_fresh_manager() -> None:
    plugins = manager.Plugins(modules=[("mine", plugin(Fake("fast", ("cpu",))))])
    [info] = plugins.runtimes()
    assert (info.name, info.plugin, info.availability.available) == ("fast", "mine", True)
    assert plugins.choose("gguf").name == "fast"


def test_choice_prefers_cuda_then_rocm_then_cpu_then_priority() -> None:
    plugins = manager.Plugins(
        modules=[
            ("a", plugin(Fake("cpu-one", ("cpu",), priority=5), Fake("rocm-one", ("rocm:0",)))),
            (
                "b",
                plugin(
                    Fake("cuda-one", ("cuda:0", "cpu")),
                    Fake("cuda-gone", ("cuda:0",), available=False),
                ),
            ),
        ]
    )
    assert plugins.choose("gguf").name == "cuda-one"
    assert plugins.choose("gguf", "cpu-one").name == "cpu-one"
    with pytest.raises(RuntimeUnavailableError, match="its library is missing"):
        plugins.choose("gguf", "cuda-gone")
    with pytest.raises(RuntimeUnavailableError, match="no runtime named 'nope'"):
        plugins.choose("gguf", "nope")
    with pytest.raises(RuntimeUnavailableError, match="safetensors"):
        plugins.choose("safetensors")


def test_cairn_runtime_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = manager.Plugins(modules=[("a", plugin(Fake("x", ("cpu",)), Fake("y", ("cpu",))))])
    monkeypatch.setenv("CAIRN_RUNTIME", "y")
    assert plugins.choose("gguf").name == "y"


def test_misspelled_hook_fails_loudly() -> None:
    class Misspelled:
        @hookimpl
        def register_runtime(self, register: Callable[[Runtime], None]) -> None:
            pass

    with pytest.raises(Exception, match="unknown hook"):
        manager.Plugins(modules=[("typo", Misspelled())])


def test_a_broken_plugin_is_listed_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = EntryPoint("broken-one", "cairn_no_such_module.plugin", manager.GROUP)
    real = list(entry_points(group=manager.GROUP))
    monkeypatch.setattr(manager, "entry_points", lambda group: [*real, broken])
    plugins = manager.Plugins()
    assert [b.name for b in plugins.broken] == ["broken-one"]
    assert "ModuleNotFoundError" in plugins.broken[0].error
    assert "llama-cpp" in [i.name for i in plugins.runtimes()]


def test_a_plugin_whose_hook_raises_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Raises:
        @hookimpl
        def register_runtimes(self, register: Callable[[Runtime], None]) -> None:
            raise RuntimeError("boom")

    plugins = manager.Plugins(modules=[("ok", plugin(Fake("fine", ("cpu",)))), ("bad", Raises())])
    assert [i.name for i in plugins.runtimes()] == ["fine"]
    assert plugins.broken[0].name == "bad" and "boom" in plugins.broken[0].error


def test_cairn_plugins_limits_what_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_PLUGINS", "llama-cpp")
    extra = EntryPoint("other", "cairn_no_such_module.plugin", manager.GROUP)
    real = list(entry_points(group=manager.GROUP))
    monkeypatch.setattr(manager, "entry_points", lambda group: [*real, extra])
    plugins = manager.Plugins()
    assert plugins.broken == []  # "other" was never imported
    assert [i.name for i in plugins.runtimes()] == ["llama-cpp"]
