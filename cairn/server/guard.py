"""What stands before the API: keys, CORS, body limits, and ``/metrics``.

The middlewares, outermost first:

- ``counted``: every request is counted for ``/metrics`` by its route's path
  template, method and status (a client gone mid-answer counts as 499);
- ``cors``: a request with an ``Origin`` header is let in only from an allowed
  origin (``CAIRN_ORIGINS`` and the loopback ones, as Ollama allows them), and
  a preflight is answered here; any other origin gets a 403 with no CORS
  headers, so a browser page elsewhere can neither read nor run anything;
- ``keys``: with ``CAIRN_API_KEYS`` set, every request but ``GET /`` and
  ``HEAD /`` needs one of them, as ``Authorization: Bearer KEY`` or, as
  Anthropic's clients send it, ``x-api-key: KEY``;
- ``limited``: a body past the size limit (aiohttp's ``client_max_size``) is a
  413 in the API's error shape rather than aiohttp's plain text.

Refusals take the error shape of the API asked: Ollama's ``{"error": ...}`` on
``/api/*``, OpenAI's error object on ``/v1/*``, Anthropic's on ``/v1/messages``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from cairn.errors import CairnError, ConfigError
from cairn.manifests.reference import parse_reference
from cairn.server.fields import MAX_BODY, error_response

if TYPE_CHECKING:
    from cairn.server.api import Api, Settings
    from cairn.server.fields import Handler
    from cairn.server.scheduler import Loader, Want

LOOPBACK_ORIGINS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    *("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"),
)
"""Origins let in whatever ``CAIRN_ORIGINS`` says: Ollama's list (``envconfig``), and [::1]."""

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
"""The methods counted by name in ``/metrics`` (any other: ``other``)."""
CORS_METHODS = ", ".join(METHODS)
CORS_MAX_AGE = str(12 * 3600)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OPEN = frozenset({("GET", "/"), ("HEAD", "/")})
"""What needs no key: the liveness check every Ollama client makes."""

_ORIGIN_KEY = web.RequestKey("cairn_cors_origin", str)
_METRICS_KEY: web.AppKey[Metrics] = web.AppKey("cairn_metrics")


# -- refusals in the API's shape ---------------------------------------------------


