"""Parser and interpreter for the Go text/template subset Ollama's templates use.

A template comes with a model, and a model may come from anyone: parsing is
linear in the source, and a render runs under :class:`Limits` (steps,
characters of output and of any value built, printf widths, nesting). A
template that goes past one gets a TemplateError naming the limit, as does
every other failure of parsing or rendering. Fields are looked up in the
maps the template is given and nowhere else: no Python attribute of any
value is reachable (``.Prompt.__class__`` is ``<no value>``).
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import TemplateError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<declare>:=)
      | (?P<assign>=)
      | (?P<pipe>\|)
      | (?P<open>\()
      | (?P<close>\))
      | (?P<comma>,)
      | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
      | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_MISSING = "<no value>"


@dataclass(frozen=True)
class Limits:
    """What one render may spend; generous for every real template (a few KB, a few
    hundred steps a message), small enough that a hostile one ends in a second."""

    steps: int = 250_000
    """Nodes run, range iterations and function calls, all together."""
    output: int = 8 << 20
    """Characters of the prompt, and of any one value a function builds."""
    width: int = 10_000
    """The widest printf field or precision."""
    nesting: int = 100
    """Blocks inside blocks, and parentheses inside parentheses."""
    source: int = 64 << 10
    """Characters of template source (Ollama's library templates: a few KB)."""
    seconds: float = 2.0
    """Wall-clock time of one render, whatever it does."""
    items: int = 1 << 20
    """Items in any one list or map a template builds (a conversation: a few hundred)."""


LIMITS = Limits()
_SIZED = frozenset({str, list, tuple, dict})
_NUMBER_DIGITS = 100


# -- nodes --------------------------------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class Output:
    pipe: Any


@dataclass
class Assign:
    names: list[str]
    pipe: Any
    declare: bool


@dataclass
class If:
    branches: list[tuple[Any, list[Any]]] = field(default_factory=list)
    otherwise: list[Any] = field(default_factory=list)


@dataclass
class Range:
    names: list[str]
    pipe: Any
    body: list[Any] = field(default_factory=list)
    otherwise: list[Any] = field(default_factory=list)


@dataclass
class With:
    pipe: Any
    body: list[Any] = field(default_factory=list)
    otherwise: list[Any] = field(default_factory=list)


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


@dataclass
class Control:
    kind: str  # "break" or "continue"


# -- parsing ------------------------------------------------------------------


def _tokens(source: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    source = source.strip()
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None or match.end() == position:
            raise TemplateError(
                "cannot read {text!r:.40} in {{{{ {source:.80} }}}}",
                text=source[position : position + 20],
                source=source,
            )
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
        while position < len(source) and source[position].isspace():
            position += 1
    return tokens


class _Expr:
    """Parses a pipeline: command (| command)*, each command a list of operands."""

    def __init__(self, tokens: list[tuple[str, str]], source: str) -> None:
        self.tokens = tokens
        self.index = 0
        self.source = source
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise TemplateError("{{{{ {source:.80} }}}} ends too soon", source=self.source)
        self.index += 1
        return token

    def pipeline(self, stop: str | None = None) -> list[list[Any]]:
        commands: list[list[Any]] = [[]]
        while (token := self.peek()) is not None and token[0] != stop:
            if token[0] == "pipe":
                self.take()
                commands.append([])
                continue
            commands[-1].append(self.operand())
        if any(not c for c in commands):
            raise TemplateError("empty command in {{{{ {source:.80} }}}}", source=self.source)
        return commands

    def operand(self) -> Any:
        kind, value = self.take()
        if kind == "open":
            self.depth += 1
            if self.depth > LIMITS.nesting:
                raise TemplateError("parentheses nest deeper than {limit}", limit=LIMITS.nesting)
            inner = self.pipeline("close")
            self.take()
            self.depth -= 1
            return ("pipe", inner)
        if kind == "string":
            if value[0] == "`":
                return ("lit", value[1:-1])
            try:
                return ("lit", json.loads(value))
            except ValueError:
                raise TemplateError(
                    "malformed string {value!r:.40} in {{{{ {source:.80} }}}}",
                    value=value,
                    source=self.source,
                ) from None
        if kind == "number":
            if len(value) > _NUMBER_DIGITS:
                raise TemplateError("a number of {count} digits in a template", count=len(value))
            return ("lit", float(value) if "." in value else int(value))
        if kind == "ident":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "nil":
                return ("lit", None)
            if value not in FUNCTIONS and value not in _OTHER_GO_FUNCTIONS:
                raise TemplateError(
                    "function {name!r:.40} not defined in {{{{ {source:.80} }}}}",
                    name=value,
                    source=self.source.strip(),
                )
            return ("func", value)
        if kind in ("var", "field"):
            return (kind, value)
        raise TemplateError(
            "unexpected {value!r:.40} in {{{{ {source:.80} }}}}", value=value, source=self.source
        )


def _parse_action(body: str) -> tuple[str, Any]:
    """Classify one action: (keyword, payload)."""
    tokens = _tokens(body)
    if not tokens:
        raise TemplateError("empty action {{ }}")
    kind, value = tokens[0]
    if kind == "ident" and value in ("if", "range", "with", "else", "end", "break", "continue"):
        rest = tokens[1:]
        if value == "else" and rest and rest[0] == ("ident", "if"):
            return "elseif", _Expr(rest[1:], body).pipeline()
        if value in ("end", "else", "break", "continue"):
            if rest:
                raise TemplateError(
                    "{{{{ {body:.80} }}}}: nothing may follow {value:.80}", body=body, value=value
                )
            return value, None
        if value == "range":
            names: list[str] = []
            if len(rest) >= 2 and rest[0][0] == "var" and rest[1][0] in ("declare", "comma"):
                names.append(rest[0][1])
                rest = rest[1:]
                if rest[0][0] == "comma":
                    if len(rest) < 3 or rest[1][0] != "var" or rest[2][0] != "declare":
                        raise TemplateError(
                            "{{{{ {body:.80} }}}}: range wants $i, $e := ...", body=body
                        )
                    names.append(rest[1][1])
                    rest = rest[2:]
                rest = rest[1:]
            return "range", (names, _Expr(rest, body).pipeline())
        return value, _Expr(rest, body).pipeline()
    if kind == "var" and len(tokens) > 1 and tokens[1][0] in ("declare", "assign"):
        return "assign", Assign(
            [value], _Expr(tokens[2:], body).pipeline(), tokens[1][0] == "declare"
        )
    return "output", _Expr(tokens, body).pipeline()


def _pieces(source: str) -> list[tuple[str, str]]:
    """Text and action bodies, with ``{{-``/``-}}`` trimming applied; linear in the source."""
    pieces: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    while True:
        start = source.find("{{", position)
        if start < 0:
            break
        end = source.find("}}", start + 2)
        if end < 0:  # Go's parser: "unclosed action"
            raise TemplateError("unclosed action: {text!r:.40}", text=source[start:])
        body = source[start + 2 : end]
        trim_left = len(body) >= 2 and body[0] == "-" and body[1].isspace()
        trim_right = len(body) >= 2 and body[-1] == "-" and body[-2].isspace()
        if trim_left:
            body = body[2:]
        if trim_right:
            body = body[:-2]
        text = source[position:start]
        if trim_next:
            text = text.lstrip()
        if trim_left:
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", body))
        trim_next = trim_right
        position = end + 2
    tail = source[position:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))
    return pieces


def parse(source: str) -> list[Any]:
    if len(source) > LIMITS.source:
        raise TemplateError(
            "the template is {size} characters, more than the {limit} allowed",
            size=len(source),
            limit=LIMITS.source,
        )
    pieces = _pieces(source)

    root: list[Any] = []
    stack: list[tuple[Any, list[Any]]] = [(None, root)]
    for kind, value in pieces:
        body = stack[-1][1]
        if kind == "text":
            if value:
                body.append(Text(value))
            continue
        if value.strip().startswith("/*"):
            if not value.strip().endswith("*/"):
                raise TemplateError("unclosed comment")
            continue
        keyword, payload = _parse_action(value)
        node = stack[-1][0]
        if keyword == "output":
            body.append(Output(payload))
        elif keyword == "assign":
            body.append(payload)
        elif keyword in ("break", "continue"):
            body.append(Control(keyword))
        elif keyword in ("if", "range", "with") and len(stack) > LIMITS.nesting:
            raise TemplateError("blocks nest deeper than {limit}", limit=LIMITS.nesting)
        elif keyword == "if":
            new = If([(payload, [])])
            body.append(new)
            stack.append((new, new.branches[0][1]))
        elif keyword == "range":
            names, pipe = payload
            new_range = Range(names, pipe)
            body.append(new_range)
            stack.append((new_range, new_range.body))
        elif keyword == "with":
            new_with = With(payload)
            body.append(new_with)
            stack.append((new_with, new_with.body))
        elif keyword == "elseif":
            if not isinstance(node, If) or node.otherwise:
                raise TemplateError("{{ else if }} outside an if")
            node.branches.append((payload, []))
            stack[-1] = (node, node.branches[-1][1])
        elif keyword == "else":
            if not isinstance(node, If | Range | With):
                raise TemplateError("{{ else }} outside if, range or with")
            stack[-1] = (node, node.otherwise)
        elif keyword == "end":
            if len(stack) == 1:
                raise TemplateError("{{ end }} without a block to end")
            stack.pop()
    if len(stack) != 1:
        raise TemplateError("a block is never closed with {{ end }}")
    return root


# -- execution -----------------------------------------------------------------


def truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, int | float | str | list | tuple | dict):
        return bool(value)
    return True


