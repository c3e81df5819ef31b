"""Ollama's Modelfile: parsing, typed parameters, and writing one back out.

Instructions (case-insensitive): ``FROM``, ``TEMPLATE``, ``SYSTEM``,
``PARAMETER``, ``LICENSE``, ``MESSAGE``, ``ADAPTER``. Lines starting with
``#`` are comments. A value may be bare (to the end of the line), in
``"double quotes"``, or in ``\"\"\"triple quotes\"\"\"`` spanning lines.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import ModelfileError
from cairn.i18n import Phrase

INSTRUCTIONS = ("from", "template", "system", "parameter", "license", "message", "adapter")
ROLES = ("system", "user", "assistant")

# Ollama's options (api/types.go, Options and Runner) and the type each value is stored
# as in the params layer. Nothing else: Ollama refuses a model whose params name an
# option it does not know (it dropped numa, for one).
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "num_thread": int,
    "num_keep": int,
    "num_predict": int,
    "seed": int,
    "top_k": int,
    "repeat_last_n": int,
    "temperature": float,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "use_mmap": bool,
    "stop": list,
}

# The values each parameter may take, inclusive, wherever it comes from (a Modelfile,
# `-p`, a pulled params layer, the API). What depends on the model or the machine
# (num_ctx against the context length and memory, num_thread against the cores) is
# checked when the model runs (cli/run.py).
PARAMETER_RANGES: dict[str, tuple[float, float]] = {
    "num_ctx": (1, 1 << 24),
    "num_batch": (1, 1 << 20),
    "num_gpu": (-1, 100_000),
    "main_gpu": (0, 1024),
    "num_thread": (0, 4096),
    "num_keep": (-1, 1 << 24),
    "num_predict": (-2, 1 << 24),
    "seed": (-(1 << 63), (1 << 63) - 1),
    "top_k": (0, 1 << 24),
    "repeat_last_n": (-1, 1 << 24),
    "temperature": (0, 100),
    "top_p": (0, 1),
    "min_p": (0, 1),
    "typical_p": (0, 1),
    "repeat_penalty": (0, 100),
    "presence_penalty": (-100, 100),
    "frequency_penalty": (-100, 100),
}
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
MAX_STOPS = 64
"""Stop sequences a model may have (each one is matched against every token)."""
MAX_STOP_LENGTH = 1000


@dataclass(frozen=True)
class Command:
    """One instruction and its value; ``line`` is where it started (1-based)."""

    name: str
    args: str
    line: int


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Modelfile:
    commands: tuple[Command, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str) -> Modelfile:
        return parse_modelfile(text)

    def _last(self, name: str) -> str | None:
        found = [c.args for c in self.commands if c.name == name]
        return found[-1] if found else None

    @property
    def from_(self) -> str:
        value = self._last("from")
        if value is None:
            raise ModelfileError("the Modelfile has no FROM line")
        return value

    @property
    def template(self) -> str | None:
        return self._last("template")

    @property
    def system(self) -> str | None:
        return self._last("system")

    @property
    def adapter(self) -> str | None:
        return self._last("adapter")

    @property
    def licenses(self) -> list[str]:
        return [c.args for c in self.commands if c.name == "license"]

    @property
    def messages(self) -> list[Message]:
        result = []
        for command in self.commands:
            if command.name == "message":
                role, _, content = command.args.partition(" ")
                result.append(Message(role.lower(), content))
        return result

    @property
    def parameters(self) -> dict[str, Any]:
        """The PARAMETER lines as typed values (``stop`` collects into a list)."""
        values: dict[str, Any] = {}
        for command in self.commands:
            if command.name != "parameter":
                continue
            key, _, raw = command.args.partition(" ")
            key = key.lower()
            if key != "stop":  # a stop sequence is taken as written: spaces and quotes too
                raw = _unquote(raw.strip())
            value = convert_parameter(key, raw, command.line)
            if key == "stop":
                values.setdefault("stop", []).extend(value)
                if len(values["stop"]) > MAX_STOPS:
                    raise ModelfileError(
                        "line {line}: more than {limit} stop sequences",
                        line=command.line,
                        limit=MAX_STOPS,
                    )
            else:
                values[key] = value
        return values


def convert_parameter(key: str, raw: str, line: int = 0) -> Any:
    """A PARAMETER value as the type Ollama stores it, in range; unknown names are errors."""
    where = Phrase("line {line}: ", line=line) if line else ""
    if key not in PARAMETER_TYPES:
        if meant := _close_parameter(key):
            raise ModelfileError(
                "{where}unknown parameter {key!r}: did you mean {meant!r}?",
                where=where,
                key=key,
                meant=meant,
            )
        raise ModelfileError("{where}unknown parameter {key!r}", where=where, key=key)
    if not raw:
        raise ModelfileError("{where}parameter {key!r} needs a value", where=where, key=key)
    return parameter_value(key, raw, where)


def _close_parameter(key: str) -> str | None:
    """The parameter a misspelled name meant (``temprature``: ``temperature``), if one is
    close (:mod:`difflib` ratio 0.75, case ignored)."""
    import difflib

    folded = {name.casefold(): name for name in PARAMETER_TYPES}
    close = difflib.get_close_matches(key.casefold(), list(folded), n=1, cutoff=0.75)
    return folded[close[0]] if close else None


def parameter_value(key: str, value: Any, where: object = "") -> Any:
    """``value`` (text, or JSON from a params layer) as ``key``'s type and within its range.

    Booleans are ``true``/``false`` (a string "false" is False, never truthy);
    numbers are finite; stop sequences are strings, at most :data:`MAX_STOPS`
    of at most :data:`MAX_STOP_LENGTH` characters.
    """
    kind = PARAMETER_TYPES[key]
    try:
        if kind is list:
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(item, str) and item for item in items):
                raise ValueError(value)
            for item in items:
                _check_stop(item, where)
            return list(items)
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError(value)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(value)
        if isinstance(
            value, str
        ):  # ASCII digits as Ollama reads them: not Arabic-Indic or full-width ones, "1_0", " 1 "
            pattern = _INTEGER if kind is int else _NUMBER
            if not pattern.fullmatch(value):
                raise ValueError(value)
        if kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, float):
                raise ValueError(value)
            number: float = int(value)
        else:
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(value)
    except (ValueError, TypeError, OverflowError):
        raise ModelfileError(
            "{where}parameter {key!r} wants {wanted}, got {raw!r:.60}",
            where=where,
            key=key,
            wanted=kind.__name__,
            raw=value,
        ) from None
    low, high = PARAMETER_RANGES[key]
    if not low <= number <= high:
        raise ModelfileError(
            "{where}parameter {key!r} is {value}, outside {low} to {high}",
            where=where,
            key=key,
            value=number,
            low=low,
            high=high,
        )
    return number


def _check_stop(item: str, where: object) -> None:
    if len(item) > MAX_STOP_LENGTH:
        raise ModelfileError(
            "{where}a stop sequence of {length} characters; at most {limit}",
            where=where,
            length=len(item),
            limit=MAX_STOP_LENGTH,
        )


def check_parameters(values: Any, where: object) -> dict[str, Any]:
    """A params layer (JSON) typed and ranged; names Ollama does not know are dropped."""
    if not isinstance(values, dict):
        return {}
    checked = {
        key: parameter_value(key, value, where)
        for key, value in values.items()
        if key in PARAMETER_TYPES
    }
    if len(checked.get("stop", [])) > MAX_STOPS:
        raise ModelfileError(
            "{where}{count} stop sequences; at most {limit}",
            where=where,
            count=len(checked["stop"]),
            limit=MAX_STOPS,
        )
    return checked


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_modelfile(text: str) -> Modelfile:
    """Parse a Modelfile; raise :class:`ModelfileError` naming the line at fault."""
    if not isinstance(text, str):
        raise ModelfileError("a Modelfile must be text")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.replace("\r\n", "\n").split("\n")
    commands: list[Command] = []
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if "\t" in word:
            word, _, tail = word.partition("\t")
            rest = f"{tail} {rest}".strip()
        name = word.lower()
        if name not in INSTRUCTIONS:
            raise ModelfileError(
                "line {number}: unknown instruction {word!r}; one of {known} was expected",
                number=number,
                word=word,
                known=", ".join(i.upper() for i in INSTRUCTIONS),
            )
        rest = rest.strip()
        head = ""
        if name in ("parameter", "message"):
            head, _, rest = rest.partition(" ")
            rest = rest.strip()
            if not head:
                raise ModelfileError(
                    "line {number}: {instruction} needs a name and a value",
                    number=number,
                    instruction=word.upper(),
                )
        if rest.startswith('"""'):
            # As Ollama's parser reads it: the text ends at the first line that ends with
            # """ (spaces after it aside), and is all before those three quotes, so it may
            # hold """ and end with ". Line by line, each looked at once: linear however
            # long the block. The first line keeps its trailing spaces: they are the text's.
            first = lines[number - 1]
            pieces = [rest[3:] + first[len(first.rstrip()) :]]
            after = None  # the first line with text after a """: what was probably meant
            while not pieces[-1].rstrip().endswith('"""'):
                if after is None and '"""' in pieces[-1]:
                    after = number + len(pieces) - 1
                if index >= len(lines):
                    if after is not None:
                        raise ModelfileError(
                            'line {number}: text after the closing """', number=after
                        )
                    raise ModelfileError(
                        'line {number}: a """ quote is never closed', number=number
                    )
                pieces.append(lines[index])
                index += 1
            value = "\n".join(pieces).rstrip()[:-3]
        else:
            value = _unquote(rest)
        if name == "message":
            if head.lower() not in ROLES:
                raise ModelfileError(
                    "line {number}: message role {head!r} must be one of {roles}",
                    number=number,
                    head=head,
                    roles=", ".join(ROLES),
                )
            value = f"{head.lower()} {value}"
        elif name == "parameter":
            value = f"{head} {value}"
        elif not value and name in ("from", "adapter"):
            raise ModelfileError(
                "line {number}: {instruction} needs a value",
                number=number,
                instruction=word.upper(),
            )
        commands.append(Command(name, value, number))
    modelfile = Modelfile(tuple(commands))
    modelfile.from_  # noqa: B018 - a Modelfile without FROM is an error at once
    modelfile.parameters  # noqa: B018 - and so is a parameter with a bad value
    return modelfile


