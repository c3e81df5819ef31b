"""Ollama's ``/api/show`` answer for a local model: one builder for ``cairn serve`` and
``cairn show --json``.

Pure: it reads what :func:`~cairn.manifests.show.show_model` found and the
store, and imports nothing of the server (no aiohttp), so the CLI loads it
cheaply. The shape is Ollama's ``api.ShowResponse``: ``parameters`` as one
``name value`` line per value (the name padded to 30, the value as Go's
``%#v`` writes it), ``model_info`` with the GGUF's own keys
(``gemma3.context_length``), ``capabilities`` decided as Ollama decides them,
and ``modified_at`` in RFC 3339. Fields Ollama leaves out when empty are left
out here too. cairn adds ``name``, ``model``, ``digest``, ``size`` and, for
Ollama's draft, tensor, JSON and embed layers, ``layers``; Ollama's clients
ignore keys they do not know.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from cairn.errors import ModelFormatError
from cairn.gguf import GGML_TYPES, ArrayValue, GGUFInfo, read_gguf_file
from cairn.manifests import mediatypes as mt

if TYPE_CHECKING:
    from cairn.manifests.models import Models
    from cairn.manifests.show import ModelDetails

SHORT_ARRAY = 5
"""Without ``verbose``, Ollama sends arrays of more items than this as ``[]``."""
NOT_INFO = ("general.name", "tokenizer.chat_template")
"""GGUF keys Ollama leaves out of ``model_info``."""
TEMPLATE_CAPABILITIES = (("tools", "tools"), ("suffix", "insert"), ("thinking", "thinking"))
"""A name a Go template uses, and the capability it shows."""
OMIT_EMPTY = (
    "license",
    "modelfile",
    "parameters",
    "template",
    "system",
    "renderer",
    "parser",
    "messages",
    "remote_model",
    "remote_host",
    "projector_info",
    "tensors",
    "capabilities",
    "requires",
    "layers",
    "signatures",
)


def show_response(models: Models, shown: ModelDetails, verbose: bool = False) -> dict[str, Any]:
    """What Ollama's ``/api/show`` answers for ``shown`` (``verbose``: whole arrays, tensors)."""
    config = shown.config
    model = shown.model
    answer: dict[str, Any] = {
        "license": "\n".join(shown.licenses),
        "modelfile": shown.modelfile(models),
        "parameters": parameters_text(shown.parameters),
        "template": shown.template or "",
        "system": shown.system or "",
        "renderer": _text(config.get("renderer")),
        "parser": _text(config.get("parser")),
        "details": details(shown),
        "messages": [{"role": m.role, "content": m.content} for m in shown.messages],
        "remote_model": _text(config.get("remote_model")),
        "remote_host": _text(config.get("remote_host")),
        "model_info": model_info(shown, verbose),
        "projector_info": projector_info(models, shown, verbose),
        "tensors": tensors(models, shown) if verbose else [],
        "capabilities": capabilities(shown),
        "modified_at": rfc3339(model.modified),
        "requires": _text(config.get("requires")),
        "name": model.reference.display,
        "model": str(model.reference),
        "digest": str(model.manifest.digest),
        "size": model.size,
        "layers": [
            {"mediaType": d.media_type, "digest": str(d.digest), "size": d.size}
            | ({"name": d.name} if d.name else {})
            for d in shown.other_layers
        ],
        "signatures": signatures(models, shown),
    }
    return {k: v for k, v in answer.items() if v or k not in OMIT_EMPTY}


def signatures(models: Models, shown: ModelDetails) -> list[dict[str, str]]:
    """The model's stored signatures as listed, not verified (``cairn verify --key`` does):
    the referrer's digest, when it was made, and who it says signed it (a key's hint or
    a certificate's subject)."""
    from cairn.errors import CairnError
    from cairn.signing.store import signatures as stored

    found = stored(models, shown.model)
    if not found:
        return []
    from cairn.signing.oms import Bundle  # cryptography: only for a signed model

    listed: list[dict[str, str]] = []
    for signature in found:
        entry = {"digest": str(signature.digest), "created": signature.created or ""}
        try:
            if signature.bundle is None:
                entry["problem"] = "the bundle blob is missing"
            else:
                bundle = Bundle.from_bytes(signature.bundle)
                if bundle.certificates:
                    entry["certificate"] = bundle.certificates[0].subject.rfc4514_string()
                elif bundle.hint:
                    entry["key_hint"] = bundle.hint
        except CairnError as exc:
            entry["problem"] = str(exc)
        listed.append(entry)
    return listed


