"""A GGUF's Jinja chat template, rendered in Jinja's sandbox under the same limits as Go's.

Jinja's sandbox stops a template from reaching Python's internals; it does
not stop one from spending: ``range(10**9)``, nested loops, ``9**(9**9)``,
``'a' * 10**10``, ``'%999999999s'|format``, ``center(10**9)``, a string
doubled forty times. Here every loop step, call and attribute counts
against :class:`~cairn.template.engine.Limits` (with a wall-clock deadline
besides), every operator and function that can build a large value checks
the size first, ``lipsum`` is gone, and any failure at all is a
TemplateError.
"""

from __future__ import annotations

import contextvars
import functools
import math
import re
import string
import time
from collections.abc import Iterator
from typing import Any

from cairn.errors import TemplateError
from cairn.template.engine import LIMITS, Limits

_SEQUENCES = (str, bytes, bytearray, list, tuple, dict, set, frozenset)
_COLLECTIONS = (list, tuple, dict, set, frozenset)


_VERB = re.compile(r"%[-+ #0]*(\*|\d*)(?:\.(\*|\d*))?[A-Za-z%]")
_SPEC_NUMBER = re.compile(r"\d+")
_WIDE_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


class _Budget:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.steps = 0
        self.deadline = time.monotonic() + limits.seconds
        self.written = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.steps:
            raise TemplateError(
                "the chat template ran past its budget of {limit} steps",
                limit=self.limits.steps,
            )
        if not self.steps & 63:
            self.clock()

    def clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateError(
                "the chat template ran past its budget of {seconds} s",
                seconds=self.limits.seconds,
            )

    def deep(self, value: Any) -> None:
        """Refuse a collection whose text would pass the output budget (before making it)."""
        if isinstance(value, _COLLECTIONS):
            size = _deep_size(value, self.limits.output)
            self.steps += size >> 10
            if size > self.limits.output:
                raise TemplateError(
                    "the chat template would build a value of more than {limit} characters",
                    limit=self.limits.output,
                )

    def iterate(self, items: Any) -> Any:
        """Walk ``items`` a step at a time (a loop over anything, a generator into a filter)."""
        for count, item in enumerate(items, 1):
            self.step()
            self.counted(count)
            yield item

    def counted(self, size: int) -> None:
        if size > self.limits.items:
            raise TemplateError(
                "the chat template built a list of {size} items, more than its budget of {limit}",
                size=size,
                limit=self.limits.items,
            )

    def wrote(self, value: Any) -> Any:
        """Every ``{{ }}`` output, into the answer or into a block's buffer, counts once."""
        self.deep(value)
        self.written += len(value) if isinstance(value, str) else len(str(value))
        if self.written > self.limits.output:
            raise TemplateError(
                "the chat template wrote more than its budget of {limit} characters",
                limit=self.limits.output,
            )
        return value

    def joined(self, items: tuple[Any, ...]) -> str:
        """``a ~ b ~ c``: sized before it is built."""
        for item in items:
            self.deep(item)
        parts = [item if isinstance(item, str) else str(item) for item in items]
        self.projected(sum(len(part) for part in parts))
        return "".join(parts)

    def sized(self, value: Any) -> Any:
        if isinstance(value, _COLLECTIONS):
            self.counted(len(value))
        if isinstance(value, _SEQUENCES) and len(value) > self.limits.output:
            raise TemplateError(
                "the chat template built a value of {size} characters, more than its budget"
                " of {limit}",
                size=len(value),
                limit=self.limits.output,
            )
        return value

    def width(self, value: Any, what: str) -> None:
        if isinstance(value, int) and abs(value) > self.limits.width:
            raise TemplateError(
                "the chat template asks {what} for a width of {width}, more than {limit}",
                what=what,
                width=value,
                limit=self.limits.width,
            )

    def form(self, text: Any, what: str) -> None:
        """A format string (``%`` or ``{}``) whose widths could build a huge value."""
        if not isinstance(text, str):
            return
        widths: list[str] = []
        if what in ("%", "strftime"):
            widths = [n for verb in _VERB.finditer(text) for n in verb.group(1, 2) if n]
        else:
            try:
                fields = list(string.Formatter().parse(text))
            except ValueError:
                fields = []  # the call itself will say what is wrong
            for _literal, _name, spec, _conversion in fields:
                widths += _SPEC_NUMBER.findall(spec or "")
                if spec and "{" in spec:
                    widths.append("*")  # a width given as an argument
        for width in widths:
            if width == "*" or (width and (len(width) > 6 or int(width) > self.limits.width)):
                raise TemplateError(
                    "the chat template formats with {what} {text!r:.40}: a field wider than"
                    " {limit} or given as an argument",
                    what=what,
                    text=text,
                    limit=self.limits.width,
                )

    def projected(self, size: int) -> None:
        if size > self.limits.output:
            raise TemplateError(
                "the chat template would build a value of {size} characters, more than its"
                " budget of {limit}",
                size=size,
                limit=self.limits.output,
            )


