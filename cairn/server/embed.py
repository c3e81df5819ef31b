"""Embeddings: ``/api/embed``, ``/api/embeddings`` and OpenAI's ``/v1/embeddings``.

As Ollama answers them (``server/routes.go``, ``openai/openai.go``):

- ``/api/embed`` takes ``input`` (a string or a list of strings), ``truncate``
  (default true: a text longer than the context is cut to fit; false: it is a
  400), ``dimensions``, ``options`` and ``keep_alive``, and answers the vectors
  L2-normalised (cut to ``dimensions`` and normalised again), with
  ``total_duration``, ``load_duration`` (nanoseconds) and ``prompt_eval_count``.
  No input loads the model and answers no vectors.
- ``/api/embeddings`` (the older one) takes one ``prompt`` and answers one
  ``embedding``, not normalised; an empty prompt loads the model.
- ``/v1/embeddings`` is ``/api/embed`` in OpenAI's shapes, the vectors as
  floats or (``encoding_format: base64``) little-endian float32 bytes.

The model runs with the same load that generates: the runtime computes an
embedding for the last token only (see the llama.cpp plugin's ``embed``).
"""

from __future__ import annotations

import base64
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cairn.errors import InputTooLongError
from cairn.server.fields import BadRequest
from cairn.server.loader import embed

if TYPE_CHECKING:
    from cairn.server.api import Api


@dataclass(frozen=True)
class Embedded:
    """What the model gave for a request's texts."""

    vectors: list[list[float]]
    tokens: int
    load_seconds: float
    total_seconds: float


def _bad(message: str) -> Exception:
    return BadRequest(message)


def _texts(value: Any, empty_is_one: bool) -> list[str]:
    """Ollama's ``input``: a string (empty: none, or for OpenAI one empty text), a list
    of strings, or nothing."""
    if isinstance(value, str):
        return [value] if value or empty_is_one else []
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise _bad("invalid input type")
        return list(value)
    if value is None:
        return []
    raise _bad("invalid input type")


def _dimensions(data: dict[str, Any]) -> int:
    value = data.get("dimensions")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad("dimensions must be an integer")
    return value


def normalise(vector: Sequence[float]) -> list[float]:
    """``vector`` at length one (a zero vector stays zero), as Ollama's ``normalize``."""
    norm = math.sqrt(sum(x * x for x in vector))
    scale = 1.0 / max(norm, 1e-12)
    return [x * scale for x in vector]


def _finite(vector: Sequence[float]) -> None:
    if not all(math.isfinite(x) for x in vector):
        raise _bad("embedding contains NaN or Inf values")


def _unit(vectors: list[list[float]], dimensions: int) -> list[list[float]]:
    """Normalised, then cut to ``dimensions`` (when fewer) and normalised again."""
    out = []
    for vector in vectors:
        _finite(vector)
        unit = normalise(vector)
        if 0 < dimensions < len(unit):
            unit = normalise(unit[:dimensions])
        out.append(unit)
    return out


async def _embed(
    api: Api,
    name: str,
    texts: list[str],
    options: Any,
    keep_alive: Any,
    truncate: bool = True,
) -> Embedded:
    """``texts`` embedded by ``name`` under a lease on it (none: the model is loaded).
    A client gone (cancelled) or a runner dead: that runner leaves the model's pool."""
    job = await api.job(name, options, None, keep_alive, prompt="", raw=True)
    started = time.monotonic()
    try:
        async with api.scheduler.lease(job.want, job.keep_alive) as lease:
            loaded_in = time.monotonic() - started
            if not texts:
                return Embedded([], 0, loaded_in, time.monotonic() - started)
            try:
                found = await embed(lease.loaded, texts, truncate)
            except InputTooLongError as exc:  # the request's fault: the runner is fine
                raise _bad(str(exc)) from None
    finally:
        await api.unload_if_deleted(job.want.model)
    tokens = sum(e.tokens for e in found)
    total = time.monotonic() - started
    stats = {"prompt_eval_count": tokens, "load_duration": loaded_in, "total_duration": total}
    for observe in api.observers:
        observe(job.want.model, stats)
    return Embedded([e.vector for e in found], tokens, loaded_in, total)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def routes(api: Api) -> list[web.AbstractRouteDef]:
    async def ollama_embed(request: web.Request) -> web.StreamResponse:
        data = await api.body(request)
        name = api.name_of(data)
        texts = _texts(data.get("input"), empty_is_one=False)
        truncate = data.get("truncate", True)
        if not isinstance(truncate, bool):
            raise _bad("truncate must be true or false")
        dimensions = _dimensions(data)
        done = await _embed(api, name, texts, data.get("options"), data.get("keep_alive"), truncate)
        if not texts:  # Ollama's answer to a load
            return web.json_response({"model": name, "embeddings": []})
        return web.json_response(
            {
                "model": name,
                "embeddings": _unit(done.vectors, dimensions),
                "total_duration": _ns(done.total_seconds),
                "load_duration": _ns(done.load_seconds),
                "prompt_eval_count": done.tokens,
            }
        )

    async def ollama_embeddings(request: web.Request) -> web.StreamResponse:
        data = await api.body(request)
        name = api.name_of(data)
        prompt = data.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise _bad("prompt must be a string")
        texts = [prompt] if prompt else []
        done = await _embed(api, name, texts, data.get("options"), data.get("keep_alive"))
        vector = done.vectors[0] if done.vectors else []
        _finite(vector)
        return web.json_response({"embedding": vector})

    async def openai_embeddings(request: web.Request) -> web.StreamResponse:
        data = await api.body(request)
        name = api.name_of(data)
        encoding = data.get("encoding_format") or "float"
        if not isinstance(encoding, str) or encoding.lower() not in ("float", "base64"):
            raise _bad(
                f"Invalid value for 'encoding_format' = {encoding!s:.40}."
                " Supported values: ['float', 'base64']."
            )
        value = data.get("input")
        if value is None or value == []:
            raise _bad("invalid input")
        texts = _texts(value, empty_is_one=True)
        dimensions = _dimensions(data)
        done = await _embed(api, name, texts, None, None)
        vectors = _unit(done.vectors, dimensions)

        def encoded(vector: list[float]) -> list[float] | str:
            if encoding.lower() == "float":
                return vector
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "embedding": encoded(v), "index": i}
                    for i, v in enumerate(vectors)
                ],
                "model": name,
                "usage": {"prompt_tokens": done.tokens, "total_tokens": done.tokens},
            }
        )

    return [
        web.post("/api/embed", ollama_embed),
        web.post("/api/embeddings", ollama_embeddings),
        web.post("/v1/embeddings", openai_embeddings),
    ]