def details(shown: ModelDetails) -> dict[str, Any]:
    """Ollama's ``details``, as ``/api/show`` and ``/api/tags`` give them."""
    summary = shown.summary()
    family = _text(summary.get("architecture"))
    families = shown.config.get("model_families")
    if not (isinstance(families, list) and families and all(isinstance(f, str) for f in families)):
        families = [family] if family else None
    return {
        "parent_model": "",
        "format": _text(shown.config.get("model_format")) or "gguf",
        "family": family,
        "families": families,
        "parameter_size": _text(summary.get("parameters")),
        "quantization_level": _text(summary.get("quantization")),
    }


def model_info(shown: ModelDetails, verbose: bool = False) -> dict[str, Any]:
    """The GGUF metadata under its own keys; arrays of more than five items are ``[]``
    unless ``verbose`` (and, verbose, those the header reader kept: up to 256 items)."""
    if shown.gguf is None:
        return _remote_info(shown.config)
    return {
        key: info_value(value, verbose)
        for key, value in shown.gguf.metadata.items()
        if key not in NOT_INFO
    }


def projector_info(models: Models, shown: ModelDetails, verbose: bool = False) -> dict[str, Any]:
    """The metadata of the vision projector's GGUF, when the model has one."""
    layer = shown.model.manifest.layer_of(mt.OLLAMA_PROJECTOR)
    if layer is None:
        return {}
    from cairn.manifests.show import gguf_header

    header = gguf_header(models, layer.digest)
    if header is None:
        return {}
    return {k: info_value(v, verbose) for k, v in header.metadata.items() if k not in NOT_INFO}


def tensors(models: Models, shown: ModelDetails) -> list[dict[str, Any]]:
    """Each tensor's name, type and shape, read from the weights' GGUF header."""
    if shown.gguf is None or shown.model_blob is None:
        return []
    header: GGUFInfo | None = None
    with models.blobs.open(shown.model_blob) as f, contextlib.suppress(ModelFormatError):
        header = read_gguf_file(f)
    if header is None:
        return []
    return [
        {"name": t.name, "type": tensor_type(t.ggml_type), "shape": list(t.shape)}
        for t in header.tensors
    ]


def tensor_type(ggml_type: int) -> str:
    known = GGML_TYPES.get(ggml_type)
    return known[0] if known else str(ggml_type)


def capabilities(shown: ModelDetails) -> list[str]:
    """What the model can do, decided as Ollama's ``Model.Capabilities`` decides it.

    The config's own list first; then, for GGUF weights, ``embedding`` when the
    header names a pooling type and ``completion`` otherwise, ``vision`` and
    ``audio`` for the encoders it holds; ``vision`` for a projector layer; from
    the template, ``tools`` (it uses ``.Tools``), ``insert`` (``.Suffix``) and
    ``thinking`` (``.Thinking``); a model without a template layer is judged by
    the GGUF's chat template instead (it mentions ``tools`` or ``tool_call``;
    it has ``<think>`` and ``</think>``).
    """
    found: list[str] = []

    def add(capability: str) -> None:
        if capability not in found:
            found.append(capability)

    listed = shown.config.get("capabilities")
    for capability in listed if isinstance(listed, list) else ():
        if isinstance(capability, str) and capability:
            add(capability)
    gguf = shown.gguf
    if gguf is not None:
        chat = gguf.metadata.get("tokenizer.chat_template")
        if shown.template is None and isinstance(chat, str) and chat:
            if "tools" in chat or "tool_call" in chat:
                add("tools")
            if _thinks(chat):
                add("thinking")
        add("completion" if gguf.arch_value("pooling_type") is None else "embedding")
        if gguf.arch_value("vision.block_count") is not None:
            add("vision")
        if gguf.arch_value("audio.block_count") is not None:
            add("audio")
    if shown.model.manifest.layer_of(mt.OLLAMA_PROJECTOR) is not None:
        add("vision")
    if shown.template:
        names = template_names(shown.template)
        for name, capability in (
            ("tools", "tools"),
            ("suffix", "insert"),
            ("thinking", "thinking"),
        ):
            if name in names:
                add(capability)
    if shown.config.get("model_family") in ("gptoss", "gpt-oss"):
        add("thinking")
    return found