def _ollama_keeps(text: str) -> str:
    """What Ollama's parser keeps of ``text``: it drops what Go does not count as printable
    (escape codes, zero-width joiners, non-ASCII spaces), but spaces, tabs and line ends."""
    return "".join(c for c in text if c.isprintable() or c in " \t\r\n")


def _bare(text: str) -> bool:
    """``text`` reads back as itself written bare, to the end of its line, by cairn's
    parser and by Ollama's: one line, no spaces at either end, no quote first."""
    kept = _ollama_keeps(text).strip()
    return (
        bool(text)
        and "\n" not in text
        and "\r" not in text
        and not text[0].isspace()
        and not text[-1].isspace()
        and not text.startswith('"')
        and not kept.startswith('"')
    )


def _unquotable(text: str) -> Phrase | None:
    """Why ``text`` cannot be written in \"\"\"triple quotes\"\"\" so that cairn's parser and
    Ollama's read it back as it is; None when it can.

    Both end the text at the first line that ends with \"\"\" (spaces after it aside), so
    only a line ending so with more lines after it cannot be written (Modelfiles have no
    escapes); and cairn reads a Windows line end as a newline.
    """
    if "\r\n" in text:
        return Phrase("a Windows line end (\\r\\n) would be read back as a newline")
    # Each line on its own: a line that is blank once stripped leaves the end where an
    # earlier line, looked at already, put it.
    *lines, _last = text.replace("\r", "\n").split("\n")
    for line in lines:
        if line.rstrip().endswith('"""') or _ollama_keeps(line).rstrip().endswith('"""'):
            return Phrase('a line ends with """ and more lines follow it')
    return None