def refuse(
    request: web.Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``message`` with ``status`` in the shape of the API the request asked."""
    response = error_response(request, status, message, "invalid_request_error")
    response.headers.update(headers or {})
    return response


# -- listening beyond this machine -------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as in ``CAIRN_HOST``) is reachable from this machine only."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def check_exposure(host: str, settings: Settings) -> None:
    """Refuse to serve a non-loopback address with no key unless told to."""
    if settings.api_keys or settings.insecure_no_auth or is_loopback(host):
        return
    raise ConfigError(
        "{host} is reachable from other machines and no API key is set: set CAIRN_API_KEYS"
        " (comma-separated keys), or pass --insecure-no-auth to serve it to anyone",
        host=host,
    )


# -- CORS --------------------------------------------------------------------------


def _pattern(origin: str) -> re.Pattern[str]:
    """An allowed origin as a pattern: ``*`` alone is any origin; elsewhere it stands
    for a port or the labels of a host name (letters, digits, dots, dashes)."""
    if origin == "*":
        return re.compile(r".*")
    parts = [re.escape(part) for part in origin.lower().rstrip("/").split("*")]
    return re.compile("[a-z0-9._-]*".join(parts))


class Origins:
    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.patterns = [_pattern(o) for o in (*allowed, *LOOPBACK_ORIGINS) if o]

    def allow(self, origin: str) -> bool:
        origin = origin.lower()
        return any(p.fullmatch(origin) for p in self.patterns)


def _cors(origins: Origins) -> Any:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        if not origins.allow(origin):
            return refuse(request, 403, f"origin {origin!r:.100} is not allowed (CAIRN_ORIGINS)")
        request[_ORIGIN_KEY] = origin
        wanted = request.headers.get("Access-Control-Request-Method")
        if request.method == "OPTIONS" and wanted:
            headers = {
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Max-Age": CORS_MAX_AGE,
            }
            asked = request.headers.get("Access-Control-Request-Headers")
            if asked:
                headers["Access-Control-Allow-Headers"] = asked
            return web.Response(status=204, headers=headers)  # origin added on prepare
        return await handler(request)

    return cors


async def _cors_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Headers go out when a response starts (a stream's, too): the origin's go with them."""
    origin = request.get(_ORIGIN_KEY)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers.add("Vary", "Origin")


# -- keys --------------------------------------------------------------------------


def presented_key(request: web.Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip() or None


def key_matches(key: str, keys: tuple[str, ...]) -> bool:
    """In constant time for each key: every key is compared, whichever matches."""
    given = key.encode(errors="surrogateescape")  # as aiohttp decoded the header
    found = False
    for each in keys:
        found |= hmac.compare_digest(given, each.encode(errors="surrogateescape"))
    return found


def _keys(keys: tuple[str, ...]) -> Any:
    challenge = {"WWW-Authenticate": "Bearer"}

    @web.middleware
    async def keyed(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method, request.path) in OPEN:
            return await handler(request)
        key = presented_key(request)
        if key is None:
            message = "an API key is required: send Authorization: Bearer <key>"
            return refuse(request, 401, message, challenge)
        if not key_matches(key, keys):
            return refuse(request, 401, "the API key is not valid", challenge)
        return await handler(request)

    return keyed


# -- hosts -------------------------------------------------------------------------


def local_name(host: str) -> bool:
    """Whether a request's ``Host`` names this machine as only it can reach it: a
    loopback address, ``localhost`` (or a name under it), or this machine's own name."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    name = name.rstrip(".")
    if name in ("localhost", socket.gethostname().lower()) or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@web.middleware
async def local_hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a loopback address, only requests that name this machine: a page elsewhere that
    rebinds its own name to 127.0.0.1 (DNS rebinding) names itself, and is refused."""
    if not local_name(request.host):
        return refuse(request, 403, f"host {request.host[:80]!r} is not this machine")
    return await handler(request)


# -- bodies ------------------------------------------------------------------------


@web.middleware
async def limited(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        message = f"the request body is larger than the limit of {MAX_BODY} bytes"
        return refuse(request, 413, message)


# -- metrics -----------------------------------------------------------------------


def _display(model: str) -> str:
    try:
        return parse_reference(model).display
    except CairnError:
        return model


async def _template(request: web.Request) -> str:
    """The path template of the route a request went to (a label of few values): for
    a method no route has (a preflight's OPTIONS), the route's path all the same."""
    resource = request.match_info.route.resource
    if resource is not None:
        return resource.canonical
    for each in request.app.router.resources():
        _match, methods = await each.resolve(request)
        if methods:
            return each.canonical
    return "(unmatched)"


class Metrics:
    """The app's own registry (never the process-wide one): what ``/metrics`` shows."""

    def __init__(self, api: Api) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cairn_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["path", "method", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "cairn_http_errors",
            "HTTP requests answered with a status of 400 or more, by route and method.",
            ["path", "method"],
            registry=self.registry,
        )
        self.input_tokens = Counter(
            "cairn_input_tokens",
            "Prompt tokens evaluated, by model.",
            ["model"],
            registry=self.registry,
        )
        self.output_tokens = Counter(
            "cairn_output_tokens",
            "Tokens generated, by model.",
            ["model"],
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "cairn_model_load_seconds",
            "Seconds a model took to load into a runner.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        scheduler = api.scheduler
        Gauge(
            "cairn_queue_depth",
            "Requests waiting for a model or a turn.",
            registry=self.registry,
        ).set_function(lambda: scheduler.waiting)
        Gauge(
            "cairn_loaded_models",
            "Models loaded now.",
            registry=self.registry,
        ).set_function(lambda: len(scheduler.status()))

    async def count(self, request: web.Request, status: int) -> None:
        path = await _template(request)
        method = request.method if request.method in METHODS else "other"
        self.requests.labels(path, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(path, method).inc()

    def observe(self, model: str, stats: Mapping[str, Any]) -> None:
        """An answer's end (an :attr:`Api.observers` entry): its tokens."""
        name = _display(model)
        self.input_tokens.labels(name).inc(int(stats.get("prompt_eval_count") or 0))
        self.output_tokens.labels(name).inc(int(stats.get("eval_count") or 0))

    async def page(self, request: web.Request) -> web.StreamResponse:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})


class TimedLoader:
    """The scheduler's loader, timing each load for ``cairn_model_load_seconds``."""

    def __init__(self, inner: Loader, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def load(self, want: Want) -> Any:
        started = time.monotonic()
        loaded = await self.inner.load(want)
        elapsed = time.monotonic() - started
        self.metrics.load_seconds.labels(_display(want.model)).observe(elapsed)
        return loaded

    async def unload(self, loaded: Any) -> None:
        await self.inner.unload(loaded)


@web.middleware
async def counted(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before its answer ended
        raise
    finally:
        await request.app[_METRICS_KEY].count(request, status)


# -- the app -----------------------------------------------------------------------


def middlewares(api: Api) -> list[Any]:
    settings = api.settings
    found: list[Any] = [counted, _cors(Origins(settings.origins))]
    if settings.loopback_only:
        found.append(local_hosts)
    if settings.api_keys:
        found.append(_keys(settings.api_keys))
    return [*found, limited]


def setup(app: web.Application, api: Api) -> None:
    """Routes and hooks of its own (``/metrics``)."""
    metrics = Metrics(api)
    app[_METRICS_KEY] = metrics
    api.observers.append(metrics.observe)
    api.scheduler.loader = TimedLoader(api.scheduler.loader, metrics)
    app.on_response_prepare.append(_cors_headers)
    app.add_routes([web.get("/metrics", metrics.page)])
