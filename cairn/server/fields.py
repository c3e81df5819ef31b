"""What every endpoint of ``cairn serve`` shares: a request's fields, checked, and errors
in the shape of the API asked (Ollama's, OpenAI's or Anthropic's)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cairn.errors import (
    CairnError,
    ConfigError,
    InvalidReferenceError,
    ModelfileError,
    ModelNotFoundError,
    ServerBusyError,
    TemplateError,
)
from cairn.server.scheduler import FOREVER

MAX_BODY = 32 << 20
"""The largest body read whole (a JSON request); blob uploads stream past it."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """A request Ollama would answer with 400."""


MOST_KEEP_ALIVE = 10 * 365 * 86400.0
"""Longer than this is for ever."""


def duration(text: Any, default: float) -> float:
    """Seconds from Ollama's ``keep_alive``: a number of seconds, or "5m", "1h", "-1"
    (negative: for ever; past ten years: for ever; not a number: a 400)."""
    seconds = _duration(text, default)
    if seconds != seconds:  # NaN
        raise BadRequest(f"keep_alive {text!r:.40} is not a duration")
    return FOREVER if seconds > MOST_KEEP_ALIVE else seconds


def _duration(text: Any, default: float) -> float:
    if text is None:
        return default
    if isinstance(text, bool):
        raise BadRequest(f"keep_alive {text!r} is not a duration")
    if isinstance(text, (int, float)):
        return float(text) if text >= 0 else FOREVER
    from cairn.durations import go_duration

    value = str(text).strip()
    try:
        number = float(value)  # a number as a string: seconds
    except ValueError:
        seconds = go_duration(value)
        if seconds is None:
            raise BadRequest(f"keep_alive {text!r:.40} is not a duration") from None
        number = seconds
    return number if number >= 0 else FOREVER


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def flag(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false")
    return value


def object_field(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise BadRequest(f"{key} must be an object")
    return value


def error_response(request: web.Request, status: int, message: str, kind: str) -> web.Response:
    """The error in the shape of the API asked: Anthropic's on ``/v1/messages``, OpenAI's
    object on the rest of ``/v1/``, else Ollama's."""
    if request.path.startswith("/v1/messages"):
        from cairn.server.anthropic import error_body

        return web.json_response(error_body(status, message), status=status)
    if request.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return web.json_response(body, status=status)
    return web.json_response({"error": message}, status=status)


_CLIENT_ERRORS = (ConfigError, InvalidReferenceError, ModelfileError, TemplateError)


Stream = tuple[web.StreamResponse, str]
_STREAM: web.RequestKey[Stream] = web.RequestKey("cairn.stream", tuple)


def streaming(request: web.Request, response: web.StreamResponse, shape: str) -> None:
    """Say that ``response`` is the request's answer streamed as ``shape`` (``ndjson``:
    Ollama's lines; ``openai``, ``anthropic``: their server-sent events): an error once
    it has begun is told inside it, in that shape, not as a second response."""
    request[_STREAM] = (response, shape)


async def _told_in_stream(
    request: web.Request, status: int, message: str, kind: str
) -> web.StreamResponse | None:
    stream = request.get(_STREAM)
    if stream is None or not stream[0].prepared:
        return None
    response: web.StreamResponse = stream[0]
    shape = stream[1]
    if shape == "anthropic":
        from cairn.server.anthropic import error_body

        text = f"event: error\ndata: {json.dumps(error_body(status, message))}\n\n"
    elif shape == "openai":
        error = {"message": message, "type": kind, "param": None, "code": None}
        text = f"data: {json.dumps({'error': error})}\n\ndata: [DONE]\n\n"
    else:
        text = json.dumps({"error": message}) + "\n"
    with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone too
        await response.write(text.encode())
        await response.write_eof()
    return response


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        status, message, kind = 400, str(exc), "invalid_request_error"
    except ModelNotFoundError as exc:
        status, message, kind = 404, str(exc), "not_found_error"
    except ServerBusyError as exc:
        status, message, kind = 503, str(exc), "server_error"
    except _CLIENT_ERRORS as exc:  # what was asked is wrong: options, names, num_ctx
        status, message, kind = 400, str(exc), "invalid_request_error"
    except CairnError as exc:
        status, message, kind = 500, str(exc), "api_error"
    told = await _told_in_stream(request, status, message, kind)
    return told if told is not None else error_response(request, status, message, kind)