def _written(text: str, what: str, strict: bool, bare: bool = True) -> str:
    """``text`` as a Modelfile value: bare where that reads back (and ``bare``), else in
    triple quotes; ``strict``: a :class:`ModelfileError` for a text that cannot be
    written so that it reads back, rather than a file that says something else."""
    if bare and _bare(text):
        return text
    if strict and (reason := _unquotable(text)) is not None:
        raise ModelfileError(
            "{what}: the text cannot be written in a Modelfile: {reason}", what=what, reason=reason
        )
    return f'"""{text}"""'


def render_modelfile(
    from_: str,
    template: str | None = None,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    licenses: list[str] | None = None,
    messages: list[Message] | None = None,
    adapters: list[str] | None = None,
    header: str = "",
    strict: bool = False,
) -> str:
    """Write a Modelfile that recreates a model, as ``ollama show --modelfile`` does.

    Every text reads back as it is, by cairn's parser and by Ollama's, but one with a
    line ending in \"\"\" and more lines after it (Modelfiles have no escapes) or with a
    Windows line end: ``strict`` refuses such a text with a :class:`ModelfileError`
    (what ``/save`` wants: a model that says what the session said); otherwise it is
    written as it is, for reading (what ``show`` wants).
    """
    out = [header] if header else []
    out.append(f"FROM {from_}")
    for adapter in adapters or []:
        out.append(f"ADAPTER {adapter}")
    if template is not None:
        out.append(f"TEMPLATE {_written(template, 'TEMPLATE', strict, bare=False)}")
    if system is not None:
        out.append(f"SYSTEM {_written(system, 'SYSTEM', strict, bare=False)}")
    for key, value in (parameters or {}).items():
        for item in value if isinstance(value, list) else [value]:
            text = json.dumps(item) if isinstance(item, bool) else str(item)
            out.append(f"PARAMETER {key} {_written(text, f'PARAMETER {key}', strict)}")
    for license_text in licenses or []:
        out.append(f"LICENSE {_written(license_text, 'LICENSE', strict, bare=False)}")
    for message in messages or []:
        said = _written(message.content, f"MESSAGE {message.role}", strict)
        out.append(f"MESSAGE {message.role} {said}")
    return "\n".join(out) + "\n"