def _show(value: Any) -> str:
    if value is None:
        return _MISSING
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "[" + " ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_show(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _field(value: Any, name: str) -> Any:
    """A field of the data: a key of a map (nothing else: no attribute of any value)."""
    if isinstance(value, Mapping):
        return value.get(name)
    if value is None:
        return None
    raise TemplateError(
        "cannot read field {name:.80} of a {kind:.80}", name=name, kind=_kind(value)
    )


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list | tuple):
        return "list"
    return "value"


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise TemplateError("eq needs at least two arguments")
    return any(first == other for other in others)


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        try:
            value = value[key]
        except (IndexError, KeyError, TypeError):
            raise TemplateError("index {key!r:.80} out of range", key=key) from None
    return value


def _slice(value: Any, *bounds: Any) -> Any:
    if len(bounds) > 2:
        raise TemplateError("slice takes at most two indices")
    if len(bounds) == 1:
        return value[bounds[0] :]  # Go: slice x 1 is x[1:]
    return value[bounds[0] : bounds[1]] if bounds else value


_VERB = re.compile(r"%([-+ #0]*)(\*|\d*)(?:\.(\*|\d*))?([A-Za-z%])")


def _printf(form: str, *args: Any) -> str:
    for verb in _VERB.finditer(form):
        for number in (verb.group(2), verb.group(3)):
            if number == "*" or (number and (len(number) > 6 or int(number) > LIMITS.width)):
                raise TemplateError(
                    "printf {verb!r}: a field wider than {limit}",
                    verb=verb.group(0)[:20],
                    limit=LIMITS.width,
                )
    converted = re.sub(r"%v|%q|%d|%s", lambda m: {"%q": "%r"}.get(m.group(0), "%s"), form)
    try:
        return converted % tuple(_show(a) if not isinstance(a, str) else a for a in args)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TemplateError("printf {form!r:.40}: {exc}", form=form, exc=exc) from None


