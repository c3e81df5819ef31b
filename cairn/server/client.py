"""A client for a running ``cairn serve`` (or Ollama): what the CLI uses when a server answers.

Ollama's CLI always goes through its server; cairn's works on the store itself
and goes through a server at ``CAIRN_HOST`` when one answers (see
``docs/cli.md``, "A running server"). This module knows the server's
``/api/*`` endpoints and nothing of the CLI: it finds out cheaply whether a
server is there (``GET /`` answering ``Ollama is running`` within a short
timeout), and turns answers into typed values: :class:`RunningModel` for
``/api/ps``, :class:`ServerModel` for ``/api/tags``, the pull's NDJSON lines
as the same :class:`~cairn.registry.pull.Event` a local pull reports, and
generated text as the same :class:`~cairn.runtime_plugins.runtime.Chunk` a
runner yields (durations in seconds, as a runner gives them).

It is synchronous: the CLI is, and a stream is read line by line as it
comes. An error the server sends (``{"error": ...}``, as a body or as a
line of a stream) becomes a :class:`~cairn.errors.ServerError` (a
:class:`~cairn.errors.ModelNotFoundError` for a 404), a connection that
fails a :class:`~cairn.errors.ServerError` naming the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from cairn.errors import ModelNotFoundError, ServerBusyError, ServerError
from cairn.registry.events import Event
from cairn.runtime_plugins.prompt import Message
from cairn.runtime_plugins.runtime import Chunk

DEFAULT_PORT = 11434
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
PROBE_SECONDS = 2.0
"""How long ``GET /`` may take before the CLI decides no server is there (a refused
connection is an answer at once; this is for a busy machine or a silent firewall)."""
GREETING = "Ollama is running"
"""What ``GET /`` says, on Ollama and on ``cairn serve``."""
_NANO = 1e-9
_DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@dataclass(frozen=True)
class Address:
    """Where the server is: ``CAIRN_HOST`` as a URL, and whether it was set at all."""

    url: str
    """``http://127.0.0.1:11434``: scheme, host and port, no trailing slash."""
    given: bool
    """``CAIRN_HOST`` was set: a server the user named, not the default address."""


def address(environ: Mapping[str, str] | None = None) -> Address:
    """``CAIRN_HOST`` read as Ollama reads ``OLLAMA_HOST``: ``host:port``, ``host``,
    ``:port``, ``http(s)://host[:port]``; a bind-all address (``0.0.0.0``, ``::``) means
    this machine's loopback."""
    env = os.environ if environ is None else environ
    text = (env.get("CAIRN_HOST") or "").strip()
    scheme, sep, rest = text.partition("://")
    default_port = DEFAULT_PORT
    if not sep:
        scheme, rest = "http", text
    elif scheme in ("http", "https"):
        default_port = 80 if scheme == "http" else 443
    rest = rest.split("/", 1)[0]
    host, port = _split_host_port(rest)
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    number = int(port) if port.isdigit() and 0 < int(port) < 65536 else default_port
    shown = f"[{host}]" if ":" in host else host
    return Address(f"{scheme}://{shown}:{number}", given=bool(text))


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):  # [::1]:11434
        host, _, rest = text[1:].partition("]")
        return host, rest.removeprefix(":")
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""  # a bare host, or an IPv6 address without a port


