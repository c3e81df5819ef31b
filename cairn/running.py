"""What running a model takes, checked before any runner starts: shared by ``cairn run``
and ``cairn serve``.

:func:`plan` reads a model from the store and decides everything a run
needs: the weights (or why they cannot run here), the runtime, the options
(the model's parameters, then the caller's, typed and ranged), and whether
this machine can take them (``num_ctx`` against the model's training and
the memory free, ``num_thread`` against the cores, ``num_gpu`` against the
runtime's devices).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cairn.errors import ConfigError, ModelFormatError, ModelNotFoundError
from cairn.i18n import Phrase

if TYPE_CHECKING:
    from cairn.blobstore import Digest
    from cairn.gguf import GGUFInfo
    from cairn.manifests.models import Models
    from cairn.manifests.show import ModelDetails
    from cairn.runtime_plugins.manager import RuntimeInfo
    from cairn.runtime_plugins.prompt import Message
    from cairn.runtime_plugins.runtime import Availability, ModelSpec


@dataclass
class Plan:
    """A model, ready to load: what :func:`plan` decided."""

    name: str
    details: ModelDetails
    runtime: RuntimeInfo
    spec: ModelSpec
    options: dict[str, Any]
    history: list[Message]
    chat_template: str | None
    warnings: list[Phrase] = field(default_factory=list)
    """What the caller should tell the user (a GPU asked for where there is none)."""


def plan(
    models: Models,
    name: str,
    overrides: Mapping[str, Any] = {},
    runtime_name: str | None = None,
    long_context: bool = False,
    add_stops: bool = False,
) -> Plan:
    """Everything a run of ``name`` needs, checked; ``overrides`` are typed options (their
    ``stop`` added to the model's with ``add_stops``, as ``cairn run -p stop=`` does)."""
    from cairn.manifests.show import show_model
    from cairn.modelfile import check_parameters
    from cairn.runtime_plugins.manager import plugins
    from cairn.runtime_plugins.prompt import Message
    from cairn.runtime_plugins.runtime import ModelSpec
    from cairn.signing.policy import require_trusted

    details = show_model(models, name)
    require_trusted(models, models.get(name))
    weights = check_runnable(name, details)
    options = check_parameters(details.parameters, Phrase("{model}'s parameters: ", model=name))
    for key, value in overrides.items():
        if key == "stop" and add_stops:
            options.setdefault("stop", []).extend(value)
        else:
            options[key] = value
    assert details.gguf is not None  # check_runnable saw to it
    check_for_machine(options, details.gguf, long_context)
    info = plugins().choose("gguf", runtime_name)
    warnings = check_offload(info.name, info.availability, options)
    spec = ModelSpec(
        models.blobs.path(weights),
        adapters=tuple(models.blobs.path(d) for d in details.adapters),
    )
    history = [Message(m.role, m.content) for m in details.messages]
    chat_template = details.gguf.metadata.get("tokenizer.chat_template")
    return Plan(
        name,
        details,
        info,
        spec,
        options,
        history,
        chat_template if isinstance(chat_template, str) else None,
        warnings,
    )


DEFAULT_CONTEXT = 4096
"""``num_ctx`` when neither the model nor the request sets it (the llama.cpp runtime's)."""


def memory_needed(ready: Plan, runners: int = 1) -> tuple[int, int]:
    """What loading ``ready`` takes, in bytes: (in all, on GPUs). The weights and adapters
    as stored (memory-mapped: once, however many runners share them), plus the KV cache
    for its ``num_ctx`` (f16, every layer full length, from the GGUF header) for each of
    ``runners``; on GPUs, the offloaded layers' share of that. An estimate: the
    runtime's compute buffers (tens of MB) are not counted."""
    from cairn.runtime_plugins.devices import kv_cache_bytes

    assert ready.details.gguf is not None  # plan() saw to it
    weights = sum(p.stat().st_size for p in (ready.spec.weights, *ready.spec.adapters))
    context = int(ready.options.get("num_ctx", DEFAULT_CONTEXT))
    total = weights + runners * (kv_cache_bytes(ready.details.gguf, context) or 0)
    gpus = [d for d in ready.runtime.availability.devices if d != "cpu"]
    layers = ready.details.gguf.arch_value("block_count")
    offloaded = ready.options.get("num_gpu", -1)
    if not gpus or offloaded == 0:
        return total, 0
    if offloaded < 0 or not isinstance(layers, int) or offloaded > layers:
        return total, total
    return total, total * offloaded // (layers + 1)


def check_runnable(model: str, details: ModelDetails) -> Digest:
    """The weights to run; or why the model cannot run here, rather than a failure
    somewhere in a runtime."""
    from cairn.manifests import mediatypes as mt

    if details.remote:
        raise ModelFormatError(
            "{model} is a remote model ({remote}): Ollama forwards it to that host;"
            " cairn runs local weights only",
            model=model,
            remote=details.remote,
        )
    tensors = [d for d in details.other_layers if d.media_type == mt.OLLAMA_TENSOR]
    if details.model_blob is None and tensors:
        raise ModelFormatError(
            "{model}'s weights are {count} tensor layers (safetensors, for Ollama's own"
            " engine); cairn's runtimes run GGUF",
            model=model,
            count=len(tensors),
        )
    if details.model_blob is None:
        raise ModelNotFoundError("{model} has no model weights to run", model=model)
    if details.gguf is None:
        raise ModelFormatError(
            "{model}'s weights are not a GGUF file cairn can read (its config says {kind});"
            " cairn's runtimes run GGUF",
            model=model,
            kind=details.config.get("model_format") or "nothing",
        )
    return details.model_blob


def check_for_machine(options: dict[str, Any], gguf: GGUFInfo, long_context: bool) -> None:
    """What a parameter may not ask of this model on this machine, said before the load.

    ``num_ctx`` up to the context length the model was trained for (unless
    ``long_context``), and its KV cache within the memory available now;
    ``num_thread`` up to the cores this process may run on.
    """
    from cairn.cli.output import human_size
    from cairn.runtime_plugins.devices import available_memory, kv_cache_bytes

    asked = options.get("num_ctx")
    trained = gguf.arch_value("context_length")
    if isinstance(asked, int) and isinstance(trained, int) and asked > trained and not long_context:
        raise ConfigError(
            "num_ctx {asked} is more than the {trained} tokens the model was trained for;"
            " use --long-context to run it anyway",
            asked=asked,
            trained=trained,
        )
    if isinstance(asked, int):
        needed, free = kv_cache_bytes(gguf, asked), available_memory()
        if needed is not None and free is not None and needed > free:
            raise ConfigError(
                "num_ctx {asked} needs {needed} for its KV cache, but {free} of memory is"
                " available",
                asked=asked,
                needed=human_size(needed),
                free=human_size(free),
            )
    threads = options.get("num_thread")
    cores = len(os.sched_getaffinity(0))
    if isinstance(threads, int) and threads > cores:
        raise ConfigError(
            "num_thread {threads} is more than the {cores} cores cairn may run on here",
            threads=threads,
            cores=cores,
        )


def check_offload(
    runtime: str, availability: Availability, options: dict[str, Any]
) -> list[Phrase]:
    """``num_gpu`` above 0 asks for a GPU: where the runtime has none, the warning to give,
    and the options set to run on the CPU."""
    asked = options.get("num_gpu")
    has_gpu = any(d.split(":")[0] != "cpu" for d in availability.devices)
    if not isinstance(asked, int) or asked <= 0 or has_gpu:
        return []
    reason = availability.no_gpu or Phrase("it drives no GPU here")
    options["num_gpu"] = 0
    return [
        Phrase(
            "num_gpu={asked} asks for GPU offload, but {runtime} cannot: {reason};"
            " running on the CPU",
            asked=asked,
            runtime=runtime,
            reason=reason,
        )
    ]