def _and(*values: Any) -> Any:
    for value in values:
        if not truthy(value):
            return value
    return values[-1]


def _or(*values: Any) -> Any:
    for value in values:
        if truthy(value):
            return value
    return values[-1]


def _plain(value: Any) -> Any:
    """What ``json`` writes for a mapping that is not a dict (a tool, as Ollama's are)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _shown_size(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(_show(value))


def _json_size(value: Any, depth: int = 0) -> int:
    """At most how long ``json.dumps(value)`` is (a character may take six: ``\\u0001``)."""
    if isinstance(value, str):
        return 6 * len(value) + 2
    if isinstance(value, Mapping) and depth < 64:
        return 2 + sum(
            _json_size(str(k), depth + 1) + _json_size(v, depth + 1) + 2 for k, v in value.items()
        )
    if isinstance(value, list | tuple) and depth < 64:
        return 2 + sum(_json_size(v, depth + 1) + 1 for v in value)
    return 32 if not isinstance(value, Mapping | list | tuple) else 1 << 40


def _printf_size(args: Sequence[Any]) -> int:
    form = args[0] if args and isinstance(args[0], str) else ""
    widths = sum(
        int(n) for verb in _VERB.finditer(form) for n in verb.group(2, 3) if n and n.isdigit()
    )
    return len(form) + widths + sum(6 * _shown_size(a) for a in args[1:])


# What each function that builds text would build, reckoned before it runs.
_BUILDERS: dict[str, Callable[[Sequence[Any]], int]] = {
    "print": lambda args: sum(_shown_size(a) for a in args),
    "println": lambda args: sum(_shown_size(a) + 1 for a in args) + 1,
    "printf": _printf_size,
    "json": lambda args: _json_size(args[0]) if args else 0,
}


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "and": _and,
    "or": _or,
    "not": lambda v: not truthy(v),
    "len": lambda v: len(v) if v is not None else 0,
    "index": _index,
    "slice": _slice,
    "print": lambda *a: "".join(_show(v) for v in a),
    "println": lambda *a: " ".join(_show(v) for v in a) + "\n",
    "printf": _printf,
    "json": lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=_plain),
    "currentDate": lambda: datetime.date.today().isoformat(),
}


# Functions Go's text/template or Ollama's template package define that this engine
# does not run: a template naming them is still one Ollama accepts.
_OTHER_GO_FUNCTIONS = frozenset({"call", "html", "js", "urlquery", "toTypeScriptType"})


class _Run:
    def __init__(self, root: Any, limits: Limits) -> None:
        self.root = root
        self.scopes: list[dict[str, Any]] = [{"$": root}]
        self.out: list[str] = []
        self.limits = limits
        self.steps = 0
        self.written = 0
        self.deadline = time.monotonic() + limits.seconds

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.steps:
            raise TemplateError(
                "the template ran past its budget of {limit} steps", limit=self.limits.steps
            )
        self.clock()

    def clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateError(
                "the template ran past its budget of {seconds} s", seconds=self.limits.seconds
            )

    def sized(self, value: Any) -> Any:
        """``value``, if it is no longer than the output budget."""
        if isinstance(value, list | tuple | dict) and len(value) > self.limits.items:
            raise TemplateError(
                "the template built a list of {size} items, more than its budget of {limit}",
                size=len(value),
                limit=self.limits.items,
            )
        if isinstance(value, str | list | tuple | dict) and len(value) > self.limits.output:
            raise TemplateError(
                "the template built a value of {size} characters, more than its budget of {limit}",
                size=len(value),
                limit=self.limits.output,
            )
        return value

    def write(self, text: str) -> None:
        self.written += len(text)
        if self.written > self.limits.output:
            raise TemplateError(
                "the template wrote more than its budget of {limit} characters",
                limit=self.limits.output,
            )
        self.out.append(text)

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise TemplateError("undefined variable {name:.80}", name=name)

    def set(self, name: str, value: Any, declare: bool) -> None:
        if declare:
            self.scopes[-1][name] = value
            return
        for scope in reversed(self.scopes):
            if name in scope:
                scope[name] = value
                return
        raise TemplateError("undefined variable {name:.80}", name=name)

    def operand(self, operand: Any, dot: Any, final: list[Any] | None = None) -> Any:
        kind, value = operand
        if kind == "lit":
            return value
        if kind == "pipe":
            return self.pipeline(value, dot)
        if kind == "field":
            result = dot
            for name in value.split(".")[1:]:
                if name:
                    result = _field(result, name)
            return result
        if kind == "var":
            name, *path = value.split(".")
            result = self.lookup(name)
            for part in path:
                result = _field(result, part)
            return result
        if kind == "func":
            function = FUNCTIONS.get(value)
            if function is None:
                raise TemplateError("function {value!r:.80} is not defined", value=value)
            args = final or []
            self.steps += 1  # self.step() and self.sized(), inlined: every call runs this
            if self.steps > self.limits.steps:
                self.step()
            try:
                if value in _BUILDERS:  # sized before it is built, and paid for by size
                    projected = _BUILDERS[value](args)
                    if projected > self.limits.output:
                        raise TemplateError(
                            "{function} would build a value of about {size} characters, more"
                            " than the template's budget of {limit}",
                            function=value,
                            size=projected,
                            limit=self.limits.output,
                        )
                    self.steps += projected >> 12
                    self.step()
                result = function(*args)
                if result.__class__ in _SIZED and len(result) > self.limits.items:
                    self.sized(result)
                return result
            except TemplateError:
                raise
            except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
                raise TemplateError("{value:.80}: {exc!s:.200}", value=value, exc=exc) from None
        raise TemplateError("cannot evaluate {value!r:.80}", value=value)

    def command(self, command: list[Any], dot: Any, piped: list[Any]) -> Any:
        head = command[0]
        if head[0] == "func":
            args = [self.operand(a, dot) for a in command[1:]] + piped
            return self.operand(head, dot, args)
        if len(command) > 1 or piped:
            raise TemplateError("{name!r:.80} is not a function", name=head[1])
        return self.operand(head, dot)

    def pipeline(self, commands: Sequence[list[Any]], dot: Any) -> Any:
        value: list[Any] = []
        for command in commands:
            value = [self.command(command, dot, value)]
        return value[0]

    def block(self, nodes: list[Any], dot: Any) -> None:
        self.scopes.append({})
        try:
            for node in nodes:
                self.node(node, dot)
        finally:
            self.scopes.pop()

    def node(self, node: Any, dot: Any) -> None:
        self.steps += 1  # self.step(), inlined: this runs for every node
        if self.steps > self.limits.steps or not self.steps & 255:
            self.step()
        if isinstance(node, Text):
            self.write(node.text)
        elif isinstance(node, Output):
            self.write(_show(self.pipeline(node.pipe, dot)))
        elif isinstance(node, Assign):
            self.set(node.names[0], self.pipeline(node.pipe, dot), node.declare)
        elif isinstance(node, If):
            for condition, body in node.branches:
                if truthy(self.pipeline(condition, dot)):
                    self.block(body, dot)
                    return
            self.block(node.otherwise, dot)
        elif isinstance(node, With):
            value = self.pipeline(node.pipe, dot)
            self.block(
                node.body if truthy(value) else node.otherwise, value if truthy(value) else dot
            )
        elif isinstance(node, Range):
            self.range(node, dot)
        elif isinstance(node, Control):
            raise _Break() if node.kind == "break" else _Continue()

    def range(self, node: Range, dot: Any) -> None:
        items = self.pipeline(node.pipe, dot)
        pairs: Iterable[tuple[Any, Any]]
        if isinstance(items, Mapping):
            pairs = sorted(items.items())
        elif isinstance(items, int) and not isinstance(items, bool):
            pairs = ((i, i) for i in range(items))  # one at a time: range 1000000000 is steps
        elif items is None:
            pairs = ()
        elif isinstance(items, Sequence) and not isinstance(items, str):
            pairs = enumerate(items)
        else:
            raise TemplateError("range cannot walk over {kind:.80}", kind=_kind(items))
        empty = True
        for key, value in pairs:
            empty = False
            self.step()
            self.scopes.append({})
            try:
                if len(node.names) == 1:
                    self.scopes[-1][node.names[0]] = value
                elif len(node.names) == 2:
                    self.scopes[-1][node.names[0]] = key
                    self.scopes[-1][node.names[1]] = value
                for child in node.body:
                    self.node(child, value)
            except _Continue:
                continue
            except _Break:
                break
            finally:
                self.scopes.pop()
        if empty:
            self.block(node.otherwise, dot)


class Template:
    """A parsed template; :meth:`render` it with Ollama's data (System, Prompt, Messages, ...)."""

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self.nodes = parse(source)
        except TemplateError:
            raise
        except (RecursionError, ValueError, MemoryError) as exc:
            raise TemplateError("the template cannot be read: {exc!s:.200}", exc=exc) from None

    def render(self, data: Any, limits: Limits = LIMITS) -> str:
        run = _Run(data, limits)
        try:
            for node in self.nodes:
                run.node(node, data)
        except (_Break, _Continue):
            raise TemplateError("break or continue outside a range") from None
        except RecursionError:
            raise TemplateError("the template nests too deeply") from None
        except TemplateError:
            raise
        except (ArithmeticError, LookupError, TypeError, ValueError, MemoryError) as exc:
            raise TemplateError("the template failed: {exc!s:.200}", exc=exc) from None
        return "".join(run.out)


def render(source: str, data: Any) -> str:
    return Template(source).render(data)