def store_identity(root: Path) -> str | None:
    """A short name for the store at ``root`` that is the same for every path to it on
    this machine (a symlink, a bind mount) and differs on another machine; None when
    there is no store there. A server sends its own in ``/api/version`` (``store``), so
    that the CLI can tell whether it serves the store the CLI would use."""
    try:
        found = root.expanduser().stat()
    except OSError:
        return None
    key = f"{socket.gethostname()}\0{found.st_dev}\0{found.st_ino}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunningModel:
    """A model the server holds loaded (one entry of ``/api/ps``)."""

    name: str
    digest: str
    size: int
    size_vram: int
    context_length: int
    expires_at: datetime | None
    """When it unloads if still idle (far in the future: kept for ever, or in use)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunningModel:
        return cls(
            name=str(data.get("name") or data.get("model") or ""),
            digest=str(data.get("digest") or "").removeprefix("sha256:"),
            size=_int(data.get("size")),
            size_vram=_int(data.get("size_vram")),
            context_length=_int(data.get("context_length")),
            expires_at=_time(data.get("expires_at")),
        )


@dataclass(frozen=True)
class ServerModel:
    """A model in the server's store (one entry of ``/api/tags``)."""

    name: str
    digest: str
    size: int
    modified_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerModel:
        return cls(
            name=str(data.get("name") or data.get("model") or ""),
            digest=str(data.get("digest") or "").removeprefix("sha256:"),
            size=_int(data.get("size")),
            modified_at=_time(data.get("modified_at")),
        )


@dataclass(frozen=True)
class ShownLayer:
    """A layer ``/api/show`` lists besides the weights, template, system and parameters."""

    media_type: str
    digest: str
    size: int
    name: str


