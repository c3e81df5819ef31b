"""Parser and interpreter for the Go text/template subset Ollama's templates use."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import TemplateError

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
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
                "cannot read {text!r} in {{{{ {source} }}}}",
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

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise TemplateError("{{{{ {source} }}}} ends too soon", source=self.source)
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
            raise TemplateError("empty command in {{{{ {source} }}}}", source=self.source)
        return commands

    def operand(self) -> Any:
        kind, value = self.take()
        if kind == "open":
            inner = self.pipeline("close")
            self.take()
            return ("pipe", inner)
        if kind == "string":
            return ("lit", value[1:-1] if value[0] == "`" else json.loads(value))
        if kind == "number":
            return ("lit", float(value) if "." in value else int(value))
        if kind == "ident":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "nil":
                return ("lit", None)
            if value not in FUNCTIONS and value not in _OTHER_GO_FUNCTIONS:
                raise TemplateError(
                    "function {name!r} not defined in {{{{ {source} }}}}",
                    name=value,
                    source=self.source.strip(),
                )
            return ("func", value)
        if kind in ("var", "field"):
            return (kind, value)
        raise TemplateError(
            "unexpected {value!r} in {{{{ {source} }}}}", value=value, source=self.source
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
                    "{{{{ {body} }}}}: nothing may follow {value}", body=body, value=value
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
                            "{{{{ {body} }}}}: range wants $i, $e := ...", body=body
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


def parse(source: str) -> list[Any]:
    pieces: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[position : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", match.group(2)))
        trim_next = bool(match.group(3))
        position = match.end()
    tail = source[position:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))
    for kind, value in pieces:
        if kind == "text" and "{{" in value:  # Go's parser: "unclosed action"
            start = value.index("{{")
            raise TemplateError("unclosed action: {text!r:.40}", text=value[start:])

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
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise TemplateError("eq needs at least two arguments")
    return any(first == other for other in others)


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        try:
            value = value[key]
        except (IndexError, KeyError, TypeError):
            raise TemplateError("index {key!r} out of range", key=key) from None
    return value


def _slice(value: Any, *bounds: Any) -> Any:
    if len(bounds) > 2:
        raise TemplateError("slice takes at most two indices")
    if len(bounds) == 1:
        return value[bounds[0] :]  # Go: slice x 1 is x[1:]
    return value[bounds[0] : bounds[1]] if bounds else value


def _printf(form: str, *args: Any) -> str:
    converted = re.sub(r"%v|%q|%d|%s", lambda m: {"%q": "%r"}.get(m.group(0), "%s"), form)
    try:
        return converted % tuple(_show(a) if not isinstance(a, str) else a for a in args)
    except (TypeError, ValueError) as exc:
        raise TemplateError("printf {form!r}: {exc}", form=form, exc=exc) from None


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
    "json": lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")),
    "currentDate": lambda: datetime.date.today().isoformat(),
}


# Functions Go's text/template or Ollama's template package define that this engine
# does not run: a template naming them is still one Ollama accepts.
_OTHER_GO_FUNCTIONS = frozenset({"call", "html", "js", "urlquery", "toTypeScriptType"})


class _Run:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.scopes: list[dict[str, Any]] = [{"$": root}]
        self.out: list[str] = []

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise TemplateError("undefined variable {name}", name=name)

    def set(self, name: str, value: Any, declare: bool) -> None:
        if declare:
            self.scopes[-1][name] = value
            return
        for scope in reversed(self.scopes):
            if name in scope:
                scope[name] = value
                return
        raise TemplateError("undefined variable {name}", name=name)

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
                raise TemplateError("function {value!r} is not defined", value=value)
            try:
                return function(*(final or []))
            except TemplateError:
                raise
            except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
                raise TemplateError("{value}: {exc}", value=value, exc=exc) from None
        raise TemplateError("cannot evaluate {value!r}", value=value)

    def command(self, command: list[Any], dot: Any, piped: list[Any]) -> Any:
        head = command[0]
        if head[0] == "func":
            args = [self.operand(a, dot) for a in command[1:]] + piped
            return self.operand(head, dot, args)
        if len(command) > 1 or piped:
            raise TemplateError("{name!r} is not a function", name=head[1])
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
        if isinstance(node, Text):
            self.out.append(node.text)
        elif isinstance(node, Output):
            self.out.append(_show(self.pipeline(node.pipe, dot)))
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
        if isinstance(items, Mapping):
            pairs = sorted(items.items())
        elif isinstance(items, int) and not isinstance(items, bool):
            pairs = [(i, i) for i in range(items)]
        elif items is None:
            pairs = []
        elif isinstance(items, Sequence) and not isinstance(items, str):
            pairs = list(enumerate(items))
        else:
            raise TemplateError("range cannot walk over {kind}", kind=type(items).__name__)
        if not pairs:
            self.block(node.otherwise, dot)
            return
        for key, value in pairs:
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


class Template:
    """A parsed template; :meth:`render` it with Ollama's data (System, Prompt, Messages, ...)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = parse(source)

    def render(self, data: Any) -> str:
        run = _Run(data)
        try:
            for node in self.nodes:
                run.node(node, data)
        except (_Break, _Continue):
            raise TemplateError("break or continue outside a range") from None
        except RecursionError:
            raise TemplateError("the template nests too deeply") from None
        return "".join(run.out)


def render(source: str, data: Any) -> str:
    return Template(source).render(data)
