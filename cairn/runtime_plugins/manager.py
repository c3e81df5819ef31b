"""Finding runtime plugins and choosing a runtime for a model.

Plugins come from the entry-point group ``cairn.runtimes`` (cairn's own
llama.cpp plugin is one of them, declared in its pyproject like any other).
``CAIRN_PLUGINS=a,b`` loads only those. A plugin that fails to import is
kept as a :class:`BrokenPlugin` with its error: listed, never fatal.
Nothing loads until a runtime is first asked for.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType

import pluggy

from cairn.errors import RuntimeUnavailableError
from cairn.i18n import Phrase, join_phrases
from cairn.runtime_plugins import hookspecs
from cairn.runtime_plugins.runtime import Availability, Runtime

GROUP = "cairn.runtimes"
BUILTIN = "llama-cpp"
DEVICE_ORDER = ("cuda", "rocm", "metal", "vulkan", "cpu")


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    error: str


@dataclass(frozen=True)
class RuntimeInfo:
    runtime: Runtime
    plugin: str
    availability: Availability
    module: str | None = None
    """The plugin's module, when it is one: the runner imports just that."""

    @property
    def name(self) -> str:
        return self.runtime.name


class Plugins:
    """A plugin manager with cairn's hookspecs and the plugins it found."""

    def __init__(self, modules: Iterable[tuple[str, ModuleType | object]] | None = None) -> None:
        self.pm = pluggy.PluginManager("cairn")
        self.pm.add_hookspecs(hookspecs)
        self.broken: list[BrokenPlugin] = []
        if modules is None:
            self._load_entry_points()
        else:
            for name, module in modules:
                self.pm.register(module, name=name)
        self.pm.check_pending()

    def _load_entry_points(self) -> None:
        wanted = {p.strip() for p in os.environ.get("CAIRN_PLUGINS", "").split(",") if p.strip()}
        found = {ep.name: ep for ep in entry_points(group=GROUP)}
        if BUILTIN not in found:  # running from a tree that is not installed
            from cairn.runtime_plugins.llama_cpp import plugin

            self.pm.register(plugin, name=BUILTIN)
        for name, entry in sorted(found.items()):
            if wanted and name not in wanted:
                continue
            try:
                self.pm.register(entry.load(), name=name)
            except Exception as exc:
                self.broken.append(BrokenPlugin(name, f"{type(exc).__name__}: {exc}"))

    def register(self, module: object, name: str) -> None:
        self.pm.register(module, name=name)
        self.pm.check_pending()

    def runtimes(self) -> list[RuntimeInfo]:
        """Every registered runtime with its plugin's name and its availability here."""
        found: list[RuntimeInfo] = []
        for impl in self.pm.hook.register_runtimes.get_hookimpls():
            module = impl.plugin.__name__ if isinstance(impl.plugin, ModuleType) else None

            def register(
                runtime: Runtime, plugin: str = impl.plugin_name, module: str | None = module
            ) -> None:
                try:
                    availability = runtime.availability()
                except Exception as exc:  # a plugin's bug is its own
                    availability = Availability(
                        False, Phrase("{kind}: {exc}", kind=type(exc).__name__, exc=exc)
                    )
                found.append(RuntimeInfo(runtime, plugin, availability, module))

            try:
                impl.function(register=register)
            except Exception as exc:
                self.broken.append(BrokenPlugin(impl.plugin_name, f"{type(exc).__name__}: {exc}"))
        return found

    def choose(self, model_format: str = "gguf", name: str | None = None) -> RuntimeInfo:
        """``name`` if given (``--runtime``/``CAIRN_RUNTIME``), else the best available one.

        Best: one that takes the model's format, on the first device kind in
        CUDA, ROCm, ..., CPU order that it can use; then by its priority.
        """
        every = self.runtimes()
        name = name or os.environ.get("CAIRN_RUNTIME") or None
        if name:
            for info in every:
                if info.name == name:
                    if not info.availability.available:
                        raise RuntimeUnavailableError(
                            "runtime {name} is not available here: {reason}",
                            name=name,
                            reason=info.availability.reason,
                        )
                    return info
            known = ", ".join(sorted(i.name for i in every)) or "none"
            raise RuntimeUnavailableError(
                "no runtime named {name!r} (installed: {known})", name=name, known=known
            )
        usable = [
            i for i in every if i.availability.available and model_format in i.runtime.formats
        ]
        if not usable:
            reasons = join_phrases(
                "; ",
                [
                    Phrase("{name}: {reason}", name=i.name, reason=i.availability.reason)
                    for i in every
                ],
            ) or Phrase("none installed")
            raise RuntimeUnavailableError(
                "no runtime can run a {model_format} model here ({reasons})",
                model_format=model_format,
                reasons=reasons,
            )

        def rank(info: RuntimeInfo) -> tuple[int, int]:
            kinds = {d.split(":")[0] for d in info.availability.devices or info.runtime.devices}
            best = min((DEVICE_ORDER.index(k) for k in kinds if k in DEVICE_ORDER), default=99)
            return best, -info.runtime.priority

        return min(usable, key=rank)


@functools.lru_cache(maxsize=1)
def plugins() -> Plugins:
    """The process's plugins, loaded on first use."""
    return Plugins()