@dataclass(frozen=True)
class ShownModel:
    """What ``/api/show`` says of a model that the CLI uses."""

    template: str
    system: str
    parameters: str
    """Ollama's ``parameters`` text: one ``name value`` line per value."""
    license: str = ""
    messages: tuple[Message, ...] = ()
    capabilities: tuple[str, ...] = ()
    summary: tuple[tuple[str, str], ...] = ()
    """``cairn show``'s "Model" section from ``details`` and ``model_info``: architecture,
    parameters, context length, embedding length, quantization, ... (those given)."""
    projector: Mapping[str, Any] = field(default_factory=dict)
    """``projector_info``: the vision projector's metadata, when the model has one."""
    layers: tuple[ShownLayer, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShownModel:
        def text(value: Any) -> str:
            return value if isinstance(value, str) else ""

        def mapping(value: Any) -> Mapping[str, Any]:
            return value if isinstance(value, dict) else {}

        details, info = mapping(data.get("details")), mapping(data.get("model_info"))
        arch = text(info.get("general.architecture")) or text(details.get("family"))
        remote = text(data.get("remote_model"))
        if remote and text(data.get("remote_host")):
            remote = f"{remote} ({text(data.get('remote_host'))})"
        summary = [
            ("architecture", arch),
            ("parameters", text(details.get("parameter_size"))),
            ("context length", _plain(info.get(f"{arch}.context_length"))),
            ("embedding length", _plain(info.get(f"{arch}.embedding_length"))),
            ("quantization", text(details.get("quantization_level"))),
            ("renderer", text(data.get("renderer"))),
            ("parser", text(data.get("parser"))),
            ("requires", text(data.get("requires"))),
            ("remote model", remote),
        ]
        messages = [
            Message(m["role"], m["content"])
            for m in data.get("messages") or []
            if isinstance(m, dict) and isinstance(m.get("role"), str)
            if isinstance(m.get("content"), str)
        ]
        layers = [
            ShownLayer(
                text(d.get("mediaType")),
                text(d.get("digest")),
                _int(d.get("size")),
                text(d.get("name")),
            )
            for d in data.get("layers") or []
            if isinstance(d, dict)
        ]
        return cls(
            text(data.get("template")),
            text(data.get("system")),
            text(data.get("parameters")),
            license=text(data.get("license")),
            messages=tuple(messages),
            capabilities=tuple(c for c in data.get("capabilities") or [] if isinstance(c, str)),
            summary=tuple((key, value) for key, value in summary if value),
            projector=mapping(data.get("projector_info")),
            layers=tuple(layers),
        )

    def parameter(self, name: str) -> list[str]:
        """The values of one parameter (``stop`` may have several)."""
        values = []
        for line in self.parameters.splitlines():
            key, _, value = line.strip().partition(" ")
            if key == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    with contextlib.suppress(ValueError):
                        value = str(json.loads(value))
                values.append(value)
        return values


@dataclass(frozen=True)
class ServerVersion:
    version: str
    cairn: str | None
    """cairn's own version; None from Ollama itself."""
    store: str | None
    """:func:`store_identity` of the store the server serves; None when it does not say."""


def _plain(value: Any) -> str:
    """A number of ``model_info`` as text (``32768``); anything else, nothing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if "." in text:  # Go writes nanoseconds; Python reads at most microseconds
        head, _, tail = text.partition(".")
        digits = tail[: len(tail) - len(tail.lstrip("0123456789"))]
        text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _stats(data: Mapping[str, Any]) -> dict[str, Any]:
    """The last line's statistics as a runner gives them: durations in seconds."""
    stats: dict[str, Any] = {
        key: data[key] for key in ("prompt_eval_count", "eval_count") if key in data
    }
    for key in _DURATIONS:
        if isinstance(data.get(key), (int, float)):
            stats[key] = data[key] * _NANO
    if isinstance(data.get("done_reason"), str):
        stats["done_reason"] = data["done_reason"]
    return stats


class ServerClient:
    """Ollama's ``/api/*`` on one server. Use as a context manager, or :meth:`close`."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No read timeout: a load, or a queue before it, may take minutes; a dead server
        # closes the connection.
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(30.0, read=None),
            transport=transport,
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ServerClient:
        """The server at ``CAIRN_HOST``, with ``CAIRN_API_KEY`` as its Bearer key if set."""
        env = os.environ if environ is None else environ
        return cls(address(env).url, api_key=env.get("CAIRN_API_KEY") or None)

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing -------------------------------------------------------------

    def answers(self, timeout: float = PROBE_SECONDS) -> bool:
        """Whether an Ollama-compatible server answers here: ``GET /`` says so in time
        (a 401 counts: a server that wants a key is there, and says so on the next call)."""
        try:
            response = self._http.get("/", timeout=timeout)
        except httpx.HTTPError:
            return False
        if response.status_code == 401:
            return True
        return response.status_code == 200 and response.text.startswith(GREETING)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            self._fail(response.status_code, response.text, path)
        return response.json() if response.content else None

    def _stream(self, path: str, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        """The NDJSON objects of a streamed answer, each as it arrives; an ``error``
        line raises."""
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._fail(response.status_code, response.text, path)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        data = json.loads(line)
                    except ValueError:
                        raise ServerError(
                            "the server at {url} sent a line that is not JSON: {line!r:.80}",
                            url=self.url,
                            line=line,
                        ) from None
                    if not isinstance(data, dict):
                        continue
                    if "error" in data:
                        self._fail(response.status_code, json.dumps(data), path)
                    yield data
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: httpx.HTTPError) -> ServerError:
        return ServerError(
            "cannot reach the server at {url}: {error}",
            url=self.url,
            error=str(exc) or type(exc).__name__,
        )

    def _fail(self, status: int, text: str, path: str) -> None:
        """Raise the error in a body: Ollama's ``{"error": "..."}``, else the text."""
        message = text.strip()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not data.get("error"):
            if status in (404, 405):  # no JSON error: the route itself is missing
                raise ServerError(
                    "the server at {url} does not offer {path}", url=self.url, path=path
                )
        else:
            error = data["error"]
            message = error.get("message", "") if isinstance(error, dict) else str(error)
        message = message[:500] or f"HTTP {status}"
        if status == 404:
            raise ModelNotFoundError(
                "the server at {url} says: {error}", url=self.url, error=message
            )
        if status == 503:
            raise ServerBusyError("the server at {url} says: {error}", url=self.url, error=message)
        raise ServerError("the server at {url} says: {error}", url=self.url, error=message)

    # -- endpoints --------------------------------------------------------------

    def version(self) -> ServerVersion:
        data = self._request("GET", "/api/version") or {}
        cairn, store = data.get("cairn"), data.get("store")
        return ServerVersion(
            str(data.get("version") or ""),
            cairn if isinstance(cairn, str) else None,
            store if isinstance(store, str) else None,
        )

    def ps(self) -> list[RunningModel]:
        data = self._request("GET", "/api/ps") or {}
        return [RunningModel.from_json(m) for m in data.get("models") or [] if isinstance(m, dict)]

    def tags(self) -> list[ServerModel]:
        data = self._request("GET", "/api/tags") or {}
        return [ServerModel.from_json(m) for m in data.get("models") or [] if isinstance(m, dict)]

    def show(self, name: str) -> ShownModel:
        data = self._request("POST", "/api/show", {"model": name})
        return ShownModel.from_json(data if isinstance(data, dict) else {})

    def create(
        self,
        name: str,
        source: str,
        system: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        messages: list[Message] | None = None,
    ) -> None:
        """``/api/create`` of ``name`` from the model ``source``, with a system message,
        parameters and messages as given (what ``ollama run``'s ``/save`` sends)."""
        body: dict[str, Any] = {"model": name, "from": source, "stream": False}
        if system is not None:
            body["system"] = system
        if parameters:
            body["parameters"] = dict(parameters)
        if messages:
            body["messages"] = [{"role": m.role, "content": m.content} for m in messages]
        self._request("POST", "/api/create", body)

    def load(
        self, name: str, options: Mapping[str, Any] | None = None, keep_alive: Any = None
    ) -> float:
        """Load ``name`` (a generate with no prompt, as ``ollama run`` does before the first
        message); the seconds it took to load, as the server says."""
        body: dict[str, Any] = {"model": name, "stream": False}
        if options:
            body["options"] = dict(options)
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        data = self._request("POST", "/api/generate", body) or {}
        return float(data.get("load_duration") or 0) * _NANO

    def stop(self, name: str) -> None:
        """Unload ``name`` now: a generate with no prompt and ``keep_alive`` 0, as ``ollama
        stop`` sends it."""
        self._request("POST", "/api/generate", {"model": name, "keep_alive": 0, "stream": False})

    def pull(self, name: str, insecure: bool = False) -> Iterator[Event]:
        """The server pulls ``name`` into its store; its progress as pull events."""
        body: dict[str, Any] = {"model": name, "stream": True}
        if insecure:
            body["insecure"] = True
        for data in self._stream("/api/pull", body):
            status = data.get("status")
            if not isinstance(status, str):
                continue
            digest = data.get("digest")
            yield Event(
                status,
                digest if isinstance(digest, str) and digest else None,
                _int(data["total"]) if "total" in data else None,
                _int(data["completed"]) if "completed" in data else None,
            )

    def generate(
        self,
        name: str,
        prompt: str,
        options: Mapping[str, Any] | None = None,
        output_format: str | None = None,
        keep_alive: Any = None,
    ) -> Generator[Chunk, None, None]:
        """``/api/generate`` streamed: text chunks, then a ``done`` chunk with the stats."""
        body = self._body(name, options, output_format, keep_alive)
        body["prompt"] = prompt
        for data in self._stream("/api/generate", body):
            if data.get("done"):
                yield Chunk(done=True, stats=_stats(data))
                return
            text = data.get("response")
            if isinstance(text, str) and text:
                yield Chunk(text)

    def chat(
        self,
        name: str,
        messages: list[Message],
        options: Mapping[str, Any] | None = None,
        output_format: str | None = None,
        keep_alive: Any = None,
    ) -> Generator[Chunk, None, None]:
        """``/api/chat`` streamed: the assistant's text in chunks, then a ``done`` chunk."""
        body = self._body(name, options, output_format, keep_alive)
        body["messages"] = [{"role": m.role, "content": m.content} for m in messages]
        for data in self._stream("/api/chat", body):
            if data.get("done"):
                yield Chunk(done=True, stats=_stats(data))
                return
            message = data.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            if isinstance(text, str) and text:
                yield Chunk(text)

    @staticmethod
    def _body(
        name: str, options: Mapping[str, Any] | None, output_format: str | None, keep_alive: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": name, "stream": True}
        if options:
            body["options"] = dict(options)
        if output_format:
            body["format"] = output_format
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return body
