"""What a runtime is: the small typed interface a plugin implements.

A :class:`Runtime` says what it is (name, devices, formats), whether it can
run here, and loads a model into a :class:`LoadedModel`, which streams
:class:`Chunk` s for generate and chat and returns vectors for embed. The
runner calls these inside a separate process (``runner.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""
    devices: tuple[str, ...] = ()
    """The devices usable here (e.g. ``("cuda:0", "cpu")``)."""
    no_gpu: str = ""
    """Why a runtime that can drive GPUs has none here (empty when it has one, or never can)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model as a runtime sees it: files on disk and their format."""

    weights: Path
    format: str = "gguf"
    adapters: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed output; the last one has ``done`` and the statistics."""

    text: str = ""
    done: bool = False
    stats: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Embedding:
    """One text's vector, as the model pools it (not normalised), and the tokens it read."""

    vector: list[float]
    tokens: int


class LoadedModel(ABC):
    @abstractmethod
    def generate(self, prompt: str, options: Mapping[str, Any]) -> Iterator[Chunk]:
        """Stream the continuation of an already templated ``prompt``."""

    def embed(self, texts: list[str], truncate: bool = True) -> list[Embedding]:
        """One :class:`Embedding` per text. A text longer than the context is cut to fit,
        or, with ``truncate`` false, refused with :class:`~cairn.errors.InputTooLongError`."""
        raise NotImplementedError(f"{type(self).__name__} does not embed")

    def close(self) -> None:  # noqa: B027 - optional
        """Free what the model holds."""


class Runtime(ABC):
    """A way to run models; plugins register instances through ``register_runtimes``."""

    name: str = ""
    devices: tuple[str, ...] = ("cpu",)
    formats: tuple[str, ...] = ("gguf",)
    priority: int = 0
    """Among runtimes for the same device, the higher runs first."""

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this runtime can run here, on which devices, and if not, why."""

    @abstractmethod
    def load(self, model: ModelSpec, options: Mapping[str, Any]) -> LoadedModel:
        """Load ``model`` (called inside the runner process)."""
