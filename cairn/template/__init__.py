"""Ollama's prompt templates: Go's text/template language, in Python.

Supported: text and ``{{ }}`` actions with ``{{-``/``-}}`` trimming,
comments, fields (``.System``, ``.Messages``, ``$.Tools``), variables
(``$x := ...``, ``$x = ...``), ``if``/``else if``/``else``/``end``,
``range`` (with ``$i, $m :=``, and ``else``), ``with``, ``break`` and
``continue``, pipelines with ``|``, parentheses, string/number/bool
literals, and the functions Go and Ollama templates use: ``eq``, ``ne``,
``lt``, ``le``, ``gt``, ``ge``, ``and``, ``or``, ``not``, ``len``,
``index``, ``slice``, ``print``, ``printf``, ``println``, ``json``,
``currentDate``. Anything else is a :class:`~cairn.errors.TemplateError`,
at parse time for a function Go and Ollama do not define either and for an
unclosed ``{{`` (Go's parser refuses both).
"""

from cairn.template.engine import Template, render

__all__ = ["Template", "render"]