def _thinks(chat_template: str) -> bool:
    if "<think>" in chat_template and "</think>" in chat_template:
        return True
    splits = "content.split('</think>')" in chat_template or (
        'content.split("</think>")' in chat_template
    )
    return splits and "reasoning_content" not in chat_template


_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\'(?:[^\'\\]|\\.)*\'|/\*.*?\*/', re.DOTALL)
_FIELDS = re.compile(r"(?<![\w.)\]])(\$\w*)?((?:\.[A-Za-z_]\w*)+)")


def template_names(template: str) -> set[str]:
    """The names a Go template's actions use, lower-cased, as Ollama's ``Template.Vars``:
    ``{{ .Tools }}`` and ``{{ range $.Messages }}`` give ``tools``, ``$`` and ``messages``."""
    names: set[str] = set()
    for action in _ACTION.findall(template):
        for variable, chain in _FIELDS.findall(_QUOTED.sub(" ", action)):
            if variable:
                names.add(variable.lower())
            names.update(part.lower() for part in chain.split(".") if part)
    return names


def parameters_text(parameters: dict[str, Any]) -> str:
    """Ollama's ``parameters``: ``name value`` per value, the name padded to 30 columns."""
    return "\n".join(
        f"{key:<30} {go_value(item)}"
        for key, value in parameters.items()
        for item in (value if isinstance(value, list) else [value])
    )


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def go_value(value: Any) -> str:
    """``value`` as Go's ``%#v`` writes what JSON decoded: strings quoted, numbers as float64."""
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return go_float(float(value))
    return str(value)


def go_plain(value: Any) -> str:
    """``value`` as Go's ``%v`` writes what JSON decoded (``ollama show -v``'s metadata)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return go_float(float(value))
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_plain(v) for v in value) + "]"
    return str(value)


def go_float(value: float) -> str:
    """Go's ``%v`` of a float64: the shortest digits, an exponent from 1e+06 up or below 1e-04."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    point = len(digit_tuple) + int(exponent)  # the value is 0.<digits> x 10^point
    minus = "-" if sign else ""
    power = point - 1
    if power < -4 or power >= 6:
        mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
        return f"{minus}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{minus}{digits}{'0' * (point - len(digits))}"
    return f"{minus}{digits[:point]}.{digits[point:]}"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_GO_ESCAPES |= {"\v": "\\v", '"': '\\"', "\\": "\\\\"}


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote``: printable characters as they are, the rest escaped."""
    out = []
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable() or char == " ":
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def info_value(value: Any, verbose: bool) -> Any:
    """A GGUF metadata value as ``model_info`` gives it."""
    if isinstance(value, ArrayValue):
        if value.values is None or (not verbose and value.length > SHORT_ARRAY):
            return []
        return [info_value(v, verbose) for v in value.values]
    if isinstance(value, float):
        return _float32(value) if math.isfinite(value) else None  # JSON has no NaN
    return value


def _float32(value: float) -> float:
    """A GGUF float32 with the digits that name it (1e-06, not 9.999999974752427e-07)."""
    try:
        single = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return value
    if single != value:
        return value  # a float64 of the header's: its own digits
    for places in range(1, 10):
        shorter = float(f"{value:.{places}g}")
        if struct.unpack("<f", struct.pack("<f", shorter))[0] == value:
            return shorter
    return value


def _remote_info(config: dict[str, Any]) -> dict[str, Any]:
    """For a remote model (no weights here), what its config says, as Ollama gives it."""
    family = _text(config.get("model_family"))
    if not family or not config.get("remote_host"):
        return {}
    info: dict[str, Any] = {"general.architecture": family}
    for key in ("context_length", "embedding_length"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            info[f"{family}.{key}"] = value
    return info


def _text(value: Any) -> str:
    """A config's string (a config from anyone may hold anything: other types are dropped)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""