def _deep_size(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` would take, counting a list shared twice
    twice (as ``str`` does); the walk stops as soon as the count passes ``limit``."""
    total, pending = 0, [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2
            pending.extend(item)
        else:
            total += 8
    return total


class _Counted(list[Any]):
    """A list whose every step of iteration counts against the budget."""

    budget: _Budget

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            self.budget.step()
            yield item


def render(source: str, variables: dict[str, Any], limits: Limits = LIMITS) -> str:
    """Render ``source`` with ``variables``; the text, or a TemplateError."""
    try:
        from jinja2 import TemplateError as JinjaError
    except ImportError as exc:  # jinja2 comes with llama-cpp-python
        raise TemplateError("jinja2 is not installed: {exc}", exc=exc) from None
    if len(source) > limits.source:
        raise TemplateError(
            "the chat template is {size} characters, more than the {limit} allowed",
            size=len(source),
            limit=limits.source,
        )
    budget = _Budget(limits)
    token = _CURRENT.set(budget)

    def counted(value: Any) -> Any:
        if isinstance(value, list):
            items = _Counted(counted(v) for v in value)
            items.budget = budget
            return items
        if isinstance(value, dict):
            return {k: counted(v) for k, v in value.items()}
        return value

    try:
        template = _compiled(source)
        pieces: list[str] = []
        written = 0
        for piece in template.generate(**{k: counted(v) for k, v in variables.items()}):
            budget.step()
            written += len(piece)
            budget.projected(written)
            pieces.append(piece)
        return "".join(pieces)
    except TemplateError:
        raise
    except RecursionError:
        raise TemplateError("the chat template nests or recurses too deeply") from None
    except JinjaError as exc:
        raise TemplateError("the GGUF chat template failed: {exc!s:.300}", exc=exc) from None
    except Exception as exc:  # a template's every failure is a TemplateError
        raise TemplateError(
            "the GGUF chat template failed: {kind}: {exc!s:.300}",
            kind=type(exc).__name__,
            exc=exc,
        ) from None
    finally:
        _CURRENT.reset(token)


_CURRENT: contextvars.ContextVar[_Budget] = contextvars.ContextVar("cairn_jinja_budget")


def _meter() -> _Budget:
    return _CURRENT.get()


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> Any:
    """A chat template compiled once (a model's template is the same every turn)."""
    return _environment().from_string(source)


def _checked(original: Any, check: Any) -> Any:
    """``original`` (a Jinja filter) with ``check`` run on its arguments first; a check
    that returns a tuple hands the filter those arguments instead (a list it made of a
    generator, say). The context or environment some filters take first passes through.
    """
    passes = getattr(original, "jinja_pass_arg", None)

    def checked(*args: Any, **kwargs: Any) -> Any:
        head, rest = (args[:1], args[1:]) if passes is not None else ((), args)
        replaced = check(*rest, **kwargs)
        return original(*head, *(rest if replaced is None else replaced), **kwargs)

    if passes is not None:
        checked.jinja_pass_arg = passes  # type: ignore[attr-defined]
    return checked


def _metered(function: Any) -> Any:
    @functools.wraps(function)
    def metered(*args: Any, **kwargs: Any) -> Any:
        meter = _meter()
        meter.step()
        meter.clock()
        counted = []
        for value in args:
            if isinstance(value, _SEQUENCES):
                meter.steps += len(value) >> 10  # work in proportion to what it walks
                meter.deep(value)  # a list shared with itself is small to hold, huge as text
            elif isinstance(value, Iterator):  # a generator: counted as it is walked
                value = meter.iterate(value)
            counted.append(value)
        return meter.sized(function(*counted, **kwargs))

    # Jinja passes the context or environment first to filters marked for it.
    if hasattr(function, "jinja_pass_arg"):
        metered.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
    return metered


@functools.cache
def _environment() -> Any:
    """The bounded sandbox, made once; each render's budget is in :data:`_CURRENT`."""
    from jinja2 import ext, nodes
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generator(CodeGenerator):
        def visit_Concat(self, node: Any, frame: Any) -> None:
            # ``a ~ b ~ c``: the joined string is sized before it is built.
            self.write("environment.meter.joined((")
            for argument in node.nodes:
                self.visit(argument, frame)
                self.write(", ")
            self.write("))")

    class _Bounded(ImmutableSandboxedEnvironment):
        code_generator_class = _Generator

        @property
        def meter(self) -> _Budget:
            return _meter()

        def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
            # Every {% for %} walks its items through the budget, whatever they are
            # (a string the template built, a list times a number, ...).
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                loop.iter = nodes.Filter(
                    loop.iter, "cairn_steps", [], [], None, None, lineno=loop.lineno
                )
            return tree

        intercepted_binops = frozenset({"+", "*", "**", "%", "/", "//"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _meter().step()
            _meter().deep(left)
            _meter().deep(right)
            if (
                operator == "**"
                and isinstance(left, int | float)
                and isinstance(right, int | float)
                and abs(left) > 1
                and right > 0
                and math.log2(abs(left)) * right > 65_536
            ):
                raise TemplateError(
                    "the chat template raises a number to the power {right}", right=right
                )
            if operator == "*":
                for sequence, count in ((left, right), (right, left)):
                    if isinstance(sequence, _SEQUENCES) and isinstance(count, int):
                        _meter().projected(len(sequence) * count)
            if operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
                _meter().projected(len(left) + len(right))
            if operator == "%" and isinstance(left, str):
                _meter().form(left, "%")
            return _meter().sized(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _meter().step()
            # The sandbox hands out str.format wrapped (``__wrapped__`` is the method).
            method = getattr(__obj, "__wrapped__", __obj)
            owner = getattr(method, "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str):
                if name in _WIDE_METHODS:
                    for value in (*args, *kwargs.values()):
                        _meter().width(value, name)
                elif name in ("format", "format_map"):
                    _meter().form(owner, name)
                elif name == "replace" and len(args) >= 2:
                    old, new = str(args[0]), str(args[1])
                    grows = max(0, len(new) - len(old)) * owner.count(old)
                    _meter().projected(len(owner) + grows)
                elif name == "join" and args:
                    _meter().projected(sum(len(str(x)) for x in _meter().sized(list(args[0]))))
            return _meter().sized(super().call(__context, __obj, *args, **kwargs))

        def getattr(self, obj: Any, attribute: str) -> Any:
            _meter().step()
            return _meter().sized(super().getattr(obj, attribute))

        def getitem(self, obj: Any, argument: Any) -> Any:
            _meter().step()
            return _meter().sized(super().getitem(obj, argument))

    environment = _Bounded(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[ext.loopcontrols],
        finalize=lambda value: _meter().wrote(value),
    )
    environment.globals.pop("lipsum", None)

    def bounded_range(*args: int) -> Iterator[int]:
        for value in range(*args):
            _meter().step()
            yield value

    def fail(message: str) -> None:
        raise TemplateError("the GGUF chat template says: {said}", said=str(message)[:500])

    def strftime_now(form: str) -> str:
        _meter().form(form, "strftime")
        return time.strftime(str(form)[:100])

    environment.globals.update(range=bounded_range, raise_exception=fail, strftime_now=strftime_now)
    filters = environment.filters

    def format_check(value: Any, *args: Any, **kwargs: Any) -> None:
        _meter().form(value, "%")  # the filter formats with %

    def center_check(value: Any, width: Any = 80) -> None:
        _meter().width(width, "center")

    def indent_check(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
        _meter().width(width, "indent")
        if isinstance(width, str):
            _meter().projected(len(width) * (str(value).count("\n") + 1) + len(str(value)))

    def replace_check(value: Any, old: Any, new: Any, count: Any = None) -> None:
        text = str(value)
        grows = max(0, len(str(new)) - len(str(old))) * text.count(str(old))
        _meter().projected(len(text) + grows)

    def wordwrap_check(value: Any, width: Any = 79, *args: Any, **kwargs: Any) -> None:
        wrap = kwargs.get("wrapstring") or (args[1] if len(args) > 1 else None) or "\n"
        lines = len(str(value)) // max(1, int(width)) + 1
        _meter().projected(len(str(value)) + lines * len(str(wrap)))

    def tojson_check(value: Any, indent: Any = None) -> None:
        if isinstance(indent, int) and indent > 16:
            raise TemplateError(
                "the chat template asks {what} for a width of {width}, more than {limit}",
                what="tojson",
                width=indent,
                limit=16,
            )

    def sum_check(value: Any, attribute: Any = None, start: Any = 0) -> None:
        if not isinstance(start, int | float):  # a sum of lists or strings is quadratic
            raise TemplateError("the chat template sums something other than numbers")

    def join_check(value: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        items = list(value)  # a generator was made to count its items (_metered)
        for item in items:
            _meter().deep(item)
        d = args[0] if args else kwargs.get("d", "")
        _meter().projected(sum(len(str(x)) for x in items) + len(str(d)) * len(items))
        return (items, *args)

    checks = {
        "format": format_check,
        "center": center_check,
        "indent": indent_check,
        "replace": replace_check,
        "wordwrap": wordwrap_check,
        "tojson": tojson_check,
        "sum": sum_check,
        "join": join_check,
    }
    for name, check in checks.items():
        filters[name] = _checked(filters[name], check)
    filters["cairn_steps"] = lambda items: _meter().iterate(items)
    # Every filter is a step, checks the clock, and has what it returns sized: filters
    # are called directly, not through the sandbox's call().
    for name, function in list(filters.items()):
        filters[name] = _metered(function)
    return environment
